// The rules of the config model (check_guest) and the TOML loader: toml++ parses, model_reader
// reads the shape, check_guest judges the values; every problem is reported with its file, line
// and key, so one run shows everything to fix.
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

#include <stereos/protocol/codec.hpp>
#include "config/model_reader.hpp"

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

constexpr std::array<duration_range, 6> duration_ranges{{
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
    {"unresponsive_grace", 100ms, 24h, &link_timeouts::unresponsive_grace,
     &link_timeout_overrides::unresponsive_grace},
}};

const duration_range* find_duration_range(std::string_view key) {
    for (const auto& range : duration_ranges) {
        if (range.key == key) {
            return &range;
        }
    }
    return nullptr;
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

// The TOML side of model_reader. Keys are noted with their position so that shape and model
// errors, both named by key path, get the file's line.
class toml_document {
  public:
    using node = toml::node;
    using table = toml::table;

    static detail::shape shape_of(const node& n) {
        switch (n.type()) {
            case toml::node_type::table:
                return detail::shape::table;
            case toml::node_type::array:
                return detail::shape::array;
            case toml::node_type::string:
                return detail::shape::string;
            case toml::node_type::integer:
                return detail::shape::integer;
            case toml::node_type::floating_point:
                return detail::shape::floating_point;
            case toml::node_type::boolean:
                return detail::shape::boolean;
            default:
                return detail::shape::other;
        }
    }
    static const node* find(const table& t, std::string_view key) { return t.get(key); }
    static const table& table_of(const node& n) { return *n.as_table(); }
    static std::size_t size_of(const node& array) { return array.as_array()->size(); }
    static const node& element(const node& array, std::size_t i) {
        return *array.as_array()->get(i);
    }
    static std::string_view string_of(const node& n) { return n.as_string()->get(); }
    static std::int64_t integer_of(const node& n) { return n.as_integer()->get(); }
    static bool boolean_of(const node& n) { return n.as_boolean()->get(); }

    void note(const std::string& key, const node& n) { positions_.emplace(key, n.source().begin); }
    template <class Visit>
    void for_each_key(const table& t, const std::string& prefix, Visit visit) {
        for (auto&& [key, value] : t) {
            positions_.emplace(prefix + std::string(key.str()), key.source().begin);
            visit(key.str());
        }
    }

    // The position of `key`, else of the nearest table holding it.
    toml::source_position position_of(std::string_view key) const {
        for (;; key = detail::parent_key(key)) {
            if (auto it = positions_.find(key); it != positions_.end()) {
                return it->second;
            }
            if (key.empty()) {
                return {1, 1};
            }
        }
    }

  private:
    std::map<std::string, toml::source_position, std::less<>> positions_;
};

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
        toml_document document;
        detail::model_reader<toml_document> reader(document);
        decltype(reader)::table_reader top{reader, root, ""};
        if (const toml::node* node = top.get("daemon", detail::shape::table)) {
            reader.read_daemon(*node->as_table(), "daemon.", result.daemon);
        }
        if (const toml::node* node = top.get("guest")) {
            const toml::array* array = node->as_array();
            if (array == nullptr || !array->is_array_of_tables()) {
                reader.error("guest",
                             "expected an array of tables ([[guest]]), got " +
                                 std::string(detail::shape_name(document.shape_of(*node))));
            } else {
                for (std::size_t i = 0; i < array->size(); ++i) {
                    const std::string key = "guest[" + std::to_string(i) + "]";
                    document.note(key, *array->get(i));
                    reader.read_guest(*array->get(i)->as_table(), key + ".",
                                      result.guests.emplace_back());
                }
            }
        }
        top.report_unknown_keys();

        for (auto& e : reader.errors()) {
            error_at(document.position_of(e.key), e.key, e.message);
        }
        for (auto& e : check_guests(result, options_)) {
            if (reader.unread().hide(e.key)) {
                continue;
            }
            if (!e.first_key.empty()) {
                e.message += " (also at line " +
                             std::to_string(document.position_of(e.first_key).line) + ")";
            }
            refused_references_ = refused_references_ || e.refused_reference;
            error_at(document.position_of(e.key), e.key, e.message);
        }
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
    void error_at(toml::source_position at, const std::string& key, const std::string& message) {
        errors_.emplace_back(std::pair{at.line, at.column},
                             source_ + ':' + std::to_string(at.line) + ": " + key + ": " + message);
    }

    std::string source_;
    load_options options_;
    bool refused_references_ = false;
    // ((line, column), message)
    std::vector<std::pair<std::pair<std::uint32_t, std::uint32_t>, std::string>> errors_;
};

// The rules about a guest's values, whatever document it came from.
class guest_checker {
  public:
    explicit guest_checker(load_options options) : options_(options) {
        const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
        if (credentials != nullptr && *credentials != '\0') {
            credentials_directory_ = credentials;
        }
    }

    std::vector<model_error> take_errors() { return std::move(errors_); }

    void check(guest_config& guest, const std::string& prefix, const link_timeouts& defaults) {
        if (auto valid = check_guest_name(guest.name); !valid) {
            error(prefix + "name", valid.error().message);
        }
        if (auto parsed = check_endpoint(guest.endpoint_text); !parsed) {
            error(prefix + "endpoint", parsed.error().message);
        } else {
            guest.endpoint = *parsed;
        }
        guest.timeouts = guest.overrides.resolve(defaults);
        check_provision(guest.provision, prefix + "provision.");
    }

    // Duplicates are looked for among all well-named guests, valid or not.
    void check_unique_names(const std::vector<guest_config>& guests) {
        std::map<std::string_view, std::string> first_key;
        for (std::size_t i = 0; i < guests.size(); ++i) {
            const std::string key = "guest[" + std::to_string(i) + "].name";
            if (!check_guest_name(guests[i].name)) {
                continue;
            }
            if (auto [it, inserted] = first_key.emplace(guests[i].name, key); !inserted) {
                duplicate(key, "duplicate guest name " + in_quotes(guests[i].name), it->second);
            }
        }
    }

  private:
    void error(std::string key, std::string message) {
        errors_.push_back({std::move(key), std::move(message), {}, false});
    }
    void duplicate(std::string key, std::string message, std::string first_key) {
        errors_.push_back({std::move(key), std::move(message), std::move(first_key), false});
    }

    // Whether a host reference may be followed; if not, records why. Checked before the file is
    // opened, so a refused caller learns nothing about it.
    bool reference_allowed(const std::string& key) {
        if (options_.allow_host_references) {
            return true;
        }
        errors_.push_back({key,
                           "naming a host file or credential for the daemon to read needs root or "
                           "the daemon's own user; send the value itself instead",
                           {},
                           true});
        return false;
    }

    void check_provision(provision_config& provision, const std::string& prefix) {
        if (provision.config_file && reference_allowed(prefix + "config_file")) {
            // The content goes out as one line of at most 1 MiB.
            if (auto problem =
                    file_problem(*provision.config_file, false, protocol::max_line_bytes)) {
                error(prefix + "config_file", *problem);
            }
        }
        if (provision.config_content) {
            if (!options_.allow_values) {
                error(prefix + "config",
                      "the jcard.toml may not be written inline here; use config_file");
            } else if (provision.config_file) {
                error(prefix + "config", "set config or config_file, not both");
            } else if (provision.config_content->size() > protocol::max_line_bytes / 2) {
                // Escaped on the wire, it must still fit one line of at most 1 MiB.
                error(prefix + "config", "is too large (at most " +
                                             std::to_string(protocol::max_line_bytes / 2) +
                                             " bytes)");
            }
        }
        for (std::size_t i = 0; i < provision.ssh_keys.size(); ++i) {
            check_ssh_key(provision.ssh_keys[i], prefix + "ssh_keys[" + std::to_string(i) + "]");
        }
        std::map<std::string_view, std::string> first_secret;
        for (std::size_t i = 0; i < provision.secrets.size(); ++i) {
            const std::string key = prefix + "secrets[" + std::to_string(i) + "]";
            check_secret(provision.secrets[i], key);
            const std::string& name = provision.secrets[i].name;
            // It becomes a file name in the guest: no directories, nothing hidden by "..".
            if (auto valid = check_secret_name(name); !valid) {
                error(key + ".name", valid.error().message);
            } else if (auto [it, inserted] = first_secret.emplace(name, key + ".name"); !inserted) {
                duplicate(key + ".name", "duplicate secret name " + in_quotes(name), it->second);
            }
        }
        std::map<std::string_view, std::string> first_mount;
        for (std::size_t i = 0; i < provision.mounts.size(); ++i) {
            const std::string key = prefix + "mounts[" + std::to_string(i) + "]";
            const auto& mount = provision.mounts[i];
            // virtio-fs tags hold at most 36 bytes.
            if (mount.tag.empty() || mount.tag.size() > 36 || !only_name_chars(mount.tag)) {
                error(key + ".tag", "invalid mount tag " + in_quotes(mount.tag) +
                                        " (1 to 36 of A-Z a-z 0-9 . _ -)");
            }
            if (auto valid = check_mount_guest_path(mount.guest_path); !valid) {
                error(key + ".guest_path", valid.error().message);
            } else if (auto [it, inserted] =
                           first_mount.emplace(mount.guest_path, key + ".guest_path");
                       !inserted) {
                duplicate(key + ".guest_path",
                          "duplicate mount point " + in_quotes(mount.guest_path), it->second);
            }
            if (auto valid = check_fs_type(mount.fs_type); !valid) {
                error(key + ".fs_type", valid.error().message);
            }
        }
    }

    void check_ssh_key(ssh_key_config& key, const std::string& where) {
        const std::string& user = key.user;
        if (user.empty() || user.size() > 32 || !only_name_chars(user) || user.front() == '-') {
            error(where + ".user", "invalid user name " + in_quotes(user) +
                                       " (1 to 32 of A-Z a-z 0-9 . _ -, not starting with -)");
        }
        const bool has_inline = !key.public_key.empty();
        const bool has_file = !key.public_key_file.empty();
        if (has_inline && has_file) {
            error(where, "set exactly one of public_key or public_key_file, not both");
        } else if (!has_inline && !has_file) {
            error(where, "set exactly one of public_key or public_key_file");
        } else if (has_inline) {
            const auto first = key.public_key.find_first_not_of(" \t\r\n");
            if (first == std::string::npos) {
                error(where + ".public_key", "is empty");
                return;
            }
            const auto last = key.public_key.find_last_not_of(" \t\r\n");
            key.public_key = key.public_key.substr(first, last - first + 1);
            if (auto valid = check_ssh_public_key(key.public_key); !valid) {
                error(where + ".public_key", valid.error().message);
            }
        } else if (reference_allowed(where + ".public_key_file")) {
            if (auto problem = key_file_problem(key.public_key_file)) {
                error(where + ".public_key_file", *problem);
            }
        }
    }

    // A public key file must be readable now and hold a key, so that a wrong path or a wrong
    // file is reported when the config is loaded, not when a guest boots. Its content is not
    // quoted: a wrong path may name a secret.
    static std::optional<std::string> key_file_problem(const std::filesystem::path& path) {
        if (auto problem = file_problem(path, true, max_small_file)) {
            return problem;
        }
        std::ifstream in(path, std::ios::binary);
        std::string text(max_small_file + 1, '\0');
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

    void check_secret(secret_config& secret, const std::string& where) {
        const std::string prefix = where + ".";
        // Checked before anything else so that an inline value is never silently accepted. Its
        // content is never quoted.
        if (secret.value && !options_.allow_values) {
            error(prefix + "value",
                  "secret values may not be written inline; use file or credential");
        } else if (secret.value && secret.value->size() > max_small_file) {
            error(prefix + "value",
                  "is too large (at most " + std::to_string(max_small_file) + " bytes)");
        }
        const bool has_file = !secret.file.empty();
        const bool has_credential = !secret.credential.empty();
        // A refused inline value is no source: it was already told to use file or credential.
        const bool inline_value = secret.value && options_.allow_values;
        const int sources = int{has_file} + int{has_credential} + int{inline_value};
        const std::string choices =
            options_.allow_values ? "value, file or credential" : "file or credential";
        if (sources > 1) {
            error(where, "set exactly one of " + choices + ", not more");
        } else if (sources == 0) {
            if (!secret.value) {
                error(where, "set exactly one of " + choices);
            }
        } else if (inline_value) {
            // Nothing to open.
        } else if (!reference_allowed(prefix + (has_file ? "file" : "credential"))) {
            // Refused before the file is opened.
        } else if (has_file) {
            if (auto problem = file_problem(secret.file, false, max_small_file)) {
                error(prefix + "file", *problem);
            }
        } else if (!only_name_chars(secret.credential) || secret.credential == "." ||
                   secret.credential == "..") {
            error(prefix + "credential", "invalid credential name " + in_quotes(secret.credential) +
                                             " (a simple file name: A-Z a-z 0-9 . _ -)");
        } else if (credentials_directory_.empty()) {
            error(prefix + "credential",
                  "$CREDENTIALS_DIRECTORY is not set: credential " + in_quotes(secret.credential) +
                      " needs LoadCredential= (or SetCredential=) in the service unit");
        } else {
            secret.file = credentials_directory_ / secret.credential;
            if (auto problem = file_problem(secret.file, false, max_small_file)) {
                error(prefix + "credential", *problem);
            }
        }
    }

    load_options options_;
    std::filesystem::path credentials_directory_;
    std::vector<model_error> errors_;
};

}  // namespace

// ---- shared by the readers -----------------------------------------------------------------

namespace detail {

std::string_view shape_name(shape s) {
    switch (s) {
        case shape::nothing:
            return "nothing";
        case shape::table:
            return "a table";
        case shape::array:
            return "an array";
        case shape::string:
            return "a string";
        case shape::integer:
            return "an integer";
        case shape::floating_point:
            return "a float";
        case shape::boolean:
            return "a boolean";
        case shape::other:
            break;
    }
    return "a date or time";
}

std::string unknown_key_message(std::string_view key,
                                const std::set<std::string, std::less<>>& known) {
    std::string message = "unknown key";
    const std::string* best = nullptr;
    std::size_t best_distance = 3;
    for (const auto& candidate : known) {
        const std::size_t d = edit_distance(key, candidate);
        if (d < best_distance) {
            best_distance = d;
            best = &candidate;
        }
    }
    if (best != nullptr) {
        message += " (did you mean " + *best + "?)";
    }
    return message;
}

std::string_view parent_key(std::string_view key) {
    const auto cut = key.find_last_of(".[");
    return cut == std::string_view::npos ? std::string_view{} : key.substr(0, cut);
}

const std::vector<std::string_view>& timeout_keys() {
    static const std::vector<std::string_view> keys = [] {
        std::vector<std::string_view> out;
        for (const auto& range : duration_ranges) {
            out.push_back(range.key);
        }
        return out;
    }();
    return keys;
}

void set_override(link_timeout_overrides& overrides, std::string_view key, milliseconds value) {
    if (const duration_range* range = find_duration_range(key)) {
        overrides.*range->override_field = value;
    }
}

}  // namespace detail

// ---- the model's rules ---------------------------------------------------------------------

std::vector<model_error> check_guest(guest_config& guest, std::string_view key_prefix,
                                     const link_timeouts& defaults, load_options options) {
    guest_checker checker(options);
    checker.check(guest, std::string(key_prefix), defaults);
    return checker.take_errors();
}

std::vector<model_error> check_guests(config& c, load_options options) {
    guest_checker checker(options);
    for (std::size_t i = 0; i < c.guests.size(); ++i) {
        checker.check(c.guests[i], "guest[" + std::to_string(i) + "].", c.daemon.timeouts);
    }
    checker.check_unique_names(c.guests);
    return checker.take_errors();
}

boost::system::result<std::uint32_t, value_error> check_secret_mode(std::int64_t mode) {
    if (mode < 0 || mode > 07777) {
        return value_error{"must be between 0 and 0o7777, got " + octal(mode)};
    }
    return static_cast<std::uint32_t>(mode);
}

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
    guest_diff diff;
    for (const auto& guest : after.guests) {
        const guest_config* old = before.find_guest(guest.name);
        if (old == nullptr) {
            diff.added.push_back(guest.name);
        } else if (old->endpoint != guest.endpoint) {
            diff.changed.push_back(guest.name);
        } else if (old->timeouts != guest.timeouts || old->provision != guest.provision) {
            diff.updated.push_back(guest.name);
        } else {
            diff.unchanged.push_back(guest.name);
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
