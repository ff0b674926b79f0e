#include "daemon/fd_store.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <unistd.h>

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
constexpr std::string_view socket_prefix = "guest.";
constexpr int format_version = 1;
// systemd reads notifications in order; this bounds the wait for it to have read ours.
constexpr auto barrier_timeout = std::chrono::seconds(5);

void close_fd(int fd) {
    if (fd >= 0)
        ::close(fd);
}

// The whole content of a memfd passed from the previous process (its offset is shared).
std::optional<std::string> read_all(int fd) {
    std::string text;
    char chunk[65536];
    off_t offset = 0;
    while (true) {
        const auto n = ::pread(fd, chunk, sizeof chunk, offset);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return std::nullopt;
        if (n == 0)
            return text;
        text.append(chunk, static_cast<std::size_t>(n));
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
}  // namespace

std::string describe(const adoptable_connections& connections) {
    json::object links;
    for (const auto& [name, handed] : connections) {
        std::string hex;
        boost::algorithm::hex(handed.connection.unread().begin(), handed.connection.unread().end(),
                              std::back_inserter(hex));
        links[name] = json::object{{"endpoint", handed.endpoint}, {"unread_hex", hex}};
    }
    return json::serialize(json::object{{"version", format_version}, {"links", std::move(links)}});
}

std::optional<std::map<std::string, described_link, std::less<>>> parse_description(
    std::string_view text, std::string& problem) {
    boost::system::error_code ec;
    auto value = json::parse(text, ec);
    const auto* top = value.if_object();
    const auto* version = top ? top->if_contains("version") : nullptr;
    const auto* links = top ? top->if_contains("links") : nullptr;
    if (ec || !version || !version->is_int64() || !links || !links->is_object()) {
        problem = "the description of the handed-over connections is unreadable";
        return std::nullopt;
    }
    if (version->as_int64() != format_version) {
        problem = "the handed-over connections are described in format " +
                  std::to_string(version->as_int64()) + ", this daemon reads format " +
                  std::to_string(format_version);
        return std::nullopt;
    }
    std::map<std::string, described_link, std::less<>> out;
    for (const auto& [name, entry] : links->as_object()) {
        const auto* fields = entry.if_object();
        const auto* endpoint = fields ? fields->if_contains("endpoint") : nullptr;
        const auto* unread = fields ? fields->if_contains("unread_hex") : nullptr;
        if (!endpoint || !endpoint->is_string() || !unread || !unread->is_string()) {
            problem = "the description of the connection to guest \"" + std::string(name) +
                      "\" is incomplete";
            return std::nullopt;
        }
        described_link link{std::string(endpoint->as_string()), {}};
        try {
            const auto& hex = unread->as_string();
            boost::algorithm::unhex(hex.begin(), hex.end(), std::back_inserter(link.unread));
        } catch (const std::exception&) {
            problem = "the unread bytes of the connection to guest \"" + std::string(name) +
                      "\" are not hex";
            return std::nullopt;
        }
        out.emplace(std::string(name), std::move(link));
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
    std::map<std::string, int, std::less<>> sockets;
    std::vector<std::string> unexpected;
    int links_fd = -1;
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
        if (name.starts_with(socket_prefix) &&
            !sockets.contains(name.substr(socket_prefix.size()))) {
            sockets.emplace(std::string(name.substr(socket_prefix.size())), fd);
        } else if (name == links_name && links_fd < 0) {
            links_fd = fd;
        } else {
            passed.problems.push_back(
                "closed a file descriptor systemd passed under the "
                "unexpected name \"" +
                std::string(name) + "\"");
            close_fd(fd);
            // Out of the store too, or it comes back at every start and its peer never sees
            // it closed. (A socket unit's fds are not in the store: removing them does nothing.)
            if (name != "unknown")
                unexpected.emplace_back(name);
        }
    }
    if (names) {
        for (int i = 0; i < count; ++i)
            std::free(names[i]);
        std::free(names);
    }
    for (const auto& name : unexpected)
        remove_from_store(name);
    if (sockets.empty() && links_fd < 0)
        return passed;

    // Out of the store at once: from now on this process alone holds them.
    for (const auto& [guest, fd] : sockets)
        remove_from_store(std::string(socket_prefix) + guest);
    if (links_fd >= 0)
        remove_from_store(links_name);

    std::optional<std::map<std::string, described_link, std::less<>>> described;
    std::string problem;
    if (links_fd < 0) {
        problem = "the description of the handed-over connections is missing";
    } else if (auto text = read_all(links_fd)) {
        described = parse_description(*text, problem);
    } else {
        problem = std::string("cannot read the description of the handed-over connections: ") +
                  std::strerror(errno);
    }
    close_fd(links_fd);
    if (!described) {
        passed.problems.push_back(problem + "; closed " + std::to_string(sockets.size()) +
                                  " guest connections, which reconnect");
        for (const auto& [guest, fd] : sockets)
            close_fd(fd);
        return passed;
    }
    for (const auto& [guest, fd] : sockets) {
        auto link = described->find(guest);
        if (link == described->end()) {
            passed.problems.push_back("closed the handed-over connection to guest \"" + guest +
                                      "\": it is not described");
            close_fd(fd);
        } else if (hung_up(fd)) {
            passed.problems.push_back("closed the handed-over connection to guest \"" + guest +
                                      "\": the guest hung up meanwhile");
            close_fd(fd);
        } else {
            passed.connections.emplace(
                guest, adoptable_connection{
                           link->second.endpoint,
                           link::handed_over_connection(fd, std::move(link->second.unread))});
        }
    }
    return passed;
}

std::size_t store(adoptable_connections connections, std::vector<std::string>& problems) {
    if (connections.empty())
        return 0;
    const auto text = describe(connections);
    const int links_fd = ::memfd_create("stereos-hostd-guest-links", MFD_CLOEXEC);
    if (links_fd < 0) {
        problems.push_back(std::string("cannot create the memfd describing the connections: ") +
                           std::strerror(errno));
        return 0;
    }
    std::size_t written = 0;
    while (written < text.size()) {
        const auto n = ::write(links_fd, text.data() + written, text.size() - written);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            problems.push_back(std::string("cannot write the memfd describing the connections: ") +
                               std::strerror(errno));
            ::close(links_fd);
            return 0;
        }
        written += static_cast<std::size_t>(n);
    }
    int fd = links_fd;
    const auto links_message = "FDSTORE=1\nFDNAME=" + std::string(links_name);
    const int sent_links = sd_pid_notify_with_fds(0, 0, links_message.c_str(), &fd, 1);
    ::close(links_fd);
    if (sent_links <= 0) {
        problems.push_back(
            "cannot hand the connections to systemd: " +
            std::string(sent_links < 0 ? std::strerror(-sent_links) : "no notification socket"));
        return 0;
    }
    std::size_t stored = 0;
    for (auto& [guest, handed] : connections) {
        fd = handed.connection.fd();
        const auto message = "FDSTORE=1\nFDNAME=" + std::string(socket_prefix) + guest;
        const int sent = sd_pid_notify_with_fds(0, 0, message.c_str(), &fd, 1);
        if (sent > 0) {
            ++stored;
        } else {
            problems.push_back("cannot hand the connection to guest \"" + guest +
                               "\" to systemd: " + std::strerror(-sent));
        }
    }
    // systemd reads our notifications before it handles our exit only if it got to them: wait.
    const auto timeout_usec = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(barrier_timeout).count());
    if (const int r = sd_notify_barrier(0, timeout_usec); r < 0)
        problems.push_back(std::string("systemd did not confirm it has read the connections: ") +
                           std::strerror(-r));
    return stored;
}

}  // namespace stereos::daemon::fd_store
