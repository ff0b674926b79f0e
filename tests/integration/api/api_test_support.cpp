#include "tests/integration/api/api_test_support.hpp"

#include <netinet/in.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

extern char** environ;

namespace stereos::api_test {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace json = boost::json;
using socket_type = asio::local::stream_protocol::socket;

temp_dir::temp_dir() {
    std::string pattern = "/tmp/stereos-api-XXXXXX";
    path = ::mkdtemp(pattern.data());
    ::chmod(path.c_str(), 0755);
}

temp_dir::~temp_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
}

std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
}

namespace {

pid_t spawn(const std::vector<std::string>& argv, const std::string& in_file,
            const std::string& out_file, const std::string& err_file,
            const std::map<std::string, std::string>& extra_env) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, in_file.empty() ? "/dev/null" : in_file.c_str(),
                                     O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_file.empty() ? "/dev/null" : out_file.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_file.empty() ? "/dev/null" : err_file.c_str(),
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (const auto& a : argv)
        args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_text;
    for (char** e = environ; *e; ++e) {
        std::string entry = *e;
        const auto key = entry.substr(0, entry.find('='));
        if (!extra_env.contains(key))
            env_text.push_back(entry);
    }
    for (const auto& [key, value] : extra_env) {
        std::string entry = key;
        entry.append("=").append(value);
        env_text.push_back(std::move(entry));
    }
    std::vector<char*> env;
    env.reserve(env_text.size() + 1);
    for (auto& e : env_text)
        env.push_back(e.data());
    env.push_back(nullptr);
    pid_t pid = -1;
    // Nothing else of ours: see tests/support/child_process.cpp.
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    const int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0)
        throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(rc));
    return pid;
}

std::optional<int> wait_for(pid_t pid, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (true) {
        int status = 0;
        const pid_t done = ::waitpid(pid, &status, WNOHANG);
        if (done == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
        if (done < 0)
            return -1;
        if (std::chrono::steady_clock::now() > end)
            return std::nullopt;
        std::this_thread::sleep_for(5ms);
    }
}

}  // namespace

child_process::child_process(const std::vector<std::string>& argv, const std::string& stdout_file,
                             const std::string& stderr_file,
                             const std::map<std::string, std::string>& extra_env)
    : pid_(spawn(argv, "", stdout_file, stderr_file, extra_env)) {}

child_process::~child_process() {
    stop(10s);
}

bool child_process::running() {
    if (status_)
        return false;
    if (auto s = wait_for(pid_, 0ms)) {
        status_ = s;
        return false;
    }
    return true;
}

void child_process::kill_now() {
    if (status_)
        return;
    ::kill(pid_, SIGKILL);
    wait_for(pid_, 10s);
    status_ = -1;
}

int child_process::stop(std::chrono::milliseconds limit) {
    if (status_)
        return *status_;
    ::kill(pid_, SIGTERM);
    auto status = wait_for(pid_, limit);
    if (!status) {
        ::kill(pid_, SIGKILL);
        status = wait_for(pid_, 10s);
        status_ = -1;
        return -1;
    }
    status_ = status;
    return *status_;
}

command_result run_command(const std::vector<std::string>& argv, const std::string& input,
                           std::chrono::milliseconds limit,
                           const std::map<std::string, std::string>& extra_env) {
    temp_dir dir;
    const auto in = dir.file("stdin"), out = dir.file("stdout"), err = dir.file("stderr");
    write_text(in, input);
    const pid_t pid = spawn(argv, in, out, err, extra_env);
    command_result result;
    auto status = wait_for(pid, limit);
    if (!status) {
        ::kill(pid, SIGKILL);
        wait_for(pid, 10s);
        status = -1;
    }
    result.exit_code = *status;
    result.out = read_text(out);
    result.err = read_text(err);
    // The programs under test (stereosctl, stereos-hostd) run sanitized: a report fails the test.
    BOOST_TEST(result.err.find("Sanitizer") == std::string::npos, result.err);
    return result;
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

json::value http_answer::json() const {
    return json::parse(body);
}

std::string http_answer::error_code() const {
    boost::system::error_code ec;
    auto v = json::parse(body, ec);
    if (ec || !v.is_object())
        return {};
    const auto* e = v.get_object().if_contains("error");
    if (!e || !e->is_object() || !e->get_object().contains("code"))
        return {};
    return std::string(e->get_object().at("code").as_string());
}

std::string http_answer::error_message() const {
    boost::system::error_code ec;
    auto v = json::parse(body, ec);
    if (ec || !v.is_object())
        return {};
    const auto* e = v.get_object().if_contains("error");
    if (!e || !e->is_object() || !e->get_object().contains("message"))
        return {};
    return std::string(e->get_object().at("message").as_string());
}

http_answer http(const std::string& socket, const std::string& method, const std::string& target,
                 const std::string& body, const std::string& content_type) {
    asio::io_context io;
    socket_type s(io);
    s.connect(asio::local::stream_protocol::endpoint(socket));
    bhttp::request<bhttp::string_body> request{bhttp::string_to_verb(method), target, 11};
    request.method_string(method);
    request.set(bhttp::field::host, "localhost");
    request.keep_alive(false);
    if (!body.empty() || method == "POST" || method == "PUT") {
        request.set(bhttp::field::content_type, content_type);
        request.body() = body;
    }
    request.prepare_payload();
    bhttp::write(s, request);
    beast::flat_buffer buffer;
    bhttp::response_parser<bhttp::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    bhttp::read(s, buffer, parser);
    http_answer answer;
    answer.status = parser.get().result_int();
    answer.body = parser.get().body();
    for (const auto& field : parser.get()) {
        std::string name(field.name_string());
        for (auto& c : name)
            c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        answer.headers[name] = std::string(field.value());
    }
    return answer;
}

std::string raw_exchange(const std::string& socket, const std::string& bytes,
                         std::chrono::milliseconds limit) {
    asio::io_context io;
    socket_type s(io);
    s.connect(asio::local::stream_protocol::endpoint(socket));
    timeval tv{static_cast<time_t>(limit.count() / 1000),
               static_cast<suseconds_t>(limit.count() % 1000 * 1000)};
    ::setsockopt(s.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    boost::system::error_code ec;
    asio::write(s, asio::buffer(bytes), ec);
    std::string out;
    std::array<char, 4096> chunk{};
    while (true) {
        const auto n = ::recv(s.native_handle(), chunk.data(), chunk.size(), 0);
        if (n <= 0)
            break;
        out.append(chunk.data(), static_cast<std::size_t>(n));
    }
    return out;
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

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > end)
            return false;
        std::this_thread::sleep_for(20ms);
    }
    return true;
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
