// Loading and validating the daemon's TOML config with toml++: the whole file is checked and every
// problem is reported with its file, line and key, so one run shows everything to fix.
#include "config/config.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

#include <toml++/toml.h>

#include "protocol/codec.hpp"

namespace stereos::config {

namespace {

using std::chrono::milliseconds;

constexpr std::string_view name_chars =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-";

bool only_name_chars(std::string_view text) {
    return text.find_first_not_of(name_chars) == std::string_view::npos;
}

std::string in_quotes(std::string_view text) {
    std::string out = "\"";
    out += text;
    out += '"';
    return out;
}

std::string octal(std::int64_t value) {
    if (value < 0) {
        return std::to_string(value);
    }
    std::ostringstream out;
    out << "0o" << std::oct << value;
    return out.str();
}

// The sane range of each link timing key.
struct duration_range {
    std::string_view key;
    milliseconds min;
    milliseconds max;
    milliseconds link_timeouts::*field;
    std::optional<milliseconds> link_timeout_overrides::*override_field;
};

constexpr std::array<duration_range, 5> duration_ranges{{
    {"request_timeout", 10ms, 1h, &link_timeouts::request_timeout,
     &link_timeout_overrides::request_timeout},
    {"connect_timeout", 10ms, 5min, &link_timeouts::connect_timeout,
     &link_timeout_overrides::connect_timeout},
    {"keepalive_interval", 100ms, 1h, &link_timeouts::keepalive_interval,
     &link_timeout_overrides::keepalive_interval},
    {"health_interval", 100ms, 1h, &link_timeouts::health_interval,
     &link_timeout_overrides::health_interval},
    {"reconnect_max", 10ms, 1h, &link_timeouts::reconnect_max,
     &link_timeout_overrides::reconnect_max},
}};

const duration_range* find_duration_range(std::string_view key) {
    for (const auto& range : duration_ranges) {
        if (range.key == key) {
            return &range;
        }
    }
    return nullptr;
}

std::string_view type_name(toml::node_type type) {
    switch (type) {
        case toml::node_type::none:
            return "nothing";
        case toml::node_type::table:
            return "a table";
        case toml::node_type::array:
            return "an array";
        case toml::node_type::string:
            return "a string";
        case toml::node_type::integer:
            return "an integer";
        case toml::node_type::floating_point:
            return "a float";
        case toml::node_type::boolean:
            return "a boolean";
        case toml::node_type::date:
            return "a date";
        case toml::node_type::time:
            return "a time";
        case toml::node_type::date_time:
            return "a date-time";
    }
    return "an unknown type";
}

// Levenshtein distance, to suggest the key a typo meant.
std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) {
        row[j] = j;
    }
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// Whether a file can be used at provisioning time. Readability is checked by opening it, never by
// reading its content: secret files' bytes must not end up in any message. O_NONBLOCK keeps a
// FIFO from blocking the daemon here.
std::optional<std::string> file_problem(const std::filesystem::path& path, bool must_be_non_empty,
                                        std::uintmax_t max_size) {
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

// Public keys and secrets are small; anything larger than this is a wrong path.
constexpr std::uintmax_t max_small_file = 64 * 1024;

class loader {
  public:
    loader(std::string_view source_name, load_options options)
        : source_(source_name), options_(options) {}

    config_result load(std::string_view text) {
        toml::table root;
        try {
            root = toml::parse(text, source_);
        } catch (const toml::parse_error& e) {
            std::ostringstream message;
            message << source_ << ':' << e.source().begin.line << ':' << e.source().begin.column
                    << ": " << e.description();
            return config_errors{{message.str()}};
        }

        config result;
        result.source = source_;
        const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
        if (credentials != nullptr && *credentials != '\0') {
            credentials_directory_ = credentials;
        }

        table_reader top{*this, root, ""};
        if (const toml::node* node = top.get("daemon", toml::node_type::table)) {
            read_daemon(*node->as_table(), result.daemon);
        }
        if (const toml::node* node = top.get("guest")) {
            read_guests(*node, result);
        }
        top.report_unknown_keys();

        if (!errors_.empty()) {
            // File order: toml++ iterates tables by key, not by position.
            std::stable_sort(errors_.begin(), errors_.end(),
                             [](const auto& a, const auto& b) { return a.first < b.first; });
            config_errors out;
            for (auto& [position, message] : errors_) {
                out.messages.push_back(std::move(message));
            }
            out.refused_references = refused_references_;
            return out;
        }
        return result;
    }

  private:
    // Reads the keys of one table, remembering which were asked for so that the rest can be
    // reported as unknown: a typo must not pass silently.
    struct table_reader {
        table_reader(loader& owner_, const toml::table& table_, std::string prefix_)
            : owner(owner_), table(table_), prefix(std::move(prefix_)) {}

        loader& owner;
        const toml::table& table;
        std::string prefix;  // "guest[0]." etc.
        std::set<std::string, std::less<>> known;

        std::string key_path(std::string_view key) const { return prefix + std::string(key); }

        // The node for `key` if present and of `type` (none = any); reports a wrong type.
        const toml::node* get(std::string_view key, toml::node_type type = toml::node_type::none) {
            known.emplace(key);
            const toml::node* node = table.get(key);
            if (node == nullptr) {
                return nullptr;
            }
            if (type != toml::node_type::none && node->type() != type) {
                owner.error(*node, key_path(key),
                            "expected " + std::string(type_name(type)) + ", got " +
                                std::string(type_name(node->type())));
                return nullptr;
            }
            return node;
        }

        std::optional<std::string> get_string(std::string_view key) {
            const toml::node* node = get(key, toml::node_type::string);
            if (node == nullptr) {
                return std::nullopt;
            }
            return node->as_string()->get();
        }

        // A required string: reports its absence at the table's line.
        std::optional<std::string> require_string(std::string_view key) {
            known.emplace(key);
            if (!table.contains(key)) {
                owner.error(table, key_path(key), "missing (required)");
                return std::nullopt;
            }
            return get_string(key);
        }

        void report_unknown_keys() {
            for (auto&& [key, node] : table) {
                if (known.contains(key.str())) {
                    continue;
                }
                // Only the key is named, never the value: it could be a secret under a typo.
                std::string message = "unknown key";
                const std::string* best = nullptr;
                std::size_t best_distance = 3;
                for (const auto& candidate : known) {
                    const std::size_t d = edit_distance(key.str(), candidate);
                    if (d < best_distance) {
                        best_distance = d;
                        best = &candidate;
                    }
                }
                if (best != nullptr) {
                    message += " (did you mean " + *best + "?)";
                }
                owner.error_at(key.source().begin, key_path(key.str()), message);
            }
        }
    };

    void error_at(toml::source_position at, const std::string& key, const std::string& message) {
        errors_.emplace_back(std::pair{at.line, at.column},
                             source_ + ':' + std::to_string(at.line) + ": " + key + ": " + message);
    }
    void error(const toml::node& node, const std::string& key, const std::string& message) {
        error_at(node.source().begin, key, message);
    }

    // Whether a host reference may be followed; if not, records why. Checked before the file is
    // opened, so a refused caller learns nothing about it.
    bool reference_allowed(const toml::node& node, const std::string& key) {
        if (options_.allow_host_references) {
            return true;
        }
        refused_references_ = true;
        error(node, key,
              "naming a host file or credential for the daemon to read needs root or the "
              "daemon's own user; send the value itself instead");
        return false;
    }

    std::optional<milliseconds> read_duration(table_reader& reader, std::string_view key) {
        const toml::node* node = reader.get(key);
        if (node == nullptr) {
            return std::nullopt;
        }
        if (!node->is_string()) {
            error(*node, reader.key_path(key),
                  "expected a duration string such as \"10s\", got " +
                      std::string(type_name(node->type())));
            return std::nullopt;
        }
        auto parsed = parse_timeout(key, node->as_string()->get());
        if (!parsed) {
            error(*node, reader.key_path(key), parsed.error().message);
            return std::nullopt;
        }
        return *parsed;
    }

    void read_daemon(const toml::table& table, daemon_settings& out) {
        table_reader reader{*this, table, "daemon."};
        if (const toml::node* node = reader.get("api_socket", toml::node_type::string)) {
            const std::string& path = node->as_string()->get();
            // sun_path holds 108 bytes including the terminating NUL.
            if (path.empty() || path.front() != '/') {
                error(*node, "daemon.api_socket",
                      "must be an absolute path, got " + in_quotes(path));
            } else if (path.size() > 107) {
                error(*node, "daemon.api_socket",
                      "too long for a unix socket path (" + std::to_string(path.size()) +
                          " bytes, at most 107)");
            } else {
                out.api_socket = path;
            }
        }
        auto read_group = [&](const char* key, std::string& into) {
            const toml::node* node = reader.get(key, toml::node_type::string);
            if (!node)
                return;
            const std::string& group = node->as_string()->get();
            if (!group.empty() &&
                (group.size() > 32 || !only_name_chars(group) || group.front() == '-')) {
                error(*node, std::string("daemon.") + key,
                      "invalid group name " + in_quotes(group) +
                          " (1 to 32 of A-Z a-z 0-9 . _ -, not starting with -; \"\" = none)");
            } else {
                into = group;
            }
        };
        read_group("api_group", out.api_group);
        read_group("api_read_group", out.api_read_group);
        if (const toml::node* node = reader.get("state_dir", toml::node_type::string)) {
            const std::string& path = node->as_string()->get();
            if (path.empty() || path.front() != '/') {
                error(*node, "daemon.state_dir",
                      "must be an absolute path, got " + in_quotes(path));
            } else {
                out.state_dir = path;
            }
        }
        if (const toml::node* node = reader.get("log_level", toml::node_type::string)) {
            const std::string& text = node->as_string()->get();
            if (auto level = parse_log_level(text)) {
                out.level = *level;
            } else {
                error(*node, "daemon.log_level",
                      "unknown log level " + in_quotes(text) +
                          " (expected trace, debug, info, notice, warning or error)");
            }
        }
        if (const toml::node* node = reader.get("api_max_connections", toml::node_type::integer)) {
            const std::int64_t value = node->as_integer()->get();
            if (value < 1 || value > 65536) {
                error(*node, "daemon.api_max_connections",
                      "must be between 1 and 65536, got " + std::to_string(value));
            } else {
                out.api_max_connections = static_cast<std::size_t>(value);
            }
        }
        for (const auto& range : duration_ranges) {
            if (auto value = read_duration(reader, range.key)) {
                out.timeouts.*range.field = *value;
            }
        }
        reader.report_unknown_keys();
    }

    void read_guests(const toml::node& node, config& out) {
        const toml::array* array = node.as_array();
        if (array == nullptr || !array->is_array_of_tables()) {
            error(node, "guest",
                  "expected an array of tables ([[guest]]), got " +
                      std::string(type_name(node.type())));
            return;
        }
        std::map<std::string, std::uint32_t, std::less<>> first_line_of_name;
        for (std::size_t i = 0; i < array->size(); ++i) {
            const toml::table& table = *array->get(i)->as_table();
            const std::string prefix = "guest[" + std::to_string(i) + "].";
            guest_config guest;
            const bool valid = read_guest(table, prefix, out.daemon.timeouts, guest);
            // Duplicates are looked for among all well-named guests, valid or not.
            const toml::node* name = table.get("name");
            if (name != nullptr && name->is_string() && check_guest_name(guest.name)) {
                const toml::source_position at = name->source().begin;
                auto [it, inserted] = first_line_of_name.emplace(guest.name, at.line);
                if (!inserted) {
                    error_at(at, prefix + "name",
                             "duplicate guest name " + in_quotes(guest.name) + " (also at line " +
                                 std::to_string(it->second) + ")");
                    continue;
                }
            }
            if (valid) {
                out.guests.push_back(std::move(guest));
            }
        }
    }

    // Returns whether the guest is valid enough to keep (errors are recorded either way).
    bool read_guest(const toml::table& table, const std::string& prefix,
                    const link_timeouts& defaults, guest_config& out) {
        const std::size_t errors_before = errors_.size();
        table_reader reader{*this, table, prefix};
        if (auto name = reader.require_string("name")) {
            if (auto valid = check_guest_name(*name); !valid) {
                error(*table.get("name"), prefix + "name", valid.error().message);
            }
            out.name = *name;
        }
        if (auto text = reader.require_string("endpoint")) {
            auto parsed = check_endpoint(*text);
            if (!parsed) {
                error(*table.get("endpoint"), prefix + "endpoint", parsed.error().message);
            } else {
                out.endpoint_text = *text;
                out.endpoint = *parsed;
            }
        }
        for (const auto& range : duration_ranges) {
            out.overrides.*range.override_field = read_duration(reader, range.key);
        }
        out.timeouts = out.overrides.resolve(defaults);
        if (const toml::node* node = reader.get("provision", toml::node_type::table)) {
            read_provision(*node->as_table(), prefix + "provision.", out.provision);
        }
        reader.report_unknown_keys();
        return errors_.size() == errors_before;
    }

    void read_provision(const toml::table& table, const std::string& prefix,
                        provision_config& out) {
        table_reader reader{*this, table, prefix};
        const toml::node* config_file = reader.get("config_file", toml::node_type::string);
        if (config_file != nullptr && reference_allowed(*config_file, prefix + "config_file")) {
            const std::filesystem::path path = config_file->as_string()->get();
            // The content goes out as one line of at most 1 MiB.
            if (auto problem = file_problem(path, false, protocol::max_line_bytes)) {
                error(*config_file, prefix + "config_file", *problem);
            } else {
                out.config_file = path;
            }
        }
        if (const toml::node* content = reader.get("config")) {
            if (!options_.allow_values) {
                error(*content, prefix + "config",
                      "the jcard.toml may not be written inline here; use config_file");
            } else if (config_file != nullptr) {
                error(*content, prefix + "config", "set config or config_file, not both");
            } else if (!content->is_string()) {
                error(*content, prefix + "config",
                      "expected a string, got " + std::string(type_name(content->type())));
            } else if (content->as_string()->get().size() > protocol::max_line_bytes / 2) {
                // Escaped on the wire, it must still fit one line of at most 1 MiB.
                error(*content, prefix + "config",
                      "is too large (at most " + std::to_string(protocol::max_line_bytes / 2) +
                          " bytes)");
            } else {
                out.config_content = content->as_string()->get();
            }
        }
        for_each_table(reader, "ssh_keys", [&](const toml::table& t, const std::string& p) {
            read_ssh_key(t, p, out.ssh_keys);
        });
        std::map<std::string, std::uint32_t, std::less<>> secret_lines;
        for_each_table(reader, "secrets", [&](const toml::table& t, const std::string& p) {
            read_secret(t, p, secret_lines, out.secrets);
        });
        std::map<std::string, std::uint32_t, std::less<>> mount_lines;
        for_each_table(reader, "mounts", [&](const toml::table& t, const std::string& p) {
            read_mount(t, p, mount_lines, out.mounts);
        });
        reader.report_unknown_keys();
    }

    // An array of (inline) tables; `read` gets each with its key path prefix "key[i].".
    template <class Read>
    void for_each_table(table_reader& reader, std::string_view key, Read read) {
        const toml::node* node = reader.get(key, toml::node_type::array);
        if (node == nullptr) {
            return;
        }
        const toml::array& array = *node->as_array();
        for (std::size_t i = 0; i < array.size(); ++i) {
            const std::string path = reader.key_path(key) + "[" + std::to_string(i) + "]";
            const toml::node& element = *array.get(i);
            if (!element.is_table()) {
                error(element, path,
                      "expected a table, got " + std::string(type_name(element.type())));
                continue;
            }
            read(*element.as_table(), path + ".");
        }
    }

    void read_ssh_key(const toml::table& table, const std::string& prefix,
                      std::vector<ssh_key_config>& out) {
        const std::size_t errors_before = errors_.size();
        table_reader reader{*this, table, prefix};
        ssh_key_config key;
        if (auto user = reader.require_string("user")) {
            if (user->empty() || user->size() > 32 || !only_name_chars(*user) ||
                user->front() == '-') {
                error(*table.get("user"), prefix + "user",
                      "invalid user name " + in_quotes(*user) +
                          " (1 to 32 of A-Z a-z 0-9 . _ -, not starting with -)");
            }
            key.user = *user;
        }
        const toml::node* inline_key = reader.get("public_key", toml::node_type::string);
        const toml::node* key_file = reader.get("public_key_file", toml::node_type::string);
        if ((inline_key != nullptr) == (key_file != nullptr)) {
            if (!table.contains("public_key") && !table.contains("public_key_file")) {
                error(table, prefix.substr(0, prefix.size() - 1),
                      "set exactly one of public_key or public_key_file");
            } else if (inline_key != nullptr) {
                error(table, prefix.substr(0, prefix.size() - 1),
                      "set exactly one of public_key or public_key_file, not both");
            }
        } else if (inline_key != nullptr) {
            const std::string& text = inline_key->as_string()->get();
            const auto first = text.find_first_not_of(" \t\r\n");
            const auto last = text.find_last_not_of(" \t\r\n");
            if (first == std::string::npos) {
                error(*inline_key, prefix + "public_key", "is empty");
            } else {
                key.public_key = text.substr(first, last - first + 1);
                if (auto valid = check_ssh_public_key(key.public_key); !valid) {
                    error(*inline_key, prefix + "public_key", valid.error().message);
                }
            }
        } else if (reference_allowed(*key_file, prefix + "public_key_file")) {
            const std::filesystem::path path = key_file->as_string()->get();
            if (auto problem = file_problem(path, true, max_small_file)) {
                error(*key_file, prefix + "public_key_file", *problem);
            }
            key.public_key_file = path;
        }
        reader.report_unknown_keys();
        if (errors_.size() == errors_before) {
            out.push_back(std::move(key));
        }
    }

    void read_secret(const toml::table& table, const std::string& prefix,
                     std::map<std::string, std::uint32_t, std::less<>>& first_lines,
                     std::vector<secret_config>& out) {
        const std::size_t errors_before = errors_.size();
        table_reader reader{*this, table, prefix};
        secret_config secret;
        if (auto name = reader.require_string("name")) {
            const toml::source_position at = table.get("name")->source().begin;
            // It becomes a file name in the guest: no directories, nothing hidden by "..".
            if (auto valid = check_secret_name(*name); !valid) {
                error_at(at, prefix + "name", valid.error().message);
            } else if (auto [it, inserted] = first_lines.emplace(*name, at.line); !inserted) {
                error_at(at, prefix + "name",
                         "duplicate secret name " + in_quotes(*name) + " (also at line " +
                             std::to_string(it->second) + ")");
            }
            secret.name = *name;
        }
        // Checked before anything else so that an inline value is never silently accepted. Its
        // content is never quoted, whatever its type.
        const toml::node* value = reader.get("value");
        if (value != nullptr && !options_.allow_values) {
            error(*value, prefix + "value",
                  "secret values may not be written inline; use file or credential");
        } else if (value != nullptr && !value->is_string()) {
            error(*value, prefix + "value",
                  "expected a string, got " + std::string(type_name(value->type())));
        } else if (value != nullptr && value->as_string()->get().size() > max_small_file) {
            error(*value, prefix + "value",
                  "is too large (at most " + std::to_string(max_small_file) + " bytes)");
        }
        const toml::node* file = reader.get("file", toml::node_type::string);
        const toml::node* credential = reader.get("credential", toml::node_type::string);
        // A refused inline value is no source: it was already told to use file or credential.
        const bool inline_value = value != nullptr && options_.allow_values;
        const int sources = (file != nullptr) + (credential != nullptr) + (inline_value ? 1 : 0);
        const std::string where = prefix.substr(0, prefix.size() - 1);
        const std::string choices =
            options_.allow_values ? "value, file or credential" : "file or credential";
        if (sources > 1) {
            error(table, where, "set exactly one of " + choices + ", not more");
        } else if (sources == 0) {
            if (value == nullptr && !table.contains("file") && !table.contains("credential")) {
                error(table, where, "set exactly one of " + choices);
            }
        } else if (inline_value) {
            if (value->is_string()) {
                secret.value = value->as_string()->get();
            }
        } else if (!reference_allowed(file != nullptr ? *file : *credential,
                                      prefix + (file != nullptr ? "file" : "credential"))) {
            // Refused before the file is opened.
        } else if (file != nullptr) {
            secret.file = file->as_string()->get();
            if (auto problem = file_problem(secret.file, false, max_small_file)) {
                error(*file, prefix + "file", *problem);
            }
        } else {
            secret.credential = credential->as_string()->get();
            if (secret.credential.empty() || !only_name_chars(secret.credential) ||
                secret.credential == "." || secret.credential == "..") {
                error(*credential, prefix + "credential",
                      "invalid credential name " + in_quotes(secret.credential) +
                          " (a simple file name: A-Z a-z 0-9 . _ -)");
            } else if (credentials_directory_.empty()) {
                error(*credential, prefix + "credential",
                      "$CREDENTIALS_DIRECTORY is not set: credential " +
                          in_quotes(secret.credential) +
                          " needs LoadCredential= (or SetCredential=) in the service unit");
            } else {
                secret.file = credentials_directory_ / secret.credential;
                if (auto problem = file_problem(secret.file, false, max_small_file)) {
                    error(*credential, prefix + "credential", *problem);
                }
            }
        }
        if (const toml::node* mode = reader.get("mode", toml::node_type::integer)) {
            const std::int64_t value = mode->as_integer()->get();
            if (value < 0 || value > 07777) {
                error(*mode, prefix + "mode", "must be between 0 and 0o7777, got " + octal(value));
            } else {
                secret.mode = static_cast<std::uint32_t>(value);
            }
        }
        reader.report_unknown_keys();
        if (errors_.size() == errors_before) {
            out.push_back(std::move(secret));
        }
    }

    void read_mount(const toml::table& table, const std::string& prefix,
                    std::map<std::string, std::uint32_t, std::less<>>& first_lines,
                    std::vector<protocol::mount_payload>& out) {
        const std::size_t errors_before = errors_.size();
        table_reader reader{*this, table, prefix};
        protocol::mount_payload mount;
        if (auto tag = reader.require_string("tag")) {
            // virtio-fs tags hold at most 36 bytes.
            if (tag->empty() || tag->size() > 36 || !only_name_chars(*tag)) {
                error(*table.get("tag"), prefix + "tag",
                      "invalid mount tag " + in_quotes(*tag) + " (1 to 36 of A-Z a-z 0-9 . _ -)");
            }
            mount.tag = *tag;
        }
        if (auto path = reader.require_string("guest_path")) {
            const toml::source_position at = table.get("guest_path")->source().begin;
            if (auto valid = check_mount_guest_path(*path); !valid) {
                error_at(at, prefix + "guest_path", valid.error().message);
            } else if (auto [it, inserted] = first_lines.emplace(*path, at.line); !inserted) {
                error_at(at, prefix + "guest_path",
                         "duplicate mount point " + in_quotes(*path) + " (also at line " +
                             std::to_string(it->second) + ")");
            }
            mount.guest_path = *path;
        }
        if (auto fs_type = reader.require_string("fs_type")) {
            if (auto valid = check_fs_type(*fs_type); !valid) {
                error(*table.get("fs_type"), prefix + "fs_type", valid.error().message);
            }
            mount.fs_type = *fs_type;
        }
        if (const toml::node* read_only = reader.get("read_only", toml::node_type::boolean)) {
            mount.read_only = read_only->as_boolean()->get();
        }
        reader.report_unknown_keys();
        if (errors_.size() == errors_before) {
            out.push_back(std::move(mount));
        }
    }

    std::string source_;
    load_options options_;
    bool refused_references_ = false;
    std::filesystem::path credentials_directory_;
    // ((line, column), message)
    std::vector<std::pair<std::pair<std::uint32_t, std::uint32_t>, std::string>> errors_;
};

}  // namespace

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

link_timeouts link_timeout_overrides::resolve(const link_timeouts& defaults) const {
    link_timeouts out = defaults;
    for (const auto& range : duration_ranges) {
        if (const auto& value = this->*range.override_field) {
            out.*range.field = *value;
        }
    }
    return out;
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

// ---- single values -------------------------------------------------------------------------

boost::system::result<void, value_error> check_guest_name(std::string_view name) {
    if (name.empty() || name.size() > 64 || !only_name_chars(name)) {
        return value_error{"invalid guest name " + in_quotes(name) +
                           " (1 to 64 of A-Z a-z 0-9 . _ -)"};
    }
    return {};
}

boost::system::result<milliseconds, value_error> parse_duration(std::string_view text) {
    const auto invalid = [&] {
        return value_error{"invalid duration " + in_quotes(text) +
                           " (expected a number and a unit: ms, s, m or h, e.g. \"10s\")"};
    };
    // A week is far beyond any range we accept; the bound keeps the arithmetic from overflowing.
    constexpr std::int64_t max_ms = 7LL * 24 * 3600 * 1000;
    if (text.empty()) {
        return invalid();
    }
    std::int64_t total = 0;
    std::string_view rest = text;
    while (!rest.empty()) {
        std::size_t digits = 0;
        std::int64_t number = 0;
        while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9') {
            number = number * 10 + (rest[digits] - '0');
            if (number > max_ms) {
                return value_error{"duration " + in_quotes(text) + " is too large"};
            }
            ++digits;
        }
        if (digits == 0) {
            return invalid();
        }
        rest.remove_prefix(digits);
        std::int64_t unit = 0;
        if (rest.starts_with("ms")) {
            unit = 1;
            rest.remove_prefix(2);
        } else if (rest.starts_with("s")) {
            unit = 1000;
            rest.remove_prefix(1);
        } else if (rest.starts_with("m")) {
            unit = 60 * 1000;
            rest.remove_prefix(1);
        } else if (rest.starts_with("h")) {
            unit = 3600 * 1000;
            rest.remove_prefix(1);
        } else {
            return invalid();
        }
        total += number * unit;
        if (total > max_ms) {
            return value_error{"duration " + in_quotes(text) + " is too large"};
        }
    }
    if (total == 0) {
        return value_error{"duration " + in_quotes(text) + " must be greater than 0"};
    }
    return milliseconds(total);
}

std::string format_duration(milliseconds duration) {
    std::int64_t ms = duration.count();
    if (ms <= 0) {
        return std::to_string(ms) + "ms";
    }
    std::string out;
    constexpr std::array<std::pair<std::int64_t, std::string_view>, 4> units{
        {{3600 * 1000, "h"}, {60 * 1000, "m"}, {1000, "s"}, {1, "ms"}}};
    for (const auto& [size, suffix] : units) {
        if (ms >= size) {
            out += std::to_string(ms / size);
            out += suffix;
            ms %= size;
        }
    }
    return out;
}

boost::system::result<milliseconds, value_error> parse_timeout(std::string_view key,
                                                               std::string_view text) {
    auto parsed = parse_duration(text);
    if (!parsed) {
        return parsed;
    }
    if (const duration_range* range = find_duration_range(key)) {
        if (*parsed < range->min || *parsed > range->max) {
            return value_error{std::string(key) + " must be between " +
                               format_duration(range->min) + " and " + format_duration(range->max) +
                               ", got " + in_quotes(text)};
        }
    }
    return parsed;
}

// ---- loading -------------------------------------------------------------------------------

config_result load_config_text(std::string_view text, std::string_view source_name,
                               load_options options) {
    return loader(source_name, options).load(text);
}

config_result load_config_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        const int saved = errno;
        return config_errors{{path.string() + ": cannot open: " + std::strerror(saved)}};
    }
    std::ostringstream text;
    text << in.rdbuf();
    if (in.bad()) {
        return config_errors{{path.string() + ": cannot read"}};
    }
    return load_config_text(text.str(), path.string());
}

guest_diff diff_guests(const config& before, const config& after) {
    // What the daemon acts on; the endpoint's spelling and which timeouts were overrides are not.
    const auto same = [](const guest_config& a, const guest_config& b) {
        return a.endpoint == b.endpoint && a.timeouts == b.timeouts && a.provision == b.provision;
    };
    guest_diff diff;
    for (const auto& guest : after.guests) {
        const guest_config* old = before.find_guest(guest.name);
        if (old == nullptr) {
            diff.added.push_back(guest.name);
        } else if (same(*old, guest)) {
            diff.unchanged.push_back(guest.name);
        } else {
            diff.changed.push_back(guest.name);
        }
    }
    for (const auto& guest : before.guests) {
        if (after.find_guest(guest.name) == nullptr) {
            diff.removed.push_back(guest.name);
        }
    }
    return diff;
}

}  // namespace stereos::config
