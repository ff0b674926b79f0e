// Test support: real child processes (the daemon, the fake guest, curl, stereosctl) with their
// stdout and stderr captured to files, so tests can wait for output and assert on it.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace stereos::testing {

class child_process {
  public:
    // Starts argv[0] (a path) with the environment plus `extra_env`; output goes to
    // <output_dir>/<label>.out and .err.
    child_process(std::vector<std::string> argv, const std::filesystem::path& output_dir,
                  const std::string& label,
                  const std::map<std::string, std::string>& extra_env = {});
    ~child_process();  // SIGKILLs it if still running
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    pid_t pid() const noexcept { return pid_; }
    void send_signal(int signal) const;
    // The exit status (or 128 + signal), or nullopt if it is still running after `limit`.
    std::optional<int> wait_exit(std::chrono::milliseconds limit);
    bool running();

    std::string stdout_text() const;
    std::string stderr_text() const;
    // Polls until `needle` appears in the output after byte `from`; returns its end offset.
    std::optional<std::size_t> wait_for_output(std::string_view needle,
                                               std::chrono::milliseconds limit,
                                               bool in_stderr = true, std::size_t from = 0) const;
    // Lines of stdout starting with `prefix` (prefix removed).
    std::vector<std::string> stdout_lines_with(std::string_view prefix) const;

  private:
    pid_t pid_ = -1;
    std::optional<int> exit_status_;
    std::filesystem::path out_file_;
    std::filesystem::path err_file_;
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

// A private temporary directory, removed with everything in it at the end.
class temp_directory {
  public:
    explicit temp_directory(std::string_view prefix = "stereos-test");
    ~temp_directory();
    const std::filesystem::path& path() const noexcept { return path_; }
    std::filesystem::path operator/(std::string_view name) const { return path_ / name; }

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
