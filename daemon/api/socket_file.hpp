// The API's socket file: created owner-only, then given its group and mode; a stale one (no
// process answers on it) is replaced, a live one or a non-socket never is; removed at stop only
// if it is still the one we created.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>

#include <boost/asio/local/stream_protocol.hpp>

namespace stereos::daemon {

// Binds and listens `acceptor` on `path`: mode 0660 with `group` (named `group_name` in
// messages), else 0600. Returns the file's inode. Throws std::runtime_error on failure.
ino_t create_api_socket_file(boost::asio::local::stream_protocol::acceptor& acceptor,
                             const std::filesystem::path& path, std::optional<gid_t> group,
                             const std::string& group_name);

// Removes `path` if it is still the socket file with inode `inode`.
void remove_api_socket_file(const std::filesystem::path& path, ino_t inode);

}  // namespace stereos::daemon
