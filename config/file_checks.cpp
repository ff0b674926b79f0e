// The config's checks that touch the host's files and environment (file_checks.hpp).
#include "config/file_checks.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string_view>

#include "config/input_rules.hpp"

namespace stereos::config {

namespace {

std::string in_quotes(std::string_view text) {
    std::string out = "\"";
    out += text;
    out += '"';
    return out;
}

// Readability is checked by opening the file, never by reading its content. O_NONBLOCK keeps a
// FIFO from blocking the daemon here.
std::optional<std::string> open_file_problem(const std::filesystem::path& path,
                                             bool must_be_non_empty, std::uintmax_t max_size) {
    if (!path.is_absolute()) {
        return "must be an absolute path, got " + in_quotes(path.string());
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) {
        return "cannot open " + in_quotes(path.string()) + ": " + std::strerror(errno);
    }
    struct stat info {};
    const int stat_result = ::fstat(fd, &info);
    const int stat_errno = errno;
    ::close(fd);
    if (stat_result != 0) {
        return "cannot stat " + in_quotes(path.string()) + ": " + std::strerror(stat_errno);
    }
    if (!S_ISREG(info.st_mode)) {
        return in_quotes(path.string()) + " is not a regular file";
    }
    if (must_be_non_empty && info.st_size == 0) {
        return in_quotes(path.string()) + " is empty";
    }
    if (static_cast<std::uintmax_t>(info.st_size) > max_size) {
        return in_quotes(path.string()) + " is too large (" + std::to_string(info.st_size) +
               " bytes, at most " + std::to_string(max_size) + ")";
    }
    return std::nullopt;
}

class host_files final : public file_probe {
  public:
    std::optional<std::string> file_problem(const std::filesystem::path& path,
                                            bool must_be_non_empty,
                                            std::uintmax_t max_size) const override {
        return open_file_problem(path, must_be_non_empty, max_size);
    }

    std::optional<std::string> public_key_file_problem(const std::filesystem::path& path,
                                                       std::uintmax_t max_size) const override {
        if (auto problem = open_file_problem(path, true, max_size)) {
            return problem;
        }
        std::ifstream in(path, std::ios::binary);
        std::string text(max_size + 1, '\0');
        in.read(text.data(), static_cast<std::streamsize>(text.size()));
        if (in.bad()) {
            return "cannot read " + in_quotes(path.string());
        }
        text.resize(static_cast<std::size_t>(in.gcount()));
        // Provisioning sends the file without its line end, and checks it again then.
        while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) {
            text.pop_back();
        }
        if (!check_ssh_public_key(text)) {
            return in_quotes(path.string()) +
                   " does not hold one SSH public key (a line with a key type such as "
                   "ssh-ed25519, then the key data)";
        }
        return std::nullopt;
    }

    std::filesystem::path credentials_directory() const override {
        const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
        if (credentials != nullptr && *credentials != '\0') {
            return credentials;
        }
        return {};
    }
};

}  // namespace

const file_probe& host_file_probe() {
    static const host_files probe;
    return probe;
}

}  // namespace stereos::config
