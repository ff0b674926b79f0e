#include "daemon/api_server.hpp"

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/write.hpp>

#include "daemon/logging.hpp"
#include "transport/completion_tokens.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using namespace std::chrono_literals;
using namespace asio::experimental::awaitable_operators;
using steady = std::chrono::steady_clock;

namespace {

using transport::rethrow_if_failed;
using transport::use_tuple;
// Connections over the limit still get a 503 (rather than a hang in the backlog), up to this
// many at once; beyond that the accept loop pauses.
constexpr std::size_t over_limit_allowance = 64;
constexpr auto over_limit_read_timeout = 2s;
constexpr auto accept_retry_pause = 100ms;
constexpr auto linger_timeout = 2s;
constexpr std::size_t linger_max_bytes = 4 * 1024 * 1024;
constexpr std::chrono::milliseconds stop_write_timeout{1000};

std::optional<gid_t> lookup_group(const std::string& name, std::string_view key) {
    if (name.empty())
        return std::nullopt;
    std::vector<char> buffer(16384);
    group entry{};
    group* found = nullptr;
    const int rc = getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
    if (rc != 0 || found == nullptr) {
        log::warning(std::string(key) + " \"" + name +
                     "\" does not exist: the API is restricted to root and the daemon's user");
        return std::nullopt;
    }
    return found->gr_gid;
}

// Errors meaning the client went away (or we closed the socket): nothing left to answer.
bool client_gone(boost::system::error_code ec) {
    return ec == http::error::end_of_stream || ec == http::error::partial_message ||
           ec == asio::error::eof || ec == asio::error::connection_reset ||
           ec == asio::error::broken_pipe || ec == asio::error::operation_aborted ||
           ec == asio::error::bad_descriptor || ec == asio::error::not_connected;
}

std::string hex(std::size_t n) {
    std::array<char, 24> text{};
    std::snprintf(text.data(), text.size(), "%zx", n);
    return text.data();
}

void log_session_failure(const std::exception_ptr& e) {
    if (!e)
        return;
    try {
        std::rethrow_exception(e);
    } catch (const std::exception& error) {
        log::error(std::string("API session failed, connection closed: ") + error.what());
    }
}

}  // namespace

// ---- credentials ----------------------------------------------------------------------------

std::optional<std::string> user_name_of(uid_t uid) {
    std::vector<char> buffer(16384);
    passwd entry{};
    passwd* found = nullptr;
    if (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
        return std::nullopt;
    return std::string(found->pw_name);
}

std::optional<peer_credentials> peer_credentials_of(int socket_fd) {
    ucred cred{};
    socklen_t size = sizeof cred;
    if (getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0)
        return std::nullopt;
    return peer_credentials{cred.pid, cred.uid, cred.gid};
}

bool peer_in_group(const peer_credentials& peer, gid_t wanted) {
    if (peer.gid == wanted)
        return true;
    if (peer.pid > 0) {
        std::ifstream status("/proc/" + std::to_string(peer.pid) + "/status");
        std::string line;
        while (std::getline(status, line)) {
            if (!line.starts_with("Groups:"))
                continue;
            std::istringstream groups(line.substr(7));
            gid_t gid = 0;
            while (groups >> gid) {
                if (gid == wanted)
                    return true;
            }
            return false;
        }
    }
    // The process is not visible (another PID namespace): fall back to its user's groups.
    std::vector<char> buffer(16384);
    passwd entry{};
    passwd* found = nullptr;
    if (getpwuid_r(peer.uid, &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
        return false;
    int count = 64;
    std::vector<gid_t> groups(static_cast<std::size_t>(count));
    if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0) {
        groups.resize(static_cast<std::size_t>(count));
        if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0)
            return false;
    }
    groups.resize(static_cast<std::size_t>(count));
    return std::find(groups.begin(), groups.end(), wanted) != groups.end();
}

api_server_options api_options_from(const config::daemon_settings& settings) {
    api_server_options options;
    options.socket_path = settings.api_socket;
    options.group = settings.api_group;
    options.read_group = settings.api_read_group;
    options.max_connections = settings.api_max_connections;
    return options;
}

// ---- the server -----------------------------------------------------------------------------

struct api_server::connection {
    explicit connection(socket_type s)
        : socket(std::move(s)), deadline_timer(socket.get_executor()) {}

    socket_type socket;
    asio::steady_timer deadline_timer;  // the watchdog closes the socket when it passes
    steady::time_point deadline = steady::time_point::max();
    api::peer_access access;
    asio::steady_timer* event_wake = nullptr;  // set while serving /v1/events
    bool over_limit = false;
    bool finished = false;
    bool timed_out = false;

    void close() {
        boost::system::error_code ignored;
        socket.close(ignored);
    }
};

api_server::api_server(const asio::any_io_executor& executor, api_server_options options,
                       guest_registry& registry, event_bus& bus)
    : executor_(executor),
      options_(std::move(options)),
      registry_(registry),
      bus_(bus),
      metrics_(bus),
      context_{registry_, bus_, metrics_},
      acceptor_(executor),
      slot_freed_(executor) {
    group_ = lookup_group(options_.group, "api_group");
    read_group_ = lookup_group(options_.read_group, "api_read_group");
}

api_server::~api_server() {
    // stop() throws only if a timer operation fails, which would be a bug: worth a log line,
    // not a terminate() from a destructor.
    try {
        stop();
    } catch (const std::exception& e) {
        log::error(std::string("API server stop failed: ") + e.what());
    }
}

void api_server::listen() {
    const auto& path = options_.socket_path;
    auto fail = [&](const std::string& what) {
        throw std::runtime_error("API socket " + path.string() + ": " + what);
    };
    if (path.has_parent_path()) {
        std::error_code ignored;
        std::filesystem::create_directories(path.parent_path(), ignored);
    }
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            fail("exists and is not a socket; not replacing it");
        // A live daemon still answers on it: taking the path over would orphan it.
        socket_type probe(executor_);
        boost::system::error_code ec;
        probe.connect(asio::local::stream_protocol::endpoint(path.string()), ec);
        if (!ec)
            fail("another process is serving it (is stereos-hostd already running?)");
        if (::unlink(path.c_str()) != 0 && errno != ENOENT)
            fail(std::string("cannot remove the stale socket: ") + std::strerror(errno));
        log::info("removed stale API socket " + path.string());
    }

    boost::system::error_code ec;
    acceptor_.open(asio::local::stream_protocol(), ec);
    if (ec)
        fail(ec.message());
    // Created owner-only, so no one can connect before the mode and group are set.
    const mode_t old_mask = ::umask(0177);
    acceptor_.bind(asio::local::stream_protocol::endpoint(path.string()), ec);
    ::umask(old_mask);
    if (ec)
        fail("cannot bind: " + ec.message());
    own_socket_file_ = true;
    if (lstat(path.c_str(), &st) == 0)
        socket_inode_ = st.st_ino;
    if (group_) {
        if (::chown(path.c_str(), static_cast<uid_t>(-1), *group_) != 0) {
            log::warning("cannot give the API socket to group " + options_.group + ": " +
                         std::strerror(errno) + "; it stays owner-only");
        } else if (::chmod(path.c_str(), 0660) != 0) {
            fail(std::string("chmod: ") + std::strerror(errno));
        }
    }
    acceptor_.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        fail("cannot listen: " + ec.message());
    log::info("API listening on " + path.string() +
              (group_ ? " (mode 0660, group " + options_.group + ")" : " (mode 0600)"));
}

void api_server::adopt(int listening_fd) {
    boost::system::error_code ec;
    acceptor_.assign(asio::local::stream_protocol(), listening_fd, ec);
    if (ec)
        throw std::runtime_error("cannot adopt the API socket: " + ec.message());
    own_socket_file_ = false;
    const auto endpoint = acceptor_.local_endpoint(ec);
    const auto path = ec ? std::string() : endpoint.path();
    log::info("API listening on " + (path.empty() ? std::string("an inherited socket") : path) +
              ", passed by systemd");
}

void api_server::start() {
    if (started_)
        return;
    started_ = true;
    asio::co_spawn(executor_, accept_loop(), rethrow_if_failed);
}

void api_server::stop() {
    if (stopping_)
        return;
    stopping_ = true;
    context_.stopping = true;
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    slot_freed_.cancel();
    // Closing a socket ends its session's pending read or write; a session inside a guest
    // request finishes when that request does (the daemon stops the links next). Event
    // streams end cleanly instead (their last chunk written), within a short bound.
    for (const auto& conn : connections_) {
        if (conn->event_wake) {
            arm(*conn, stop_write_timeout);
            conn->event_wake->cancel();
        } else {
            conn->close();
        }
    }
    if (own_socket_file_) {
        struct stat st {};
        const auto& path = options_.socket_path;
        if (lstat(path.c_str(), &st) == 0 && st.st_ino == socket_inode_)
            ::unlink(path.c_str());
        own_socket_file_ = false;
    }
}

api::peer_access api_server::access_of(int socket_fd) const {
    const auto peer = peer_credentials_of(socket_fd);
    if (!peer)
        return {};
    const bool owner = peer->uid == 0 || peer->uid == ::geteuid();
    const bool writer = owner || (group_ && peer_in_group(*peer, *group_));
    const bool reader = writer || (read_group_ && peer_in_group(*peer, *read_group_));
    api::peer_access access{reader, writer, owner, *peer};
    if (auto name = user_name_of(peer->uid))
        access.peer_user = std::move(*name);
    return access;
}

asio::awaitable<void> api_server::accept_loop() {
    while (!stopping_) {
        if (connections_.size() >= options_.max_connections + over_limit_allowance) {
            slot_freed_.expires_at(asio::steady_timer::time_point::max());
            co_await slot_freed_.async_wait(use_tuple);
            continue;
        }
        auto [ec, socket] = co_await acceptor_.async_accept(use_tuple);
        if (stopping_)
            break;
        if (ec) {
            // EMFILE, ENFILE, ENOBUFS...: the connection waits in the backlog; try again soon
            // rather than spin on a listening socket that stays readable.
            metrics_.accept_failed();
            if (auto text = accept_errors_.admit(
                    "API accept failed: " + ec.message() + "; retrying", steady::now()))
                log::warning(*text);
            asio::steady_timer pause(executor_, accept_retry_pause);
            co_await pause.async_wait(use_tuple);
            continue;
        }
        accept_errors_.reset();
        start_session(std::move(socket));
    }
}

void api_server::start_session(socket_type socket) {
    auto conn = std::make_shared<connection>(std::move(socket));
    conn->access = access_of(conn->socket.native_handle());
    conn->over_limit = connections_.size() >= options_.max_connections;
    if (conn->over_limit) {
        metrics_.connection_rejected();
        if (auto text = over_limit_.admit("API connection limit reached (" +
                                              std::to_string(options_.max_connections) +
                                              "): new connections get 503 server_busy",
                                          steady::now()))
            log::warning(*text);
    }
    connections_.insert(conn);
    metrics_.connection_opened();
    asio::co_spawn(executor_, watchdog(conn), log_session_failure);
    asio::co_spawn(executor_, run_session(conn), [this, conn](const std::exception_ptr& e) {
        log_session_failure(e);
        conn->finished = true;
        conn->deadline_timer.cancel();
        conn->close();
        connections_.erase(conn);
        metrics_.connection_closed();
        slot_freed_.cancel();
    });
}

void api_server::arm(connection& conn, std::chrono::milliseconds timeout) {
    conn.deadline = steady::now() + timeout;
    conn.deadline_timer.expires_at(conn.deadline);  // wakes the watchdog to re-arm
}

void api_server::disarm(connection& conn) {
    conn.deadline = steady::time_point::max();
    conn.deadline_timer.expires_at(conn.deadline);
}

// One timer per connection bounds whatever the session is waiting for (idle, reading, writing):
// when it passes, the socket is closed and the session's operation fails.
asio::awaitable<void> api_server::watchdog(std::shared_ptr<connection> conn) {
    while (!conn->finished) {
        conn->deadline_timer.expires_at(conn->deadline);
        co_await conn->deadline_timer.async_wait(use_tuple);
        if (conn->finished)
            break;
        if (steady::now() >= conn->deadline) {
            conn->timed_out = true;
            conn->close();
            break;
        }
    }
}

asio::awaitable<bool> api_server::send(connection& conn, api::http_response& response) {
    metrics_.response_sent(response.result_int());
    arm(conn, options_.write_timeout);
    auto [ec, n] = co_await http::async_write(conn.socket, response, use_tuple);
    disarm(conn);
    if (ec && !conn.timed_out && client_gone(ec))
        log::debug("API client hung up before its answer (" + ec.message() + ")");
    co_return !ec;
}

asio::awaitable<void> api_server::run_session(std::shared_ptr<connection> conn) {
    beast::flat_buffer buffer;
    auto& socket = conn->socket;
    while (!stopping_) {
        // Idle until the next request starts, then the read timeout covers the whole request,
        // so a client sending half a request cannot hold a connection slot.
        if (buffer.size() == 0) {
            arm(*conn, options_.idle_timeout);
            auto [ec] = co_await socket.async_wait(socket_type::wait_read, use_tuple);
            if (ec)
                break;
        }
        arm(*conn, conn->over_limit ? std::min<std::chrono::milliseconds>(options_.read_timeout,
                                                                          over_limit_read_timeout)
                                    : options_.read_timeout);
        http::request_parser<http::string_body> parser;
        parser.header_limit(api::max_header_bytes);
        parser.body_limit(api::max_body_bytes);
        auto [ec, n] = co_await http::async_read_header(socket, buffer, parser, use_tuple);
        if (!ec && !parser.is_done()) {
            // curl sends large bodies only after "100 Continue" (or a 1 s pause).
            const auto& head = parser.get();
            if (beast::iequals(head[http::field::expect], "100-continue")) {
                static constexpr std::string_view go_on = "HTTP/1.1 100 Continue\r\n\r\n";
                auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(go_on), use_tuple);
                ec = wec;
            }
            if (!ec) {
                auto [rec, rn] = co_await http::async_read(socket, buffer, parser, use_tuple);
                ec = rec;
            }
        }
        if (ec) {
            if (conn->timed_out || client_gone(ec) || stopping_)
                break;
            // Malformed or over a limit: answer, then close without reading on.
            auto refusal = api::parse_error_response(ec);
            co_await send(*conn, refusal);
            co_await linger_close(*conn);
            break;
        }
        disarm(*conn);

        auto request = parser.release();
        if (log::enabled(log::severity::debug)) {
            const auto what = api::describe(request);
            log::debug("API request " + what, {.request = what});
        }
        api::api_outcome outcome;
        if (conn->over_limit) {
            outcome =
                api::error_response(503, "server_busy",
                                    "too many API connections (limit " +
                                        std::to_string(options_.max_connections) + "); try again",
                                    request.version());
        } else {
            outcome = co_await api::dispatch(request, conn->access, context_);
        }
        // The body may be a secret or a jcard.toml: do not leave it in freed memory.
        std::fill(request.body().begin(), request.body().end(), '\0');

        if (auto* stream = std::get_if<api::event_stream_request>(&outcome)) {
            co_await serve_events(conn, stream->guest_filter, request.version());
            break;
        }
        auto& response = std::get<api::http_response>(outcome);
        audit_.record(request, conn->access, response);
        const bool keep_alive = request.keep_alive() && !conn->over_limit && !stopping_;
        response.keep_alive(keep_alive);
        if (!co_await send(*conn, response) || !keep_alive)
            break;
    }
    if (!conn->timed_out && socket.is_open()) {
        boost::system::error_code ignored;
        socket.shutdown(socket_type::shutdown_send, ignored);
    }
}

// After an error response: stop sending, and read (and drop) what the client still sends until
// it closes, so closing does not reset the connection before it has read our answer.
asio::awaitable<void> api_server::linger_close(connection& conn) {
    boost::system::error_code ignored;
    conn.socket.shutdown(socket_type::shutdown_send, ignored);
    arm(conn, std::chrono::duration_cast<std::chrono::milliseconds>(linger_timeout));
    std::vector<char> scratch(64 * 1024);
    std::size_t total = 0;
    while (total < linger_max_bytes) {
        auto [ec, n] = co_await conn.socket.async_read_some(asio::buffer(scratch), use_tuple);
        if (ec)
            break;
        total += n;
    }
    disarm(conn);
}

// ---- the event stream -----------------------------------------------------------------------

asio::awaitable<void> api_server::serve_events(std::shared_ptr<connection> conn,
                                               const std::string& guest_filter, unsigned version) {
    // Subscribe and take the snapshot with no suspension in between, so that no event falls
    // between the two.
    auto subscription = bus_.subscribe(guest_filter, options_.event_queue_capacity);
    std::string snapshot;
    for (const auto& guest : registry_.all()) {
        if (guest_filter.empty() || guest->name() == guest_filter)
            snapshot += *bus_.snapshot_line(guest->name(), "state", guest->snapshot_event_fields());
    }
    metrics_.event_stream_opened();
    asio::steady_timer wake(executor_);
    subscription->set_notify([&wake] { wake.cancel(); });
    conn->event_wake = &wake;

    // HTTP/1.1: chunked; an HTTP/1.0 client gets a body that ends when the connection does.
    const bool chunked = version >= 11;
    http::response<http::empty_body> head{http::status::ok, version};
    head.set(http::field::server, "stereos-hostd/" STEREOS_VERSION);
    head.set(http::field::content_type, "application/x-ndjson");
    head.set(http::field::cache_control, "no-store");
    head.keep_alive(false);
    if (chunked)
        head.chunked(true);
    http::response_serializer<http::empty_body> serializer{head};
    metrics_.response_sent(200);
    arm(*conn, options_.write_timeout);
    auto [ec, n] = co_await http::async_write_header(conn->socket, serializer, use_tuple);
    disarm(*conn);
    if (!ec) {
        auto ended =
            co_await (stream_events(*conn, *subscription, guest_filter, wake, snapshot, chunked) ||
                      watch_for_hangup(*conn));
        if (ended.index() == 1)
            log::debug("API client hung up on its event stream");
    }
    conn->event_wake = nullptr;
    subscription->close();
    metrics_.event_stream_closed();
}

asio::awaitable<void> api_server::stream_events(connection& conn, event_subscription& subscription,
                                                const std::string& guest_filter,
                                                asio::steady_timer& wake, std::string& pending,
                                                bool chunked) {
    constexpr std::size_t batch_limit = 64 * 1024;
    auto write_batch = [&](const std::string& data, bool last) -> asio::awaitable<bool> {
        std::string framed;
        if (chunked) {
            if (!data.empty())
                framed = hex(data.size()) + "\r\n" + data + "\r\n";
            if (last)
                framed += "0\r\n\r\n";
        } else {
            framed = data;
        }
        if (framed.empty())
            co_return true;
        arm(conn, stopping_ ? stop_write_timeout : options_.write_timeout);
        auto [ec, n] = co_await asio::async_write(conn.socket, asio::buffer(framed), use_tuple);
        disarm(conn);
        co_return !ec;
    };

    std::string batch = std::move(pending);
    while (!stopping_) {
        while (batch.size() < batch_limit) {
            auto line = subscription.next();
            if (!line)
                break;
            batch += **line;
        }
        if (subscription.overflowed()) {
            // Whatever was still queued is gone; say so and end the stream.
            batch +=
                *bus_.snapshot_line(guest_filter, "overflow",
                                    {{"reason", "subscriber fell behind: more than " +
                                                    std::to_string(options_.event_queue_capacity) +
                                                    " events queued; reconnect to resume"}});
            co_await write_batch(batch, true);
            co_return;
        }
        if (batch.empty()) {
            wake.expires_at(asio::steady_timer::time_point::max());
            co_await wake.async_wait(use_tuple);
            asio::cancellation_state state = co_await asio::this_coro::cancellation_state;
            if (state.cancelled() != asio::cancellation_type::none)
                co_return;  // the client hung up
            continue;
        }
        if (!co_await write_batch(batch, false))
            co_return;
        batch.clear();
    }
    const std::string nothing;
    co_await write_batch(nothing, true);
}

// The client sends nothing on an event stream: readable means it closed (or broke protocol).
asio::awaitable<void> api_server::watch_for_hangup(connection& conn) {
    co_await conn.socket.async_wait(socket_type::wait_read, use_tuple);
}

}  // namespace stereos::daemon
