// systemd's side of sd_notify for tests: a real NOTIFY_SOCKET, read continuously on a thread of
// its own as systemd reads it (a datagram queue holds about ten messages: a reader that waited
// would block the daemon), keeping every message and the fds a process stores with FDSTORE=1,
// by FDNAME, as systemd's fd store holds them. BARRIER=1 is answered by closing its fd.
#pragma once

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace stereos::testing {

class fake_fd_store {
  public:
    explicit fake_fd_store(const std::filesystem::path& path);
    ~fake_fd_store();
    fake_fd_store(const fake_fd_store&) = delete;
    fake_fd_store& operator=(const fake_fd_store&) = delete;

    // Returns once no message has come for `quiet`.
    void wait_quiet(std::chrono::milliseconds quiet) const;
    // Copies; the fds stay the store's until flush().
    std::vector<std::string> messages() const;
    std::multimap<std::string, int> stored() const;
    void clear_messages();
    // Closes the stored fds (as systemd flushes its store on stop).
    void flush();

  private:
    void read_loop();
    void receive_one();

    int fd_ = -1;
    mutable std::mutex mutex_;
    std::vector<std::string> messages_;
    std::multimap<std::string, int> stored_;
    std::chrono::steady_clock::time_point last_message_;
    std::atomic<bool> stopping_{false};
    std::thread reader_;
};

// The whole content of a memfd (or any file) read from its start.
std::string memfd_text(int fd);

}  // namespace stereos::testing
