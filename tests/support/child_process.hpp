// Test support: real child processes (the daemon, the fake guest, curl, stereosctl) with their
// stdout and stderr captured to files, so tests can wait for output and assert on it; commands
// run to completion; private temporary directories. Every child is killed when the test process
// dies, except one that changes its uid (setpriv --reuid): the kernel then clears the request.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tests/support/eventually.hpp"

namespace stereos::testing {

// Where a child's stdout and stderr go; "" = /dev/null.
struct output_files {
    std::filesystem::path out;
    std::filesystem::path err;
};

class child_process {
  public:
    // Starts argv[0] (a path, or a name looked up in PATH) with the environment plus `extra_env`;
    // output goes to <output_dir>/<label>.out and .err.
    child_process(std::vector<std::string> argv, const std::filesystem::path& output_dir,
                  const std::string& label,
                  const std::map<std::string, std::string>& extra_env = {});
    // The same with output to the given files.
    child_process(std::vector<std::string> argv, output_files files,
                  const std::map<std::string, std::string>& extra_env = {});
    // Passes `fds` as systemd does: at 3, 4, ... in the child, with LISTEN_FDS, LISTEN_FDNAMES
    // (`names`, one per fd) and LISTEN_PID set to the child's pid.
    child_process(std::vector<std::string> argv, const std::filesystem::path& output_dir,
                  const std::string& label, const std::map<std::string, std::string>& extra_env,
                  const std::vector<int>& fds, const std::vector<std::string>& names);
    ~child_process();  // SIGKILLs it if still running
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    pid_t pid() const noexcept { return pid_; }
    void send_signal(int signal) const;
    // The exit status (or 128 + signal), or nullopt if it is still running after `limit`.
    std::optional<int> wait_exit(std::chrono::milliseconds limit);
    // SIGTERM, then waits up to `limit` for the exit and returns its status; -1 if it had to be
    // killed.
    int stop(std::chrono::milliseconds limit = std::chrono::seconds(20));
    // SIGKILL now, as a crash would, and waits for the exit.
    void kill_now();
    bool running();

    std::string stdout_text() const;
    std::string stderr_text() const;
    // Polls until `needle` appears in the output after byte `from`; returns its end offset.
    std::optional<std::size_t> wait_for_output(std::string_view needle,
                                               std::chrono::milliseconds limit,
                                               bool in_stderr = true, std::size_t from = 0) const;
    // Lines of stdout starting with `prefix` (prefix removed).
    std::vector<std::string> stdout_lines_with(std::string_view prefix) const;
    // The next whole line of stdout after the ones this returned before (without its newline);
    // nullopt if none came within `limit`, or as soon as the process has exited without
    // printing another.
    std::optional<std::string> next_stdout_line(std::chrono::milliseconds limit);

  private:
    pid_t pid_ = -1;
    std::optional<int> exit_status_;
    std::filesystem::path out_file_;
    std::filesystem::path err_file_;
    std::size_t stdout_taken_ = 0;  // bytes of stdout returned by next_stdout_line
};

// Runs a command to completion (bounded by `limit`) and returns {exit status, stdout, stderr}.
struct command_result {
    int status = -1;
    std::string out;
    std::string err;
};
command_result run_command(const std::vector<std::string>& argv,
                           std::chrono::milliseconds limit = std::chrono::seconds(30),
                           const std::string& stdin_text = {},
                           const std::map<std::string, std::string>& extra_env = {});

// A private temporary directory under /tmp (short paths: unix socket paths hold 107 bytes),
// made with mkdtemp (a failure throws) and removed with everything in it at the end. `mode`
// 0777 lets a test's other uid or the daemon's user use it.
class temp_directory {
  public:
    explicit temp_directory(std::string_view prefix = "stereos-test", mode_t mode = 0777);
    ~temp_directory();
    temp_directory(const temp_directory&) = delete;
    temp_directory& operator=(const temp_directory&) = delete;
    const std::filesystem::path& path() const noexcept { return path_; }
    std::filesystem::path operator/(std::string_view name) const { return path_ / name; }
    // The path of `name` in it, as text.
    std::string file(std::string_view name) const { return (path_ / name).string(); }
    // Writes `content` to `name` (creating directories on the way) and returns its path.
    std::filesystem::path write(std::string_view name, std::string_view content) const;

  private:
    std::filesystem::path path_;
};

// The [daemon] section of a test daemon's config: its API socket (`socket_name`) and state
// directory inside `dir`, an owner-only API, and any `extra` lines of the section.
std::string test_daemon_section(const temp_directory& dir, std::string_view extra = {},
                                std::string_view socket_name = "api.sock");

std::string read_text_file(const std::filesystem::path& path);
void write_text_file(const std::filesystem::path& path, std::string_view text);

// Resident set size of a process in KiB, from /proc; 0 if unknown.
std::size_t resident_kib(pid_t pid);
// Open file descriptors of a process, from /proc; 0 if unknown.
std::size_t open_fds(pid_t pid);

}  // namespace stereos::testing
