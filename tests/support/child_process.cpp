#include "tests/support/child_process.hpp"

#include <fcntl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace stereos::testing {

namespace {
std::vector<std::string> environment_with(const std::map<std::string, std::string>& extra) {
    std::map<std::string, std::string> merged;
    for (char** e = environ; *e; ++e) {
        std::string_view entry(*e);
        auto eq = entry.find('=');
        if (eq != std::string_view::npos)
            merged[std::string(entry.substr(0, eq))] = std::string(entry.substr(eq + 1));
    }
    for (const auto& [k, v] : extra)
        merged[k] = v;
    std::vector<std::string> out;
    out.reserve(merged.size());
    for (const auto& [k, v] : merged) {
        std::string entry = k;
        entry += '=';
        entry += v;
        out.push_back(std::move(entry));
    }
    return out;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
    std::vector<char*> out;
    out.reserve(strings.size() + 1);
    for (auto& s : strings)
        out.push_back(s.data());
    out.push_back(nullptr);
    return out;
}

int decode_status(int status) {
    if (WIFEXITED(status))
        return WEXITSTATUS(status);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return -1;
}

// Points `target` at `path` opened with `flags`; false (errno set) on failure. Async-signal-safe.
bool redirect(int target, const char* path, int flags) {
    const int fd = ::open(path, flags, 0644);
    if (fd < 0)
        return false;
    if (fd != target) {
        if (::dup2(fd, target) < 0)
            return false;
        ::close(fd);
    }
    return true;
}

// Where the child writes its own pid into LISTEN_PID=: no allocation after fork.
constexpr std::string_view listen_pid_prefix = "LISTEN_PID=";

void write_pid(char* into, pid_t pid) {  // async-signal-safe
    char digits[24];
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + pid % 10);
        pid /= 10;
    } while (pid > 0);
    while (n > 0)
        *into++ = digits[--n];
    *into = '\0';
}

pid_t spawn(std::vector<std::string> argv, const std::map<std::string, std::string>& extra_env,
            const std::filesystem::path& out, const std::filesystem::path& err, int stdin_fd,
            const std::vector<int>& passed_fds = {},
            const std::vector<std::string>& fd_names = {}) {
    auto env = environment_with(extra_env);
    if (!passed_fds.empty()) {
        std::string names;
        for (const auto& name : fd_names)
            names += (names.empty() ? "" : ":") + name;
        env.push_back("LISTEN_FDS=" + std::to_string(passed_fds.size()));
        env.push_back("LISTEN_FDNAMES=" + names);
        env.push_back(std::string(listen_pid_prefix) + std::string(20, '0'));
    }
    auto c_argv = c_strings(argv);
    auto c_env = c_strings(env);
    char* listen_pid_digits =
        passed_fds.empty() ? nullptr : c_env[env.size() - 1] + listen_pid_prefix.size();
    // The child writes its errno here if it cannot exec; a successful exec closes it (CLOEXEC).
    std::array<int, 2> failure_pipe{};
    if (::pipe2(failure_pipe.data(), O_CLOEXEC) != 0)
        throw std::runtime_error(std::string("pipe2: ") + std::strerror(errno));
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid < 0) {
        const int error = errno;
        ::close(failure_pipe[0]);
        ::close(failure_pipe[1]);
        throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(error));
    }
    if (pid == 0) {
        // Only async-signal-safe calls from here to exec: the test may run other threads.
        // Killed when the test process dies, even by a crash, so no orphan outlives it holding
        // a port, a socket path or ctest's output pipe. (The signal follows the death of the
        // thread that started the child: start children from threads that outlive them. A
        // child that changes its uid, as setpriv --reuid does, loses it.)
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        const int report = failure_pipe[1];
        int report_fd = report;  // moved out of the way of passed fds
        const auto fail = [&report_fd] {
            const int error = errno;
            [[maybe_unused]] const auto written = ::write(report_fd, &error, sizeof error);
            ::_exit(127);
        };
        if (::getppid() != parent)
            ::_exit(126);  // the test process died before the line above
        if (stdin_fd >= 0) {
            if (::dup2(stdin_fd, STDIN_FILENO) < 0)
                fail();
        } else if (!redirect(STDIN_FILENO, "/dev/null", O_RDONLY)) {
            fail();
        }
        if (!redirect(STDOUT_FILENO, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC) ||
            !redirect(STDERR_FILENO, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC)) {
            fail();
        }
        const auto first_kept = static_cast<int>(3 + passed_fds.size());
        if (!passed_fds.empty()) {
            // Out of the way of 3, 4, ... first: any of them may sit there now.
            constexpr int high = 1000;
            report_fd = ::fcntl(report, F_DUPFD_CLOEXEC, high + 64);
            int moved[64];
            if (report_fd < 0 || passed_fds.size() > 64)
                fail();
            for (std::size_t i = 0; i < passed_fds.size(); ++i) {
                moved[i] = ::fcntl(passed_fds[i], F_DUPFD, high);
                if (moved[i] < 0)
                    fail();
            }
            for (std::size_t i = 0; i < passed_fds.size(); ++i) {
                if (::dup2(moved[i], static_cast<int>(3 + i)) < 0)
                    fail();
            }
            write_pid(listen_pid_digits, ::getpid());
        }
        // Nothing else of ours: a listener in this process (Asio opens sockets without CLOEXEC)
        // would otherwise live on in the child and keep its port or path busy.
        if (report_fd > first_kept)
            ::close_range(static_cast<unsigned>(first_kept), static_cast<unsigned>(report_fd) - 1,
                          0);
        ::close_range(static_cast<unsigned>(report_fd) + 1, ~0U, 0);
        // A clean signal state: the test runner may block or ignore some. Dispositions first,
        // so a signal let through by the unmasking cannot run one of the parent's handlers.
        for (int signal_number = 1; signal_number < NSIG; ++signal_number)
            ::signal(signal_number, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        // execvpe: a bare name ("curl", "setpriv") is looked up in PATH.
        ::execvpe(c_argv[0], c_argv.data(), c_env.data());
        fail();
    }
    ::close(failure_pipe[1]);
    int child_error = 0;
    ssize_t n = 0;
    do {
        n = ::read(failure_pipe[0], &child_error, sizeof child_error);
    } while (n < 0 && errno == EINTR);
    ::close(failure_pipe[0]);
    if (n == static_cast<ssize_t>(sizeof child_error)) {
        ::waitpid(pid, nullptr, 0);
        throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(child_error));
    }
    return pid;
}
}  // namespace

std::string test_daemon_section(const temp_directory& dir, std::string_view extra,
                                std::string_view socket_name) {
    return "[daemon]\napi_socket = \"" + (dir / socket_name).string() +
           "\"\napi_group = \"\"\nstate_dir = \"" + (dir / "state").string() + "\"\n" +
           std::string(extra);
}

std::string read_text_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

void write_text_file(const std::filesystem::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

child_process::child_process(std::vector<std::string> argv, const std::filesystem::path& output_dir,
                             const std::string& label,
                             const std::map<std::string, std::string>& extra_env)
    : out_file_(output_dir / (label + ".out")), err_file_(output_dir / (label + ".err")) {
    pid_ = spawn(std::move(argv), extra_env, out_file_, err_file_, -1);
}

child_process::child_process(std::vector<std::string> argv, const std::filesystem::path& output_dir,
                             const std::string& label,
                             const std::map<std::string, std::string>& extra_env,
                             const std::vector<int>& fds, const std::vector<std::string>& names)
    : out_file_(output_dir / (label + ".out")), err_file_(output_dir / (label + ".err")) {
    pid_ = spawn(std::move(argv), extra_env, out_file_, err_file_, -1, fds, names);
}

child_process::child_process(std::vector<std::string> argv, output_files files,
                             const std::map<std::string, std::string>& extra_env)
    : out_file_(files.out.empty() ? "/dev/null" : std::move(files.out)),
      err_file_(files.err.empty() ? "/dev/null" : std::move(files.err)) {
    pid_ = spawn(std::move(argv), extra_env, out_file_, err_file_, -1);
}

int child_process::stop(std::chrono::milliseconds limit) {
    if (!running())
        return exit_status_.value_or(-1);
    send_signal(SIGTERM);
    if (auto status = wait_exit(limit))
        return *status;
    kill_now();
    return -1;
}

void child_process::kill_now() {
    if (!running())
        return;
    send_signal(SIGKILL);
    wait_exit(std::chrono::seconds(10));
}

child_process::~child_process() {
    if (running()) {
        ::kill(pid_, SIGKILL);
        wait_exit(std::chrono::seconds(10));
    }
}

void child_process::send_signal(int signal) const {
    ::kill(pid_, signal);
}

bool child_process::running() {
    if (exit_status_)
        return false;
    int status = 0;
    const pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
        exit_status_ = decode_status(status);
        return false;
    }
    return r == 0;
}

std::optional<int> child_process::wait_exit(std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (running()) {
        if (std::chrono::steady_clock::now() > end)
            return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return exit_status_;
}

std::string child_process::stdout_text() const {
    return read_text_file(out_file_);
}
std::string child_process::stderr_text() const {
    return read_text_file(err_file_);
}

std::optional<std::size_t> child_process::wait_for_output(std::string_view needle,
                                                          std::chrono::milliseconds limit,
                                                          bool in_stderr, std::size_t from) const {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (true) {
        const auto text = in_stderr ? stderr_text() : stdout_text();
        if (from <= text.size()) {
            if (auto pos = text.find(needle, from); pos != std::string::npos)
                return pos + needle.size();
        }
        if (std::chrono::steady_clock::now() > end)
            return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::optional<std::string> child_process::next_stdout_line(std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (true) {
        // Whether it ran is asked before reading, so output written before an exit is read.
        const bool was_running = running();
        const auto text = stdout_text();
        if (const auto newline = text.find('\n', stdout_taken_); newline != std::string::npos) {
            auto line = text.substr(stdout_taken_, newline - stdout_taken_);
            stdout_taken_ = newline + 1;
            return line;
        }
        if (!was_running || std::chrono::steady_clock::now() > end)
            return std::nullopt;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
}

std::vector<std::string> child_process::stdout_lines_with(std::string_view prefix) const {
    std::vector<std::string> lines;
    std::istringstream in(stdout_text());
    std::string line;
    while (std::getline(in, line)) {
        if (line.starts_with(prefix))
            lines.push_back(line.substr(prefix.size()));
    }
    return lines;
}

command_result run_command(const std::vector<std::string>& argv, std::chrono::milliseconds limit,
                           const std::string& stdin_text,
                           const std::map<std::string, std::string>& extra_env) {
    temp_directory dir("stereos-cmd");
    const auto in_path = dir / "stdin";
    write_text_file(in_path, stdin_text);
    const int in_fd = ::open(in_path.c_str(), O_RDONLY | O_CLOEXEC);
    const auto out = dir / "out", err = dir / "err";
    const pid_t pid = spawn(argv, extra_env, out, err, in_fd);
    ::close(in_fd);
    const auto end = std::chrono::steady_clock::now() + limit;
    int status = 0;
    command_result result;
    while (true) {
        const pid_t r = ::waitpid(pid, &status, WNOHANG);
        if (r == pid) {
            result.status = decode_status(status);
            break;
        }
        if (std::chrono::steady_clock::now() > end) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
            result.status = -1;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    result.out = read_text_file(out);
    result.err = read_text_file(err);
    return result;
}

temp_directory::temp_directory(std::string_view prefix, mode_t mode) {
    std::string pattern = "/tmp/" + std::string(prefix) + "-XXXXXX";
    if (!::mkdtemp(pattern.data()))
        throw std::runtime_error("mkdtemp " + pattern + ": " + std::strerror(errno));
    path_ = pattern;
    std::filesystem::permissions(path_, static_cast<std::filesystem::perms>(mode));
}

std::filesystem::path temp_directory::write(std::string_view name, std::string_view content) const {
    auto file = path_ / name;
    std::filesystem::create_directories(file.parent_path());
    write_text_file(file, content);
    return file;
}

temp_directory::~temp_directory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
}

std::size_t resident_kib(pid_t pid) {
    std::istringstream status(read_text_file("/proc/" + std::to_string(pid) + "/status"));
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with("VmRSS:"))
            return std::strtoull(line.c_str() + 6, nullptr, 10);
    }
    return 0;
}

std::size_t open_fds(pid_t pid) {
    std::error_code ec;
    std::size_t n = 0;
    for (auto it = std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
        ++n;
    }
    return n;
}

}  // namespace stereos::testing
