#include "daemon/api/socket_file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "daemon/logging.hpp"

namespace stereos::daemon {

namespace asio = boost::asio;
using socket_type = asio::local::stream_protocol::socket;

ino_t create_api_socket_file(asio::local::stream_protocol::acceptor& acceptor,
                             const std::filesystem::path& path, std::optional<gid_t> group,
                             const std::string& group_name) {
    bool bound = false;  // a file we created: removed again if setting it up fails
    auto fail = [&](const std::string& what) {
        if (bound)
            ::unlink(path.c_str());
        throw std::runtime_error("API socket " + path.string() + ": " + what);
    };
    if (path.has_parent_path()) {
        std::error_code ignored;
        std::filesystem::create_directories(path.parent_path(), ignored);
    }
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            fail("exists and is not a socket; not replacing it");
        // A live daemon still answers on it: taking the path over would orphan it.
        socket_type probe(acceptor.get_executor());
        boost::system::error_code ec;
        probe.connect(asio::local::stream_protocol::endpoint(path.string()), ec);
        if (!ec)
            fail("another process is serving it (is stereos-hostd already running?)");
        if (::unlink(path.c_str()) != 0 && errno != ENOENT)
            fail(std::string("cannot remove the stale socket: ") + std::strerror(errno));
        log::info("removed stale API socket " + path.string());
    }

    boost::system::error_code ec;
    acceptor.open(asio::local::stream_protocol(), ec);
    if (ec)
        fail(ec.message());
    // Created owner-only, so no one can connect before the mode and group are set.
    const mode_t old_mask = ::umask(0177);
    acceptor.bind(asio::local::stream_protocol::endpoint(path.string()), ec);
    ::umask(old_mask);
    if (ec)
        fail("cannot bind: " + ec.message());
    bound = true;
    ino_t inode = 0;
    if (lstat(path.c_str(), &st) == 0)
        inode = st.st_ino;
    if (group) {
        if (::chown(path.c_str(), static_cast<uid_t>(-1), *group) != 0) {
            log::warning("cannot give the API socket to group " + group_name + ": " +
                         std::strerror(errno) + "; it stays owner-only");
        } else if (::chmod(path.c_str(), 0660) != 0) {
            fail(std::string("chmod: ") + std::strerror(errno));
        }
    }
    acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec)
        fail("cannot listen: " + ec.message());
    log::info("API listening on " + path.string() +
              (group ? " (mode 0660, group " + group_name + ")" : " (mode 0600)"));
    return inode;
}

void remove_api_socket_file(const std::filesystem::path& path, ino_t inode) {
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0 && st.st_ino == inode)
        ::unlink(path.c_str());
}

}  // namespace stereos::daemon
