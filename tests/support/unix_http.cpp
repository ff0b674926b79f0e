#include "tests/support/unix_http.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <array>
#include <cctype>
#include <stdexcept>

#include <boost/asio/write.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/json/parse.hpp>

namespace stereos::testing {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = beast::http;
namespace json = boost::json;
using socket_type = asio::local::stream_protocol::socket;

namespace {
bool would_block(boost::system::error_code ec) {
    return ec == asio::error::would_block || ec == asio::error::try_again;
}
}  // namespace

json::value http_answer::json() const {
    return json::parse(body);
}

namespace {
// A string field of the error object of an error body ({"error":{...}}), "" if none.
std::string error_field(const std::string& body, std::string_view name) {
    boost::system::error_code ec;
    auto v = json::parse(body, ec);
    if (ec || !v.is_object())
        return {};
    const auto* e = v.get_object().if_contains("error");
    if (!e || !e->is_object() || !e->get_object().contains(name))
        return {};
    return std::string(e->get_object().at(name).as_string());
}
}  // namespace

std::string http_answer::error_code() const {
    return error_field(body, "code");
}

std::string http_answer::error_message() const {
    return error_field(body, "message");
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

event_reader::event_reader(const std::string& socket, const std::string& target, bool read_head)
    : socket_(io_) {
    socket_.connect(asio::local::stream_protocol::endpoint(socket));
    bhttp::request<bhttp::empty_body> request{bhttp::verb::get, target, 11};
    request.set(bhttp::field::host, "localhost");
    bhttp::write(socket_, request);
    socket_.non_blocking(true);
    parser_.body_limit(boost::none);
    if (read_head)
        this->read_head();
}

void event_reader::read_head(std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (!parser_.is_header_done()) {
        boost::system::error_code ec;
        bhttp::read_header(socket_, buffer_, parser_, ec);
        if (would_block(ec)) {
            if (!wait_readable(end))
                throw std::runtime_error("event stream: no response header");
            continue;
        }
        if (ec)
            throw std::runtime_error("event stream: " + ec.message());
    }
}

std::optional<std::string> event_reader::next_line(std::chrono::milliseconds limit) {
    auto line = next_event(limit);
    if (!line)
        return std::nullopt;
    return std::move(line->text);
}

std::optional<event_line> event_reader::next_event(std::chrono::milliseconds limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (lines_.empty() && !ended_) {
        // Parses what is buffered first; reads the socket only when that is not enough.
        boost::system::error_code ec;
        bhttp::read_some(socket_, buffer_, parser_, ec);
        const auto read_at = std::chrono::steady_clock::now();
        take_body(read_at);
        if (would_block(ec)) {
            if (!lines_.empty())
                break;
            if (!wait_readable(end))
                return std::nullopt;
            continue;
        }
        if (parser_.is_done() || ec) {
            ended_ = true;
            clean_end_ = parser_.is_done();
            // An unterminated last line is still what the server sent: callers search it too.
            if (!pending_.empty()) {
                lines_.push_back(event_line{read_at, std::move(pending_)});
                pending_.clear();
            }
        }
    }
    if (lines_.empty())
        return std::nullopt;
    auto line = std::move(lines_.front());
    lines_.pop_front();
    return line;
}

std::vector<std::string> event_reader::read_to_end(std::chrono::milliseconds limit) {
    std::vector<std::string> all;
    const auto end = std::chrono::steady_clock::now() + limit;
    while (auto line = next_line(std::chrono::duration_cast<std::chrono::milliseconds>(
               end - std::chrono::steady_clock::now()))) {
        all.push_back(std::move(*line));
    }
    return all;
}

bool event_reader::wait_readable(std::chrono::steady_clock::time_point end) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        end - std::chrono::steady_clock::now());
    if (left.count() <= 0)
        return false;
    pollfd p{socket_.native_handle(), POLLIN, 0};
    return ::poll(&p, 1, static_cast<int>(left.count())) > 0;
}

void event_reader::shut_down() {
    ::shutdown(socket_.native_handle(), SHUT_RDWR);
}

void event_reader::take_body(std::chrono::steady_clock::time_point read_at) {
    auto& body = parser_.get().body();
    pending_ += body;
    body.clear();
    std::size_t start = 0;
    for (auto nl = pending_.find('\n'); nl != std::string::npos; nl = pending_.find('\n', start)) {
        lines_.push_back(event_line{read_at, pending_.substr(start, nl - start)});
        start = nl + 1;
    }
    pending_.erase(0, start);
}

event_capture::event_capture(const std::string& socket, const std::string& target)
    : reader_(socket, target), status_(reader_.status()), thread_([this] { read_loop(); }) {}

event_capture::~event_capture() {
    reader_.shut_down();
    thread_.join();
}

void event_capture::read_loop() {
    while (true) {
        auto line = reader_.next_event(std::chrono::hours(1));
        if (!line) {
            if (reader_.ended())
                break;
            continue;  // an hour without events: keep waiting
        }
        std::lock_guard lock(mutex_);
        lines_.push_back(std::move(*line));
        arrived_.notify_all();
    }
    std::lock_guard lock(mutex_);
    stream_ended_ = true;
    arrived_.notify_all();
}

std::optional<event_line> event_capture::next(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    arrived_.wait_until(lock, deadline, [&] { return !lines_.empty() || stream_ended_; });
    if (lines_.empty())
        return std::nullopt;
    auto line = std::move(lines_.front());
    lines_.pop_front();
    return line;
}

bool event_capture::ended() const {
    std::lock_guard lock(mutex_);
    return stream_ended_ && lines_.empty();
}

std::vector<std::string> event_capture::read_to_end(std::chrono::milliseconds limit) {
    std::unique_lock lock(mutex_);
    arrived_.wait_for(lock, limit, [&] { return stream_ended_; });
    std::vector<std::string> rest;
    rest.reserve(lines_.size());
    for (auto& line : lines_)
        rest.push_back(std::move(line.text));
    lines_.clear();
    return rest;
}

}  // namespace stereos::testing
