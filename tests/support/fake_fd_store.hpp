// systemd's side of sd_notify for tests: a real NOTIFY_SOCKET that keeps every datagram and the
// fds a process stores with FDSTORE=1, by FDNAME, as systemd's fd store holds them (answering
// BARRIER=1 by closing its fd).
#pragma once

#include <chrono>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace stereos::testing {

class fake_fd_store {
  public:
    explicit fake_fd_store(const std::filesystem::path& path);
    ~fake_fd_store();
    fake_fd_store(const fake_fd_store&) = delete;
    fake_fd_store& operator=(const fake_fd_store&) = delete;

    // Reads every datagram that comes within `quiet` of the last one.
    void drain(std::chrono::milliseconds quiet);
    // Closes the stored fds (as systemd flushes its store).
    void flush();

    std::vector<std::string> messages;
    std::multimap<std::string, int> stored;  // FDNAME -> fd

  private:
    void receive_one();
    int fd_ = -1;
};

// The whole content of a memfd (or any file) read from its start.
std::string memfd_text(int fd);

}  // namespace stereos::testing
