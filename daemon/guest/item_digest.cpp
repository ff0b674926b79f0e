#include "daemon/guest/item_digest.hpp"

#include <fcntl.h>
#include <sodium.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace stereos::daemon {

namespace {
void require_sodium() {
    if (sodium_init() < 0)
        throw std::runtime_error("libsodium cannot be initialised");
}

bool read_exact(int fd, unsigned char* out, std::size_t size) {
    std::size_t done = 0;
    while (done < size) {
        const auto n = ::read(fd, out + done, size - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        done += static_cast<std::size_t>(n);
    }
    return true;
}
}  // namespace

item_digest item_digest::with_random_key() {
    require_sodium();
    key_type key{};
    randombytes_buf(key.data(), key.size());
    return item_digest(key);
}

boost::system::result<item_digest, std::string> item_digest::load_or_create(
    const std::filesystem::path& path) {
    using result = boost::system::result<item_digest, std::string>;
    require_sodium();
    key_type key{};
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        const bool ok = read_exact(fd, key.data(), key.size());
        ::close(fd);
        if (!ok)
            return result(boost::system::in_place_error,
                          path.string() + " is shorter than a digest key (32 bytes)");
        return result(boost::system::in_place_value, key);
    }
    if (errno != ENOENT)
        return result(boost::system::in_place_error,
                      "cannot read " + path.string() + ": " + std::strerror(errno));
    randombytes_buf(key.data(), key.size());
    // O_EXCL: two daemons on one state directory must not each write their own key.
    const auto temp = path.string() + ".tmp";
    fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return result(boost::system::in_place_error,
                      "cannot create " + temp + ": " + std::strerror(errno));
    const bool written =
        ::write(fd, key.data(), key.size()) == static_cast<ssize_t>(key.size()) && ::fsync(fd) == 0;
    ::close(fd);
    if (!written || ::link(temp.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(temp.c_str());
        if (err == EEXIST)
            return load_or_create(path);
        return result(boost::system::in_place_error,
                      "cannot write " + path.string() + ": " + std::strerror(err));
    }
    ::unlink(temp.c_str());
    return result(boost::system::in_place_value, key);
}

std::string item_digest::of(std::string_view bytes) const {
    std::array<unsigned char, 32> hash{};
    crypto_generichash(hash.data(), hash.size(),
                       reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                       key_.data(), key_.size());
    std::string hex(hash.size() * 2 + 1, '\0');
    sodium_bin2hex(hex.data(), hex.size(), hash.data(), hash.size());
    hex.pop_back();
    return hex;
}

}  // namespace stereos::daemon
