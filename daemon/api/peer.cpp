#include "daemon/api/peer.hpp"

#include <grp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <vector>

#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace {

bool is_owner(uid_t uid, uid_t daemon_uid) {
    return uid == 0 || uid == daemon_uid;
}

// The "Groups:" line of /proc/PID/status; nothing if the process or the line is not there.
std::optional<std::vector<gid_t>> process_groups_of(pid_t pid) {
    if (pid <= 0)
        return std::nullopt;
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(status, line)) {
        if (!line.starts_with("Groups:"))
            continue;
        std::istringstream listed(line.substr(7));
        std::vector<gid_t> groups;
        gid_t gid = 0;
        while (listed >> gid)
            groups.push_back(gid);
        return groups;
    }
    return std::nullopt;
}

bool contains(const std::vector<gid_t>& groups, gid_t wanted) {
    return std::find(groups.begin(), groups.end(), wanted) != groups.end();
}

bool in_group(const peer_facts& peer, const user_record& user, gid_t wanted) {
    if (peer.credentials.gid == wanted)
        return true;
    if (peer.process_groups)
        return contains(*peer.process_groups, wanted);
    // The process is not visible (another PID namespace): its user's groups.
    return user.groups && contains(*user.groups, wanted);
}

}  // namespace

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

std::optional<peer_credentials> peer_credentials_of(int socket_fd) {
    ucred cred{};
    socklen_t size = sizeof cred;
    if (getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) != 0)
        return std::nullopt;
    return peer_credentials{cred.pid, cred.uid, cred.gid};
}

std::optional<peer_facts> peer_facts_of(int socket_fd, bool groups_matter) {
    const auto credentials = peer_credentials_of(socket_fd);
    if (!credentials)
        return std::nullopt;
    peer_facts facts{*credentials, std::nullopt};
    if (groups_matter && !is_owner(credentials->uid, ::geteuid()))
        facts.process_groups = process_groups_of(credentials->pid);
    return facts;
}

api::peer_access access_for(const peer_facts& peer, const user_record& user, uid_t daemon_uid,
                            std::optional<gid_t> group, std::optional<gid_t> read_group) {
    const bool owner = is_owner(peer.credentials.uid, daemon_uid);
    const bool writer = owner || (group && in_group(peer, user, *group));
    const bool reader = writer || (read_group && in_group(peer, user, *read_group));
    api::peer_access access{reader, writer, owner, peer.credentials};
    if (user.name)
        access.peer_user = *user.name;
    return access;
}

boost::asio::awaitable<api::peer_access> access_of(const std::optional<peer_facts>& peer,
                                                   user_lookup_cache& users,
                                                   const std::optional<gid_t>& group,
                                                   const std::optional<gid_t>& read_group) {
    if (!peer)
        co_return api::peer_access{};
    const user_record user = co_await users.find(peer->credentials.uid);
    co_return access_for(*peer, user, ::geteuid(), group, read_group);
}

}  // namespace stereos::daemon
