// The model's own small functions: where the config file is, log levels, finding a guest, and
// the errors' text. The rest of config.hpp is implemented with its concern: toml_reader.cpp
// (loading), guest_rules.cpp (the rules), file_checks.cpp (host files), reload_diff.cpp.
#include "config/config.hpp"

#include <cstdlib>
#include <stdexcept>

namespace stereos::config {

// ---- paths, names, levels ----------------------------------------------------------------

std::filesystem::path choose_config_path(std::optional<std::string_view> explicit_path) {
    if (explicit_path) {
        return std::filesystem::path(*explicit_path);
    }
    const char* directory = std::getenv("CONFIGURATION_DIRECTORY");
    if (directory != nullptr && *directory != '\0') {
        // systemd joins several directories with ':'; ours is the first.
        std::string_view first(directory);
        first = first.substr(0, first.find(':'));
        return std::filesystem::path(first) / "config.toml";
    }
    return std::filesystem::path(default_config_path);
}

std::string_view to_string(log_level level) noexcept {
    switch (level) {
        case log_level::trace:
            return "trace";
        case log_level::debug:
            return "debug";
        case log_level::info:
            return "info";
        case log_level::notice:
            return "notice";
        case log_level::warning:
            return "warning";
        case log_level::error:
            return "error";
    }
    return "unknown";
}

std::optional<log_level> parse_log_level(std::string_view text) noexcept {
    for (auto level : {log_level::trace, log_level::debug, log_level::info, log_level::notice,
                       log_level::warning, log_level::error}) {
        if (to_string(level) == text) {
            return level;
        }
    }
    return std::nullopt;
}

const guest_config* config::find_guest(std::string_view name) const noexcept {
    for (const auto& guest : guests) {
        if (guest.name == name) {
            return &guest;
        }
    }
    return nullptr;
}

// ---- errors --------------------------------------------------------------------------------

std::string to_string(const config_errors& e) {
    std::string out;
    for (const auto& message : e.messages) {
        out += message;
        out += '\n';
    }
    return out;
}

void throw_exception_from_error(const config_errors& e, const boost::source_location&) {
    throw std::runtime_error("invalid configuration:\n" + to_string(e));
}

}  // namespace stereos::config
