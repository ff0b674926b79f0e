#include "daemon/fd_store.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iterator>

#include <systemd/sd-daemon.h>
#include <boost/algorithm/hex.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace stereos::daemon::fd_store {

namespace json = boost::json;

namespace {
constexpr std::string_view links_name = "guest-links";
constexpr std::string_view sockets_name = "guest-sockets";
constexpr int format_version = 2;
// The kernel's limit of fds in one SCM_RIGHTS message (SCM_MAX_FD).
constexpr std::size_t fds_per_message = 253;
// systemd reads notifications in order; this bounds the wait for it to have read ours.
constexpr auto barrier_timeout = std::chrono::seconds(5);

void close_fd(int fd) {
    if (fd >= 0)
        ::close(fd);
}

std::string errno_text(int error) {
    return std::strerror(error);
}

// The whole content of a memfd passed from the previous process (its offset is shared).
std::optional<std::string> read_all(int fd) {
    std::string text;
    std::array<char, 65536> chunk;
    off_t offset = 0;
    while (true) {
        const auto n = ::pread(fd, chunk.data(), chunk.size(), offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return std::nullopt;
        if (n == 0)
            return text;
        text.append(chunk.data(), static_cast<std::size_t>(n));
        offset += n;
    }
}

// The guest closed its side (or the socket failed) while no daemon read it.
bool hung_up(int fd) {
    pollfd p{fd, POLLRDHUP, 0};
    if (::poll(&p, 1, 0) < 0)
        return false;
    return (p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL)) != 0;
}

// Takes `name` out of the store: its fds stay open in systemd until then.
void remove_from_store(std::string_view name) {
    const auto message = "FDSTOREREMOVE=1\nFDNAME=" + std::string(name);
    sd_notify(0, message.c_str());
}

// Sends `fds` through `carrier` in as few messages as the kernel allows; returns how many went
// (a full buffer stops it: the rest stay with the caller).
std::size_t send_fds(int carrier, const std::vector<int>& fds, std::string& problem) {
    std::size_t sent = 0;
    while (sent < fds.size()) {
        const auto n = std::min(fds_per_message, fds.size() - sent);
        std::vector<char> control(CMSG_SPACE(sizeof(int) * n));
        char byte = 0;
        iovec iov{&byte, 1};
        msghdr message{};
        message.msg_iov = &iov;
        message.msg_iovlen = 1;
        message.msg_control = control.data();
        message.msg_controllen = control.size();
        auto* header = CMSG_FIRSTHDR(&message);
        header->cmsg_level = SOL_SOCKET;
        header->cmsg_type = SCM_RIGHTS;
        header->cmsg_len = CMSG_LEN(sizeof(int) * n);
        std::memcpy(CMSG_DATA(header), fds.data() + sent, sizeof(int) * n);
        if (::sendmsg(carrier, &message, MSG_DONTWAIT | MSG_NOSIGNAL) != 1) {
            if (errno == EINTR)
                continue;
            problem = "cannot pass guest connections on: " + errno_text(errno);
            break;
        }
        sent += n;
    }
    return sent;
}

// Every fd waiting in `carrier`, in the order sent.
std::vector<int> receive_fds(int carrier) {
    std::vector<int> fds;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds_per_message));
    while (true) {
        char byte = 0;
        iovec iov{&byte, 1};
        msghdr message{};
        message.msg_iov = &iov;
        message.msg_iovlen = 1;
        message.msg_control = control.data();
        message.msg_controllen = control.size();
        const auto n = ::recvmsg(carrier, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return fds;
        for (auto* c = CMSG_FIRSTHDR(&message); c; c = CMSG_NXTHDR(&message, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            const auto count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (std::size_t i = 0; i < count; ++i) {
                int fd = -1;
                std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                fds.push_back(fd);
            }
        }
    }
}
}  // namespace

std::string describe(const adoptable_connections& connections) {
    json::array links;
    for (const auto& [name, handed] : connections) {
        std::string hex;
        boost::algorithm::hex(handed.connection.unread().begin(), handed.connection.unread().end(),
                              std::back_inserter(hex));
        links.push_back(
            json::object{{"guest", name}, {"endpoint", handed.endpoint}, {"unread_hex", hex}});
    }
    return json::serialize(json::object{{"version", format_version}, {"links", std::move(links)}});
}

std::optional<std::vector<described_link>> parse_description(std::string_view text,
                                                             std::string& problem) {
    boost::system::error_code ec;
    auto value = json::parse(text, ec);
    const auto* top = value.if_object();
    const auto* version = top ? top->if_contains("version") : nullptr;
    const auto* links = top ? top->if_contains("links") : nullptr;
    if (ec || !version || !version->is_int64()) {
        problem = "the description of the handed-over connections is unreadable";
        return std::nullopt;
    }
    if (version->as_int64() != format_version) {
        problem = "the handed-over connections are described in format " +
                  std::to_string(version->as_int64()) + ", this daemon reads format " +
                  std::to_string(format_version);
        return std::nullopt;
    }
    if (!links || !links->is_array()) {
        problem = "the description of the handed-over connections is unreadable";
        return std::nullopt;
    }
    std::vector<described_link> out;
    for (const auto& entry : links->as_array()) {
        const auto* fields = entry.if_object();
        const auto* guest = fields ? fields->if_contains("guest") : nullptr;
        const auto* endpoint = fields ? fields->if_contains("endpoint") : nullptr;
        const auto* unread = fields ? fields->if_contains("unread_hex") : nullptr;
        if (!guest || !guest->is_string() || !endpoint || !endpoint->is_string() || !unread ||
            !unread->is_string()) {
            problem = "the description of handed-over connection " + std::to_string(out.size()) +
                      " is incomplete";
            return std::nullopt;
        }
        described_link link{
            std::string(guest->as_string()), std::string(endpoint->as_string()), {}};
        try {
            const auto& hex = unread->as_string();
            boost::algorithm::unhex(hex.begin(), hex.end(), std::back_inserter(link.unread));
        } catch (const std::exception&) {
            problem =
                "the unread bytes of the connection to guest \"" + link.guest + "\" are not hex";
            return std::nullopt;
        }
        out.push_back(std::move(link));
    }
    return out;
}

bool available() {
    const char* socket = std::getenv("NOTIFY_SOCKET");
    return socket && *socket;
}

passed_fds take_passed_fds() {
    passed_fds passed;
    char** names = nullptr;
    const int count = sd_listen_fds_with_names(1, &names);
    std::vector<std::string> taken;  // names to take out of the store
    int links_fd = -1;
    int sockets_fd = -1;
    for (int i = 0; i < count; ++i) {
        const int fd = SD_LISTEN_FDS_START + i;
        const std::string_view name = names ? names[i] : "unknown";
        // An unnamed single fd (systemd-socket-activate without --fdname) is the API too.
        const bool is_api = name == "api" || (count == 1 && name == "unknown");
        if (is_api && !passed.api && sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0) > 0) {
            passed.api = fd;
            continue;
        }
        ::fcntl(fd, F_SETFD, FD_CLOEXEC);
        if (name == links_name && links_fd < 0) {
            links_fd = fd;
        } else if (name == sockets_name && sockets_fd < 0) {
            sockets_fd = fd;
        } else {
            passed.problems.push_back(
                "closed a file descriptor systemd passed under the "
                "unexpected name \"" +
                std::string(name) + "\"");
            close_fd(fd);
        }
        // Out of the store, or it comes back at every start and its peer never sees it
        // closed. (A socket unit's fds are not in the store: removing them does nothing.)
        if (name != "unknown" && std::find(taken.begin(), taken.end(), name) == taken.end())
            taken.emplace_back(name);
    }
    if (names) {
        for (int i = 0; i < count; ++i)
            std::free(names[i]);
        std::free(names);
    }
    for (const auto& name : taken)
        remove_from_store(name);
    if (links_fd < 0 && sockets_fd < 0)
        return passed;

    const auto sockets = sockets_fd >= 0 ? receive_fds(sockets_fd) : std::vector<int>{};
    close_fd(sockets_fd);
    std::optional<std::vector<described_link>> described;
    std::string problem;
    if (links_fd < 0) {
        problem = "the description of the handed-over connections is missing";
    } else if (auto text = read_all(links_fd)) {
        described = parse_description(*text, problem);
    } else {
        problem =
            "cannot read the description of the handed-over connections: " + errno_text(errno);
    }
    close_fd(links_fd);
    if (described && described->size() != sockets.size()) {
        problem = "the previous process described " + std::to_string(described->size()) +
                  " connections and handed over " + std::to_string(sockets.size());
        described.reset();
    }
    if (!described) {
        passed.problems.push_back(problem + "; closed " + std::to_string(sockets.size()) +
                                  " guest connections, which reconnect");
        for (const int fd : sockets)
            close_fd(fd);
        return passed;
    }
    for (std::size_t i = 0; i < sockets.size(); ++i) {
        auto& link = (*described)[i];
        if (passed.connections.contains(link.guest)) {
            passed.problems.push_back("closed a second handed-over connection to guest \"" +
                                      link.guest + "\"");
            close_fd(sockets[i]);
        } else if (hung_up(sockets[i])) {
            passed.problems.push_back("closed the handed-over connection to guest \"" + link.guest +
                                      "\": the guest hung up meanwhile");
            close_fd(sockets[i]);
        } else {
            passed.connections.emplace(
                link.guest,
                adoptable_connection{link.endpoint, link::handed_over_connection(
                                                        sockets[i], std::move(link.unread))});
        }
    }
    return passed;
}

std::size_t store(adoptable_connections connections, std::vector<std::string>& problems) {
    if (connections.empty())
        return 0;
    // The sockets first: those that do not fit are left out of the description too.
    std::array<int, 2> carrier{-1, -1};
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, carrier.data()) != 0) {
        problems.push_back("cannot create the socket pair for the connections: " +
                           errno_text(errno));
        return 0;
    }
    // Room for many messages (the kernel caps it at net.core.wmem_max): nobody reads the pair
    // before the next process, so a full buffer leaves the rest out.
    const int buffer_size = 4 << 20;
    ::setsockopt(carrier[0], SOL_SOCKET, SO_SNDBUF, &buffer_size, sizeof buffer_size);
    std::vector<int> fds;
    fds.reserve(connections.size());
    for (const auto& [name, handed] : connections)
        fds.push_back(handed.connection.fd());
    std::string problem;
    const auto sent = send_fds(carrier[0], fds, problem);
    close_fd(carrier[0]);
    if (sent < connections.size()) {
        problems.push_back(problem + "; " + std::to_string(connections.size() - sent) +
                           " connections are closed instead");
        connections.erase(std::next(connections.begin(), static_cast<std::ptrdiff_t>(sent)),
                          connections.end());
    }

    const auto text = describe(connections);
    const int links_fd = ::memfd_create("stereos-hostd-guest-links", MFD_CLOEXEC);
    bool written = links_fd >= 0;
    for (std::size_t done = 0; written && done < text.size();) {
        const auto n = ::write(links_fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR)
            continue;
        written = n > 0;
        done += written ? static_cast<std::size_t>(n) : 0;
    }
    if (!written) {
        problems.push_back("cannot write the memfd describing the connections: " +
                           errno_text(errno));
        close_fd(links_fd);
        close_fd(carrier[1]);
        return 0;
    }
    // The description first: a process that finds the sockets without it closes them.
    int fd = links_fd;
    const auto links_message = "FDSTORE=1\nFDNAME=" + std::string(links_name);
    const int sent_links = sd_pid_notify_with_fds(0, 0, links_message.c_str(), &fd, 1);
    close_fd(links_fd);
    fd = carrier[1];
    const auto sockets_message = "FDSTORE=1\nFDPOLL=0\nFDNAME=" + std::string(sockets_name);
    const int sent_sockets =
        sent_links > 0 ? sd_pid_notify_with_fds(0, 0, sockets_message.c_str(), &fd, 1) : 0;
    close_fd(carrier[1]);
    if (sent_links <= 0 || sent_sockets <= 0) {
        const int error = sent_links <= 0 ? sent_links : sent_sockets;
        problems.push_back("cannot hand the connections to systemd: " +
                           (error < 0 ? errno_text(-error) : "no notification socket"));
        return 0;
    }
    // systemd reads our notifications before it handles our exit only if it got to them: wait.
    const auto timeout_usec = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(barrier_timeout).count());
    if (const int r = sd_notify_barrier(0, timeout_usec); r < 0)
        problems.push_back("systemd did not confirm it has read the connections: " +
                           errno_text(-r));
    return connections.size();
}

}  // namespace stereos::daemon::fd_store
