#include <stereos/link/socket_file_watcher.hpp>

#include <sys/inotify.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/system/system_error.hpp>

namespace stereos::link {

namespace asio = boost::asio;

asio::execution_context::id socket_file_watcher::id;

namespace {
// IN_ATTRIB too: a VMM may bind the socket and only then chown or chmod it.
constexpr std::uint32_t watched_events =
    IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF;
}  // namespace

socket_file_watcher::~socket_file_watcher() = default;

void socket_file_watcher::shutdown() {
    // The io_context is going: its handlers are destroyed uninvoked, and so is the descriptor.
    for (auto& [watch, waiters] : directories_) {
        for (auto* w : waiters)
            w->watch = -1;
    }
    directories_.clear();
    descriptor_.reset();
}

bool socket_file_watcher::open(const asio::any_io_executor& executor) {
    if (descriptor_)
        return true;
    const int fd = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0)
        return false;
    try {
        descriptor_.emplace(executor, fd);
    } catch (const boost::system::system_error&) {
        ::close(fd);  // not registered with the reactor: counted as a failed watch
        return false;
    }
    return true;
}

bool socket_file_watcher::watch(const asio::any_io_executor& executor, std::string_view path,
                                waiter& w) {
    unwatch(w);
    const auto slash = path.rfind('/');
    if (slash == std::string_view::npos || slash + 1 == path.size() || !open(executor))
        return false;
    const std::string directory(slash == 0 ? std::string_view("/") : path.substr(0, slash));
    // The same directory gives the same watch descriptor: one watch, shared by its waiters.
    const int watch =
        ::inotify_add_watch(descriptor_->native_handle(), directory.c_str(), watched_events);
    if (watch < 0)
        return false;  // e.g. the directory does not exist yet
    w.name.assign(path.substr(slash + 1));
    w.result = news::nothing;
    w.watch = watch;
    directories_[watch].push_back(&w);
    if (!reading_)
        start_read();
    return true;
}

void socket_file_watcher::unwatch(waiter& w) {
    if (w.watch < 0)
        return;
    const int watch = std::exchange(w.watch, -1);
    const auto found = directories_.find(watch);
    if (found == directories_.end())
        return;
    auto& waiters = found->second;
    waiters.erase(std::remove(waiters.begin(), waiters.end(), &w), waiters.end());
    if (!waiters.empty())
        return;
    directories_.erase(found);
    if (descriptor_)
        ::inotify_rm_watch(descriptor_->native_handle(), watch);
    // Nobody waits: no read may keep the io_context busy.
    if (directories_.empty() && descriptor_ && reading_)
        descriptor_->cancel();
}

void socket_file_watcher::start_read() {
    reading_ = true;
    descriptor_->async_read_some(
        asio::buffer(buffer_),
        [this](boost::system::error_code error, std::size_t size) { on_read(error, size); });
}

void socket_file_watcher::on_read(boost::system::error_code error, std::size_t size) {
    reading_ = false;
    if (!error) {
        dispatch(std::string_view(buffer_.data(), size));
    } else if (error != asio::error::operation_aborted) {
        // The instance is unusable: every waiter falls back to its timer, the next watch()
        // opens a new one.
        release(-1, news::watch_gone);
        descriptor_.reset();
        return;
    }
    if (!directories_.empty() && descriptor_)
        start_read();
}

void socket_file_watcher::dispatch(std::string_view events) {
    for (std::size_t at = 0; at + sizeof(inotify_event) <= events.size();) {
        inotify_event header{};
        std::memcpy(&header, events.data() + at, sizeof header);
        const auto name_at = at + sizeof header;
        if ((header.mask & IN_Q_OVERFLOW) != 0) {
            // Events were lost: any file may have appeared, so every waiter tries its socket.
            for (auto& [watch, waiters] : directories_) {
                for (auto* w : waiters)
                    tell(*w, news::file_appeared);
            }
        } else if (header.len > 0 && name_at + header.len <= events.size()) {
            const std::string_view padded(events.data() + name_at, header.len);
            const auto name = padded.substr(0, padded.find('\0'));
            if (const auto found = directories_.find(header.wd); found != directories_.end()) {
                for (auto* w : found->second) {
                    if (w->name == name)
                        tell(*w, news::file_appeared);
                }
            }
        }
        // The directory itself went (e.g. a VMM's per-VM directory on exit): the watch is dead.
        if ((header.mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF)) != 0)
            release(header.wd, news::watch_gone);
        at = name_at + header.len;
    }
}

void socket_file_watcher::tell(waiter& w, news what) {
    // An appearance is not taken back by the directory going later in the same batch.
    if (w.result != news::file_appeared)
        w.result = what;
    w.wake->cancel();
}

// The kernel removes a watch whose directory went (and says IN_IGNORED) by itself, and closing
// the descriptor removes them all: nothing here calls inotify_rm_watch.
void socket_file_watcher::release(int watch, news what) {
    auto release_all = [&](std::vector<waiter*>& waiters) {
        for (auto* w : waiters) {
            w->watch = -1;
            tell(*w, what);
        }
    };
    if (watch == -1) {
        for (auto& [wd, waiters] : directories_)
            release_all(waiters);
        directories_.clear();
    } else if (const auto found = directories_.find(watch); found != directories_.end()) {
        release_all(found->second);
        directories_.erase(found);
    }
    if (directories_.empty() && descriptor_ && reading_)
        descriptor_->cancel();
}

}  // namespace stereos::link
