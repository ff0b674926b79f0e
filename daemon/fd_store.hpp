// Guest connections across a daemon restart, through systemd's file descriptor store. systemd
// 252 compares each fd stored with every one already there, so storing one fd per guest costs
// time quadratic in the guests (8.6 s for 4000): instead, on stop the guests' sockets travel
// in SCM_RIGHTS messages into a socket pair, whose receiving end alone goes to the store
// ("guest-sockets", FDPOLL=0: its closed peer must not make systemd drop it), with one memfd
// ("guest-links") listing, in the same order, each connection's guest, endpoint and the bytes
// read from it but not yet framed. systemd passes both to the next process
// (sd_listen_fds_with_names), which takes them out of the store at once, so that closing a
// connection later reaches its guest. `systemctl stop` flushes the store: the guests then see
// their connections close, as without it.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "daemon/guest/guest_registry.hpp"

namespace stereos::daemon::fd_store {

// What systemd passed at start.
struct passed_fds {
    std::optional<int> api;             // the API's listening socket (socket activation)
    adoptable_connections connections;  // guest connections from the store, not hung up
    std::vector<std::string> problems;  // fds closed, and why; for the log
};
passed_fds take_passed_fds();

// A process can store fds only where systemd's notification socket is set.
bool available();

// Hands the connections to the store, then waits (bounded) until systemd has read them.
// Returns how many were sent; `problems` gets what could not be.
std::size_t store(adoptable_connections connections, std::vector<std::string>& problems);

// The memfd's text for `connections` in their order (no fds), and its reading: for tests.
std::string describe(const adoptable_connections& connections);
struct described_link {
    std::string guest;
    std::string endpoint;
    std::string unread;
};
// nullopt, with `problem` set, when the text is not one describe() wrote.
std::optional<std::vector<described_link>> parse_description(std::string_view text,
                                                             std::string& problem);

}  // namespace stereos::daemon::fd_store
