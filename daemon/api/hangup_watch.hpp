// Notices API clients hanging up while their requests wait, at no cost per request: an epoll
// instance of its own holds each watched session socket for EPOLLRDHUP (edge-triggered), and
// the daemon's reactor waits on that epoll descriptor, which becomes readable when a client
// hangs up. Asio cannot wait for a hangup for free: it attempts every socket read at once (a
// read started while the client awaits its answer fails with EAGAIN, one system call a request)
// and re-arms its epoll registration for every readiness wait (another). Here a connection costs
// one epoll_ctl, when its first request that a hangup cancels starts; a hangup costs three.
// Single-threaded, on the daemon's executor.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <unordered_map>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

namespace stereos::daemon::api {

class hangup_watch {
  public:
    // Told that the peer shut its sending side (`gone`: closed or reset the whole connection).
    using listener = std::function<void(bool gone)>;

    explicit hangup_watch(const boost::asio::any_io_executor& executor);
    hangup_watch(const hangup_watch&) = delete;
    hangup_watch& operator=(const hangup_watch&) = delete;

    // Watches an open socket until forget(), or until the socket is closed (the kernel drops a
    // closed socket from the set). A hangup that happened already is reported too. Nullopt if
    // the socket cannot be watched (epoll_ctl failed: out of memory or max_user_watches).
    std::optional<std::uint64_t> watch(int socket, listener on_hangup);
    // The listener is not called any more (the socket need not be open).
    void forget(std::uint64_t id) { listeners_.erase(id); }

    // Reports hangups until stop(). Spawn once.
    boost::asio::awaitable<void> run();
    void stop();

  private:
    void report_ready();

    boost::asio::posix::stream_descriptor epoll_;
    std::unordered_map<std::uint64_t, listener> listeners_;
    std::uint64_t next_id_ = 1;
    bool stopped_ = false;
};

}  // namespace stereos::daemon::api
