// Fixtures for the tests that drive a whole daemon through its API (stereos-hostd and
// stereos-fakeguest processes, stereosctl), built on tests/support.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

#include "tests/support/child_process.hpp"
#include "tests/support/unix_http.hpp"

namespace stereos::api_test {

using namespace std::chrono_literals;

using testing::event_reader;
using testing::eventually;
using testing::get;
using testing::http;
using testing::http_answer;
using testing::post;
using testing::raw_exchange;

// A private directory, removed at the end. Mode 0755 so another uid can reach a socket in it.
struct temp_dir : testing::temp_directory {
    temp_dir() : temp_directory("stereos-api", 0755), path(temp_directory::path()) {}
    std::filesystem::path path;
};

inline std::string read_text(const std::string& path) {
    return testing::read_text_file(path);
}
inline void write_text(const std::string& path, const std::string& text) {
    testing::write_text_file(path, text);
}

// A child process with its stdout and stderr in the given files ("" = /dev/null); stdin is
// /dev/null. Killed if still running when destroyed.
class child_process : public testing::child_process {
  public:
    child_process(const std::vector<std::string>& argv, const std::string& stdout_file,
                  const std::string& stderr_file,
                  const std::map<std::string, std::string>& extra_env = {})
        : testing::child_process(argv, testing::output_files{stdout_file, stderr_file}, extra_env) {
    }
};

struct command_result {
    int exit_code = -1;  // -1: killed after the time limit
    std::string out;
    std::string err;
};

// testing::run_command with `input` on stdin, checking that the program (stereosctl,
// stereos-hostd, run sanitized) wrote no sanitizer report.
command_result run_command(const std::vector<std::string>& argv, const std::string& input = {},
                           std::chrono::milliseconds limit = 60s,
                           const std::map<std::string, std::string>& extra_env = {});

// A stereos-fakeguest process serving `count` guests on TCP; endpoints() are theirs.
class fake_guests {
  public:
    fake_guests(const temp_dir& dir, const std::string& tag, std::size_t count,
                std::vector<std::string> flags = {});
    // Stops the program and checks, as part of the running test, that it wrote no sanitizer
    // report (a leak at its exit, a race).
    ~fake_guests();
    const std::vector<std::string>& endpoints() const noexcept { return endpoints_; }
    const std::string& endpoint() const { return endpoints_.at(0); }
    std::string record_file() const { return record_; }
    child_process& process() { return *process_; }

  private:
    std::string record_, err_;
    std::unique_ptr<child_process> process_;
    std::vector<std::string> endpoints_;
};

// One [[guest]] of the daemon's config; `extra` lines go into its table as they are.
struct guest_entry {
    guest_entry(std::string name_, std::string endpoint_, std::string extra_ = {})
        : name(std::move(name_)), endpoint(std::move(endpoint_)), extra(std::move(extra_)) {}
    std::string name;
    std::string endpoint;
    std::string extra;
};

// A stereos-hostd process with a temp config; stderr (its log) goes to log_file(). Destroying it
// stops the daemon and checks, as part of the running test, that it exited 0 with no sanitizer
// report in its log.
class hostd_process {
  public:
    ~hostd_process();
    hostd_process(const temp_dir& dir, const std::vector<guest_entry>& guests,
                  const std::string& log_level = "info", const std::string& daemon_extra = {},
                  const std::string& api_group = "",
                  const std::map<std::string, std::string>& extra_env = {});
    const std::string& socket() const noexcept { return socket_; }
    std::string log_file() const { return log_; }
    std::string log() const { return read_text(log_); }
    const std::string& state_dir() const noexcept { return state_dir_; }
    const std::string& config_file() const noexcept { return config_file_; }
    child_process& process() { return *process_; }
    pid_t pid() const { return process_->pid(); }
    // VmRSS in KiB.
    long rss_kib() const;
    // Open file descriptors (entries of /proc/PID/fd).
    std::size_t fd_count() const;
    // Rewrites the config file with these guests and the same [daemon] section, e.g. before a
    // SIGHUP.
    void rewrite_config(const std::vector<guest_entry>& guests) const;
    // SIGKILL now, as a crash would; destruction then checks only for a sanitizer report.
    void kill_now();

  private:
    std::string socket_, log_, state_dir_, config_file_, daemon_section_;
    std::unique_ptr<child_process> process_;
    bool killed_ = false;
};

// ---- HTTP over the unix socket ---------------------------------------------------------------

// [daemon] lines for fast health polling and reconnects, so states settle quickly.
inline const std::string quick_daemon = "health_interval = \"300ms\"\nreconnect_max = \"300ms\"\n";

// `prefix` and random digits: a value no test output holds by chance.
std::string random_token(const std::string& prefix);

// The status object of a guest (GET /v1/guests/NAME), which must answer 200.
boost::json::object status_of(const std::string& socket, const std::string& guest);

// An API error: the status, error.code and a JSON body.
void check_error(const http_answer& answer, unsigned status, const std::string& code);

// A metric's value from the exposition, e.g. metric(text, "stereos_events_dropped_total") or
// metric(text, "stereos_guest_link_up{guest=\"vm1\"}"); -1 if absent.
double metric(const std::string& exposition, const std::string& series);

// Whether this test may act as uid 65534 with setpriv and run curl as it (root, setpriv and curl
// present, and a root that lets that uid run programs). Says why not in the test log.
bool can_switch_users();

// A TCP port on 127.0.0.1 where nothing listens (bound and released).
int closed_tcp_port();

std::string program_hostd();
std::string program_ctl();
std::string program_fakeguest();

// Responses the daemon flagged as not declared by their route's table entry
// (stereos_api_undeclared_responses_total); each is also logged at error.
double undeclared_responses(const std::string& socket);

// A connection that sends `request` (raw HTTP bytes) and keeps the socket open until close().
class open_request {
  public:
    open_request(const std::string& socket, const std::string& request);
    ~open_request();
    open_request(const open_request&) = delete;
    void close();

  private:
    int fd_ = -1;
};

}  // namespace stereos::api_test
