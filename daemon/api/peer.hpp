// Who is on the other end of an API connection (SO_PEERCRED) and what that peer may do: root
// and the daemon's user everything, members of api_group every route, members of
// api_read_group the GET routes. What the kernel says (credentials, the process's groups) is
// read when the connection is accepted; what the user database says (the user's name and
// groups, which may ask LDAP or sssd) comes from a user_lookup_cache, off the daemon's thread.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/awaitable.hpp>

#include "daemon/api/routes.hpp"
#include "daemon/api/user_lookup_cache.hpp"

namespace stereos::daemon {

using api::peer_credentials;
std::optional<peer_credentials> peer_credentials_of(int socket_fd);

// What the kernel says about the peer of a connection when it is accepted.
struct peer_facts {
    peer_credentials credentials;
    // Its process's supplementary groups (/proc/PID/status); nothing when they do not matter,
    // or the process is not visible (another PID namespace): then its user's groups count.
    std::optional<std::vector<gid_t>> process_groups;
};
// Nothing if SO_PEERCRED fails. The process's groups are read only if `groups_matter` (an API
// group is configured) and the peer is not root or the daemon's user.
std::optional<peer_facts> peer_facts_of(int socket_fd, bool groups_matter);

// The gid of group `name`; nothing for "" or a group that does not exist (logged, naming the
// config `key`). At start-up.
std::optional<gid_t> lookup_group(const std::string& name, std::string_view key);

// What the peer may do, from what the kernel and the user database said: a member of a group by
// its primary group, else its process's groups, else (process not visible) its user's groups.
// A user whose lookup failed is in no group (fail closed). Pure.
api::peer_access access_for(const peer_facts& peer, const user_record& user, uid_t daemon_uid,
                            std::optional<gid_t> group, std::optional<gid_t> read_group);

// access_for, once `users` has answered for the peer's uid; nothing at all without a peer.
// Await it at once: it keeps references.
boost::asio::awaitable<api::peer_access> access_of(const std::optional<peer_facts>& peer,
                                                   user_lookup_cache& users,
                                                   const std::optional<gid_t>& group,
                                                   const std::optional<gid_t>& read_group);

}  // namespace stereos::daemon
