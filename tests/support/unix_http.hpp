// Test support: HTTP/1.1 clients for the daemon's API on its unix socket: one request per
// connection, raw bytes, and readers of the chunked event stream (as the test asks for lines, or
// on a thread of its own).
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/json/value.hpp>

namespace stereos::testing {

struct http_answer {
    unsigned status = 0;
    std::string body;
    std::map<std::string, std::string> headers;  // lower-case names
    boost::json::value json() const;
    // error.code of an error body, "" if none.
    std::string error_code() const;
    std::string error_message() const;
};

// One request on a new connection (Connection: close). Throws on a socket failure.
http_answer http(const std::string& socket, const std::string& method, const std::string& target,
                 const std::string& body = {},
                 const std::string& content_type = "application/json");
inline http_answer get(const std::string& socket, const std::string& target) {
    return http(socket, "GET", target);
}
inline http_answer post(const std::string& socket, const std::string& target,
                        const std::string& body = {}) {
    return http(socket, "POST", target, body);
}

// Writes raw bytes, reads until the server closes (or `limit`), returns what came back.
std::string raw_exchange(const std::string& socket, const std::string& bytes,
                         std::chrono::milliseconds limit = std::chrono::seconds(10));

// One line of the event stream and the moment the socket read that completed it returned.
struct event_line {
    std::chrono::steady_clock::time_point received;
    std::string text;
};

// A /v1/events client reading lines as they come, over a non-blocking socket.
class event_reader {
  public:
    explicit event_reader(const std::string& socket, const std::string& target = "/v1/events",
                          bool read_head = true);

    void read_head(std::chrono::milliseconds limit = std::chrono::seconds(20));

    unsigned status() const { return parser_.get().result_int(); }
    std::string header(boost::beast::http::field f) const { return std::string(parser_.get()[f]); }

    // The next line, or nullopt when the stream ended or nothing came within `limit`.
    std::optional<std::string> next_line(
        std::chrono::milliseconds limit = std::chrono::seconds(20));
    // The same, with the time of its read: lines parsed from one read share that read's time.
    std::optional<event_line> next_event(
        std::chrono::milliseconds limit = std::chrono::seconds(20));
    // Every remaining line until the server ends the stream.
    std::vector<std::string> read_to_end(
        std::chrono::milliseconds limit = std::chrono::seconds(30));

    bool ended() const noexcept { return ended_; }
    // The chunked body ended with its terminator (not a broken connection).
    bool ended_cleanly() const noexcept { return clean_end_; }
    void close() { socket_.close(); }
    // Ends the connection both ways; safe from another thread while one reads (a read then
    // finds the end of the stream).
    void shut_down();

  private:
    bool wait_readable(std::chrono::steady_clock::time_point end);
    void take_body(std::chrono::steady_clock::time_point read_at);

    boost::asio::io_context io_;
    boost::asio::local::stream_protocol::socket socket_;
    boost::beast::flat_buffer buffer_;
    boost::beast::http::response_parser<boost::beast::http::string_body> parser_;
    std::string pending_;
    std::deque<event_line> lines_;
    bool ended_ = false;
    bool clean_end_ = false;
};

// A /v1/events subscriber read on its own thread until the server ends the stream. Reading never
// waits for the consumer, so a slow consumer cannot make the daemon cut this subscriber off; the
// daemon still ends the stream when it stops, or when it cannot keep up with the subscriber.
class event_capture {
  public:
    // Throws if the daemon cannot be reached or sends no response header.
    explicit event_capture(const std::string& socket, const std::string& target = "/v1/events");
    ~event_capture();  // ends the connection and joins the thread
    event_capture(const event_capture&) = delete;
    event_capture& operator=(const event_capture&) = delete;

    unsigned status() const noexcept { return status_; }
    // The next line, or nullopt if none came by `deadline` or the stream ended.
    std::optional<event_line> next(std::chrono::steady_clock::time_point deadline);
    // The stream ended and every line of it was taken.
    bool ended() const;
    // Waits up to `limit` for the server to end the stream; the lines not taken before.
    std::vector<std::string> read_to_end(
        std::chrono::milliseconds limit = std::chrono::seconds(30));

  private:
    void read_loop();

    event_reader reader_;
    unsigned status_ = 0;
    mutable std::mutex mutex_;
    std::condition_variable arrived_;
    std::deque<event_line> lines_;
    bool stream_ended_ = false;
    std::thread thread_;  // last: started once everything it uses exists
};

}  // namespace stereos::testing
