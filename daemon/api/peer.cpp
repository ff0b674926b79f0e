#include "daemon/api/peer.hpp"

#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "daemon/logging.hpp"

namespace stereos::daemon {

std::optional<gid_t> lookup_group(const std::string& name, std::string_view key) {
    if (name.empty())
        return std::nullopt;
    std::vector<char> buffer(16384);
    group entry{};
    group* found = nullptr;
    const int rc = getgrnam_r(name.c_str(), &entry, buffer.data(), buffer.size(), &found);
    if (rc != 0 || found == nullptr) {
        log::warning(std::string(key) + " \"" + name +
                     "\" does not exist: the API is restricted to root and the daemon's user");
        return std::nullopt;
    }
    return found->gr_gid;
}

std::optional<std::string> user_name_of(uid_t uid) {
    std::vector<char> buffer(16384);
    passwd entry{};
    passwd* found = nullptr;
    if (getpwuid_r(uid, &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
        return std::nullopt;
    return std::string(found->pw_name);
}

std::optional<peer_credentials> peer_credentials_of(int socket_fd) {
    ucred cred{};
    socklen_t size = sizeof cred;
    if (getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0)
        return std::nullopt;
    return peer_credentials{cred.pid, cred.uid, cred.gid};
}

bool peer_in_group(const peer_credentials& peer, gid_t wanted) {
    if (peer.gid == wanted)
        return true;
    if (peer.pid > 0) {
        std::ifstream status("/proc/" + std::to_string(peer.pid) + "/status");
        std::string line;
        while (std::getline(status, line)) {
            if (!line.starts_with("Groups:"))
                continue;
            std::istringstream groups(line.substr(7));
            gid_t gid = 0;
            while (groups >> gid) {
                if (gid == wanted)
                    return true;
            }
            return false;
        }
    }
    // The process is not visible (another PID namespace): fall back to its user's groups.
    std::vector<char> buffer(16384);
    passwd entry{};
    passwd* found = nullptr;
    if (getpwuid_r(peer.uid, &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
        return false;
    int count = 64;
    std::vector<gid_t> groups(static_cast<std::size_t>(count));
    if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0) {
        groups.resize(static_cast<std::size_t>(count));
        if (getgrouplist(found->pw_name, found->pw_gid, groups.data(), &count) < 0)
            return false;
    }
    groups.resize(static_cast<std::size_t>(count));
    return std::find(groups.begin(), groups.end(), wanted) != groups.end();
}

api::peer_access access_of(int socket_fd, std::optional<gid_t> group,
                           std::optional<gid_t> read_group) {
    const auto peer = peer_credentials_of(socket_fd);
    if (!peer)
        return {};
    const bool owner = peer->uid == 0 || peer->uid == ::geteuid();
    const bool writer = owner || (group && peer_in_group(*peer, *group));
    const bool reader = writer || (read_group && peer_in_group(*peer, *read_group));
    api::peer_access access{reader, writer, owner, *peer};
    if (auto name = user_name_of(peer->uid))
        access.peer_user = std::move(*name);
    return access;
}

}  // namespace stereos::daemon
