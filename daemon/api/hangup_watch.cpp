#include "daemon/api/hangup_watch.hpp"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <system_error>

#include <stereos/util/completion_tokens.hpp>
#include "daemon/logging.hpp"

namespace stereos::daemon::api {

namespace asio = boost::asio;

namespace {

int create_epoll() {
    const int fd = ::epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0)
        throw std::system_error(errno, std::generic_category(), "epoll_create1 for API hangups");
    return fd;
}

}  // namespace

hangup_watch::hangup_watch(const asio::any_io_executor& executor)
    : epoll_(executor, create_epoll()) {}

std::optional<std::uint64_t> hangup_watch::watch(int socket, listener on_hangup) {
    const auto id = next_id_++;
    // Edge-triggered: one report per hangup, and the client's requests (EPOLLIN) wake nothing.
    epoll_event event{};
    event.events = EPOLLRDHUP | EPOLLET;
    event.data.u64 = id;
    if (::epoll_ctl(epoll_.native_handle(), EPOLL_CTL_ADD, socket, &event) != 0)
        return std::nullopt;
    listeners_.emplace(id, std::move(on_hangup));
    return id;
}

void hangup_watch::report_ready() {
    std::array<epoll_event, 64> events{};
    int n = 0;
    do {
        n = ::epoll_wait(epoll_.native_handle(), events.data(), static_cast<int>(events.size()), 0);
        for (int i = 0; i < n; ++i) {
            const auto found = listeners_.find(events[i].data.u64);
            if (found == listeners_.end())
                continue;  // forgotten, or a socket a child process still holds open
            // A copy: the listener may forget itself.
            const auto on_hangup = found->second;
            on_hangup((events[i].events & (EPOLLHUP | EPOLLERR)) != 0);
        }
    } while (n == static_cast<int>(events.size()));
}

asio::awaitable<void> hangup_watch::run() {
    while (!stopped_) {
        auto [ec] = co_await epoll_.async_wait(asio::posix::stream_descriptor::wait_read,
                                               transport::use_tuple);
        if (stopped_ || ec == asio::error::operation_aborted)
            break;
        if (ec) {
            // Never seen; the requests' own deadlines still bound them.
            log::error("API hangup watch failed, hangups are not noticed any more: " +
                       ec.message());
            break;
        }
        report_ready();
    }
}

void hangup_watch::stop() {
    stopped_ = true;
    boost::system::error_code ignored;
    epoll_.cancel(ignored);
}

}  // namespace stereos::daemon::api
