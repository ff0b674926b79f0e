// One inotify instance for every guest link of an io_context: links that wait for a unix or
// hybrid-vsock socket file to appear (the VMM creates it as the VM starts) register here, the
// watcher keeps one watch per directory, counted by its waiters, and wakes the links whose file
// was created. One fd per link would run into the default limit of 128 inotify instances per
// user, after which further guests silently lost their watch.
//
// An Asio service (asio::use_service on the link's execution context) rather than an object
// passed in through guest_link_options: every link on an io_context finds the same one without
// its owner wiring anything, links on different io_contexts (threads) never share one, and it
// lives exactly as long as the io_context whose descriptor it owns.
//
// Threading: the io_context must be run by one thread, as guest_link requires.
#pragma once

#include <array>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/execution_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/error_code.hpp>

namespace stereos::link {

class socket_file_watcher : public boost::asio::execution_context::service {
  public:
    enum class news : unsigned char {
        nothing,
        file_appeared,  // created, moved in, or its attributes changed (a chown after the bind)
        watch_gone,     // the directory went, or the watcher failed: wait by the timer alone
    };

    // One link's interest in one file, owned by the link and registered while it waits. The
    // watcher records the news and cancels `wake` (a timer used as a condition variable).
    struct waiter {
        explicit waiter(boost::asio::steady_timer& to_wake) : wake(&to_wake) {}
        waiter(const waiter&) = delete;
        waiter& operator=(const waiter&) = delete;
        ~waiter() = default;

        boost::asio::steady_timer* wake;
        std::string name;  // the file's name in its directory
        news result = news::nothing;
        int watch = -1;  // the directory's watch while registered
    };

    static boost::asio::execution_context::id id;

    explicit socket_file_watcher(boost::asio::execution_context& context)
        : boost::asio::execution_context::service(context) {}
    ~socket_file_watcher() override;

    // Registers `w` for the file at the absolute `path`; `executor` (one of this context's) runs
    // the watcher's reads if it has to open its instance. False when no watch can be made (no
    // inotify instance, the directory does not exist yet, the watch limit): the caller falls
    // back to its timer.
    bool watch(const boost::asio::any_io_executor& executor, std::string_view path, waiter& w);
    // Unregisters `w` (a no-op when it is not registered); the last waiter of a directory
    // removes its watch, and the last of all leaves nothing pending on the io_context.
    void unwatch(waiter& w);

    // Inotify instances this watcher holds (0 or 1) and directories it watches: for tests.
    std::size_t instances() const noexcept { return descriptor_ ? 1 : 0; }
    std::size_t watched_directories() const noexcept { return directories_.size(); }

  private:
    void shutdown() override;
    bool open(const boost::asio::any_io_executor& executor);
    void start_read();
    void on_read(boost::system::error_code error, std::size_t size);
    void dispatch(std::string_view events);
    void tell(waiter& w, news what);
    // Every waiter of the directory `watch` (of all, for -1) learns `what` and is unregistered.
    void release(int watch, news what);

    std::optional<boost::asio::posix::stream_descriptor> descriptor_;
    std::unordered_map<int, std::vector<waiter*>> directories_;  // by watch descriptor
    bool reading_ = false;
    // Room for one event with the longest name, and usually a few.
    std::array<char, 4096> buffer_{};
};

}  // namespace stereos::link
