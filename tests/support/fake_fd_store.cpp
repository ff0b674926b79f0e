#include "tests/support/fake_fd_store.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace stereos::testing {

fake_fd_store::fake_fd_store(const std::filesystem::path& path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0)
        throw std::runtime_error("cannot bind the notification socket " + path.string() + ": " +
                                 std::strerror(errno));
    last_message_ = std::chrono::steady_clock::now();
    reader_ = std::thread([this] { read_loop(); });
}

fake_fd_store::~fake_fd_store() {
    stopping_ = true;
    reader_.join();
    ::close(fd_);
    flush();
}

void fake_fd_store::read_loop() {
    while (!stopping_) {
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, 20) > 0)
            receive_one();
    }
}

void fake_fd_store::wait_quiet(std::chrono::milliseconds quiet) const {
    while (true) {
        std::chrono::steady_clock::time_point last;
        {
            std::lock_guard lock(mutex_);
            last = last_message_;
        }
        const auto now = std::chrono::steady_clock::now();
        if (now - last >= quiet)
            return;
        std::this_thread::sleep_for(quiet - (now - last));
    }
}

std::vector<std::string> fake_fd_store::messages() const {
    std::lock_guard lock(mutex_);
    return messages_;
}

std::multimap<std::string, int> fake_fd_store::stored() const {
    std::lock_guard lock(mutex_);
    return stored_;
}

void fake_fd_store::clear_messages() {
    std::lock_guard lock(mutex_);
    messages_.clear();
}

void fake_fd_store::flush() {
    std::lock_guard lock(mutex_);
    for (auto& [name, fd] : stored_)
        ::close(fd);
    stored_.clear();
}

void fake_fd_store::receive_one() {
    std::array<char, 4096> buffer{};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int) * 16)> control{};
    iovec iov{buffer.data(), buffer.size()};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const auto n = ::recvmsg(fd_, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n <= 0)
        return;
    std::string text(buffer.data(), static_cast<std::size_t>(n));
    std::vector<int> fds;
    for (auto* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
            const auto count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                fds.push_back(fd);
            }
        }
    }
    const auto name_at = text.find("FDNAME=");
    const auto name = name_at == std::string::npos
                          ? std::string("stored")
                          : text.substr(name_at + 7, text.find('\n', name_at) - name_at - 7);
    std::lock_guard lock(mutex_);
    if (text.find("FDSTORE=1") != std::string::npos) {
        for (int fd : fds)
            stored_.emplace(name, fd);
    } else {
        for (int fd : fds)
            ::close(fd);  // BARRIER=1's fd: closing it answers the barrier
    }
    messages_.push_back(std::move(text));
    last_message_ = std::chrono::steady_clock::now();
}

std::string memfd_text(int fd) {
    std::string text;
    char chunk[4096];
    off_t offset = 0;
    for (ssize_t n; (n = ::pread(fd, chunk, sizeof chunk, offset)) > 0; offset += n)
        text.append(chunk, static_cast<std::size_t>(n));
    return text;
}

}  // namespace stereos::testing
