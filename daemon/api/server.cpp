#include "daemon/api/server.hpp"

#include <malloc.h>

#include <algorithm>
#include <stdexcept>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/co_spawn.hpp>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/api/socket_file.hpp"
#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

namespace {

using transport::rethrow_if_failed;
using transport::use_tuple;
// Connections over the limit still get a 503 (rather than a hang in the backlog), up to this
// many at once; beyond that the accept loop pauses.
constexpr std::size_t over_limit_allowance = 64;
constexpr auto accept_retry_pause = 100ms;

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

api_server_options api_options_from(const config::daemon_settings& settings) {
    api_server_options options;
    options.socket_path = settings.api_socket;
    options.group = settings.api_group;
    options.read_group = settings.api_read_group;
    options.max_connections = settings.api_max_connections;
    return options;
}

api_server::api_server(const asio::any_io_executor& executor, api_server_options options,
                       guest_registry& registry, event_bus& bus)
    : executor_(executor),
      options_(std::move(options)),
      registry_(registry),
      bus_(bus),
      metrics_(bus),
      context_{registry_, bus_, metrics_},
      acceptor_(executor),
      slot_freed_(executor),
      group_(lookup_group(options_.group, "api_group")),
      read_group_(lookup_group(options_.read_group, "api_read_group")),
      users_(executor, user_lookup_cache::executor_source([this] { return lookup_executor(); }),
             options_.user_lookup, options_.read_timeout),
      hangups_(executor),
      environment_{options_.idle_timeout,
                   options_.read_timeout,
                   options_.write_timeout,
                   options_.event_queue_capacity,
                   options_.max_connections,
                   context_,
                   metrics_,
                   audit_,
                   registry_,
                   bus_,
                   users_,
                   group_,
                   read_group_,
                   hangups_} {}

namespace {
// Pools whose lookups were hung at a server's end: reachable (not a leak to LeakSanitizer), and
// joined only on request.
std::vector<std::unique_ptr<asio::thread_pool>>& lookup_pools_left_behind() {
    static auto* const pools = new std::vector<std::unique_ptr<asio::thread_pool>>();
    return *pools;
}
}  // namespace

std::size_t join_lookup_pools_left_behind() {
    auto& pools = lookup_pools_left_behind();
    const auto count = pools.size();
    for (auto& pool : pools)
        pool->join();
    pools.clear();
    return count;
}

api_server::~api_server() {
    // stop() throws only if a timer operation fails, which would be a bug: worth a log line,
    // not a terminate() from a destructor.
    try {
        stop();
    } catch (const std::exception& e) {
        log::error(std::string("API server stop failed: ") + e.what());
    }
    // Joining a pool thread stuck in getpwuid_r (an LDAP server gone) would hold the daemon's
    // exit for as long as NSS takes: the pool is left to the process's end instead.
    if (const auto stuck = users_.lookups_in_nss(); stuck > 0 && user_lookups_) {
        log::warning("not waiting for " + std::to_string(stuck) +
                     " user-database lookup(s) still running at exit");
        user_lookups_->stop();
        lookup_pools_left_behind().push_back(std::move(user_lookups_));
    }
}

asio::any_io_executor api_server::lookup_executor() {
    // Started at the first lookup: a daemon nobody asks starts no threads.
    if (!user_lookups_)
        user_lookups_ = std::make_unique<asio::thread_pool>(2);
    return user_lookups_->get_executor();
}

void api_server::listen() {
    socket_inode_ = create_api_socket_file(acceptor_, options_.socket_path, group_, options_.group);
    own_socket_file_ = true;
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
    asio::co_spawn(executor_, hangups_.run(), rethrow_if_failed);
}

void api_server::stop() {
    if (stopping_)
        return;
    stopping_ = true;
    context_.stopping = true;
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    slot_freed_.cancel();
    users_.stop();  // sessions still waiting for the user database go on without it
    hangups_.stop();
    for (const auto& session : connections_)
        session->stop();
    if (own_socket_file_) {
        remove_api_socket_file(options_.socket_path, socket_inode_);
        own_socket_file_ = false;
    }
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
    auto peer = peer_facts_of(socket.native_handle(), group_ || read_group_);
    const bool over_limit = connections_.size() >= options_.max_connections;
    if (over_limit) {
        metrics_.connection_rejected();
        if (auto text = over_limit_.admit("API connection limit reached (" +
                                              std::to_string(options_.max_connections) +
                                              "): new connections get 503 server_busy",
                                          steady::now()))
            log::warning(*text);
    }
    auto session =
        std::make_shared<api_session>(std::move(socket), std::move(peer), over_limit, environment_);
    connections_.insert(session);
    connections_peak_ = std::max(connections_peak_, connections_.size());
    metrics_.connection_opened();
    auto slot = session->hangup_slot();
    asio::co_spawn(executor_, session->run(),
                   asio::bind_cancellation_slot(slot, [this, session](const std::exception_ptr& e) {
                       log_session_failure(e);
                       session->close();
                       connections_.erase(session);
                       metrics_.connection_closed();
                       slot_freed_.cancel();
                       release_memory_after_burst();
                   }));
}

// A burst of sessions leaves their memory in malloc's free lists, where RSS keeps it: give it
// back once most of a large burst has gone (malloc_trim walks the heap, so not on every close).
void api_server::release_memory_after_burst() {
    constexpr std::size_t large_burst = 64;
    if (connections_peak_ < large_burst || connections_.size() * 2 > connections_peak_)
        return;
    ::malloc_trim(0);
    connections_peak_ = connections_.size();
}

}  // namespace stereos::daemon
