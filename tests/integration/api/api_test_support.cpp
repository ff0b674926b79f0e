#include "tests/integration/api/api_test_support.hpp"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/test/unit_test.hpp>

namespace stereos::api_test {

namespace asio = boost::asio;
namespace json = boost::json;
using socket_type = asio::local::stream_protocol::socket;

command_result run_command(const std::vector<std::string>& argv, const std::string& input,
                           std::chrono::milliseconds limit,
                           const std::map<std::string, std::string>& extra_env) {
    auto ran = testing::run_command(argv, limit, input, extra_env);
    // The programs under test (stereosctl, stereos-hostd) run sanitized: a report fails the test.
    BOOST_TEST(ran.err.find("Sanitizer") == std::string::npos, ran.err);
    return {ran.status, std::move(ran.out), std::move(ran.err)};
}

fake_guests::fake_guests(const temp_dir& dir, const std::string& tag, std::size_t count,
                         std::vector<std::string> flags) {
    record_ = dir.file(tag + ".record");
    const auto out = dir.file(tag + ".out");
    std::vector<std::string> argv{
        program_fakeguest(), "--listen", "tcp:127.0.0.1:0", "--count", std::to_string(count),
        "--record",          record_};
    argv.insert(argv.end(), flags.begin(), flags.end());
    err_ = dir.file(tag + ".err");
    process_ = std::make_unique<child_process>(argv, out, err_);
    const bool ready = eventually([&] {
        std::istringstream lines(read_text(out));
        std::vector<std::string> found;
        std::string line;
        while (std::getline(lines, line)) {
            if (line.starts_with("listening "))
                found.push_back(line.substr(10));
        }
        if (found.size() < count)
            return false;
        endpoints_ = std::move(found);
        return true;
    });
    if (!ready) {
        throw std::runtime_error("stereos-fakeguest did not start: " +
                                 read_text(dir.file(tag + ".err")));
    }
}

fake_guests::~fake_guests() {
    process_->stop();  // SIGTERM: a clean exit, so LeakSanitizer runs
    const auto text = read_text(err_);
    BOOST_TEST(text.find("Sanitizer") == std::string::npos, text);
    BOOST_TEST(text.find("runtime error:") == std::string::npos, text);
}

hostd_process::hostd_process(const temp_dir& dir, const std::vector<guest_entry>& guests,
                             const std::string& log_level, const std::string& daemon_extra,
                             const std::string& api_group,
                             const std::map<std::string, std::string>& extra_env) {
    socket_ = dir.file("api.sock");
    log_ = dir.file("hostd.log");
    state_dir_ = dir.file("state");
    daemon_section_ = "[daemon]\napi_socket = \"" + socket_ + "\"\napi_group = \"" + api_group +
                      "\"\nstate_dir = \"" + state_dir_ + "\"\n" + daemon_extra + "\n";
    config_file_ = dir.file("config.toml");
    rewrite_config(guests);
    process_ = std::make_unique<child_process>(
        std::vector<std::string>{program_hostd(), "--config", config_file_, "--log", "stderr",
                                 "--log-level", log_level},
        "", log_, extra_env);
    const bool up = eventually(
        [&] {
            if (!process_->running())
                return true;
            asio::io_context io;
            socket_type s(io);
            boost::system::error_code ec;
            s.connect(asio::local::stream_protocol::endpoint(socket_), ec);
            return !ec;
        },
        30s);
    if (!up || !process_->running())
        throw std::runtime_error("stereos-hostd did not start:\n" + log());
}

hostd_process::~hostd_process() {
    const int status = process_->stop();
    const auto text = log();
    if (!killed_)
        BOOST_TEST(status == 0, "stereos-hostd did not exit cleanly:\n" << text);
    BOOST_TEST(text.find("Sanitizer") == std::string::npos, text);
    BOOST_TEST(text.find("runtime error:") == std::string::npos, text);
}

void hostd_process::rewrite_config(const std::vector<guest_entry>& guests) const {
    std::string config = daemon_section_;
    for (const auto& g : guests) {
        config += "[[guest]]\nname = \"" + g.name + "\"\nendpoint = \"" + g.endpoint + "\"\n" +
                  g.extra + "\n";
    }
    // Written aside and renamed, so a reload never reads a half-written file.
    const auto temp = config_file_ + ".new";
    write_text(temp, config);
    std::filesystem::rename(temp, config_file_);
}

void hostd_process::kill_now() {
    killed_ = true;
    process_->kill_now();
}

std::size_t hostd_process::fd_count() const {
    std::error_code ec;
    std::size_t count = 0;
    for (std::filesystem::directory_iterator it("/proc/" + std::to_string(pid()) + "/fd", ec), end;
         !ec && it != end; it.increment(ec))
        ++count;
    return count;
}

long hostd_process::rss_kib() const {
    std::ifstream status("/proc/" + std::to_string(pid()) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (line.starts_with("VmRSS:"))
            return std::stol(line.substr(6));
    }
    return -1;
}

json::object status_of(const std::string& socket, const std::string& guest) {
    auto answer = get(socket, "/v1/guests/" + guest);
    BOOST_TEST_REQUIRE(answer.status == 200u, answer.body);
    return answer.json().as_object();
}

void check_error(const http_answer& answer, unsigned status, const std::string& code) {
    BOOST_TEST(answer.status == status, "status " << answer.status << " body " << answer.body);
    BOOST_TEST(answer.error_code() == code, answer.body);
    BOOST_TEST(answer.headers.at("content-type") == "application/json");
}

double metric(const std::string& exposition, const std::string& series) {
    std::istringstream lines(exposition);
    std::string line;
    while (std::getline(lines, line)) {
        if (line.starts_with(series + " "))
            return std::stod(line.substr(series.size() + 1));
    }
    return -1;
}

bool can_switch_users() {
    if (::geteuid() != 0 || ::access("/usr/bin/setpriv", X_OK) != 0 ||
        ::access("/usr/bin/curl", X_OK) != 0)
        return false;
    // Some bare roots (a chroot whose "/" is mode 0700) let uid 65534 run nothing at all.
    const auto probe = run_command(
        {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "curl", "--version"});
    if (probe.exit_code != 0) {
        BOOST_TEST_MESSAGE("uid 65534 cannot run curl here: " << probe.err);
        return false;
    }
    return true;
}

int closed_tcp_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t size = sizeof address;
    // Port 0: the kernel picks a free one, which is closed again once fd is.
    const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0 &&
                       ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0;
    const int error = errno;
    ::close(fd);
    if (!bound)
        throw std::runtime_error(std::string("cannot pick a free TCP port: ") +
                                 std::strerror(error));
    return ntohs(address.sin_port);
}

std::string program_hostd() {
    return STEREOS_HOSTD_PROGRAM;
}
std::string program_ctl() {
    return STEREOS_CTL_PROGRAM;
}
std::string program_fakeguest() {
    return STEREOS_FAKEGUEST_PROGRAM;
}

std::string random_token(const std::string& prefix) {
    std::random_device device;
    return prefix + std::to_string(device()) + std::to_string(device());
}

double undeclared_responses(const std::string& socket) {
    return metric(get(socket, "/metrics").body, "stereos_api_undeclared_responses_total");
}

open_request::open_request(const std::string& socket, const std::string& request) {
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    std::strncpy(address.sun_path, socket.c_str(), sizeof address.sun_path - 1);
    if (fd_ < 0 || ::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
        ::write(fd_, request.data(), request.size()) != static_cast<ssize_t>(request.size())) {
        close();
        throw std::runtime_error("open_request: cannot send to " + socket);
    }
}

open_request::~open_request() {
    close();
}

void open_request::close() {
    if (fd_ >= 0)
        ::close(fd_);
    fd_ = -1;
}

}  // namespace stereos::api_test
