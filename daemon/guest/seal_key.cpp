#include "daemon/guest/seal_key.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace stereos::daemon {

values_at_rest load_seal_key(const char* credentials_directory) {
    const std::string credential(seal_key_credential);
    if (!credentials_directory || *credentials_directory == '\0')
        return {nullptr,
                "$CREDENTIALS_DIRECTORY is not set (not started by systemd with "
                "LoadCredentialEncrypted=" +
                    credential + ")"};
    const auto path = std::filesystem::path(credentials_directory) / credential;
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return {nullptr, "no credential " + credential +
                                 " (make it with make-seal-key, then restart the daemon)"};
        return {nullptr, "cannot read credential " + credential + ": " + std::strerror(errno)};
    }
    // One byte more than a key, to tell a longer file from a key.
    std::array<unsigned char, value_seal::key_size + 1> buffer{};
    std::size_t size = 0;
    int read_errno = 0;
    while (size < buffer.size()) {
        const auto n = ::read(fd, buffer.data() + size, buffer.size() - size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            read_errno = errno;
        if (n <= 0)
            break;
        size += static_cast<std::size_t>(n);
    }
    ::close(fd);
    values_at_rest result;
    if (read_errno != 0) {
        result.reason = "cannot read credential " + credential + ": " + std::strerror(read_errno);
    } else if (size != value_seal::key_size) {
        result.reason = "credential " + credential + " is " +
                        (size > value_seal::key_size ? "longer" : "shorter") +
                        " than a key (32 bytes)";
    } else {
        value_seal::key_type key{};
        std::memcpy(key.data(), buffer.data(), key.size());
        result.seal = std::make_shared<const value_seal>(key);
        sodium_memzero(key.data(), key.size());
    }
    sodium_memzero(buffer.data(), buffer.size());
    return result;
}

}  // namespace stereos::daemon
