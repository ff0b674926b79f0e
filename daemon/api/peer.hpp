// Who is on the other end of an API connection (SO_PEERCRED) and what that peer may do: root
// and the daemon's user everything, members of api_group every route, members of
// api_read_group the GET routes.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>

#include "daemon/api/routes.hpp"

namespace stereos::daemon {

using api::peer_credentials;
std::optional<peer_credentials> peer_credentials_of(int socket_fd);
// The name of user `uid`, or nothing if it does not resolve.
std::optional<std::string> user_name_of(uid_t uid);
// Whether the peer is in `group`: its primary group, else its supplementary groups from
// /proc/PID/status, else (no such process visible) the groups of its user.
bool peer_in_group(const peer_credentials& peer, gid_t group);
// The gid of group `name`; nothing for "" or a group that does not exist (logged, naming the
// config `key`).
std::optional<gid_t> lookup_group(const std::string& name, std::string_view key);
// What the peer on `socket_fd` may do; nothing at all if SO_PEERCRED fails.
api::peer_access access_of(int socket_fd, std::optional<gid_t> group,
                           std::optional<gid_t> read_group);

}  // namespace stereos::daemon
