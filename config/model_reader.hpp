// Reads a parsed document (the config file's TOML, an API request's JSON) into the config model,
// reporting only the document's shape: missing keys, wrong types, unknown keys. The rules about
// the values themselves are check_guest's, so both sources obey the same ones. Internal to
// stereos_config.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"

namespace stereos::config::detail {

// What a document's node holds, named as in "expected a string, got an integer".
enum class shape { nothing, table, array, string, integer, floating_point, boolean, other };
std::string_view shape_name(shape s);

// "unknown key", with "(did you mean X?)" when a known key is within two edits.
std::string unknown_key_message(std::string_view key,
                                const std::set<std::string, std::less<>>& known);

// The key path holding `key`: "a.b[1].c" -> "a.b[1]" -> "a.b" -> "a" -> "".
std::string_view parent_key(std::string_view key);

// Keys a reader could not take (missing, or of the wrong type), so the model holds their
// default. The model's complaint about such a key or anything in it only repeats the reader's
// error; for a wrongly typed key so does one about the table holding it ("set exactly one of
// file or credential" when `file` was a number). Those complaints are not reported.
class unread_keys {
  public:
    void add(std::string key, bool hides_its_table) {
        keys_.push_back({std::move(key), hides_its_table});
    }
    bool hide(std::string_view model_key) const {
        for (const auto& [key, hides_its_table] : keys_) {
            const bool inside = model_key.starts_with(key) &&
                                (model_key.size() == key.size() || model_key[key.size()] == '.' ||
                                 model_key[key.size()] == '[');
            if (inside || (hides_its_table && model_key == parent_key(key))) {
                return true;
            }
        }
        return false;
    }

  private:
    std::vector<std::pair<std::string, bool>> keys_;
};

// A shape error, named by its key path like model_error.
struct shape_error {
    std::string key;
    std::string message;
};

// `Document` adapts one parsed format:
//   shape shape_of(const node&); const node* find(const table&, std::string_view key);
//   const table& table_of(const node&); std::size_t size_of(const node& array);
//   const node& element(const node& array, std::size_t i); std::string_view string_of(const node&);
//   std::int64_t integer_of(const node&); bool boolean_of(const node&);
//   void note(const std::string& key, const node&): where the key is, for messages (the first
//   note of a key wins); for_each_key(const table&, const std::string& prefix, f): calls
//   f(std::string_view key) for every key, noting where each is.
template <class Document>
class model_reader {
  public:
    using node = typename Document::node;
    using table = typename Document::table;

    explicit model_reader(Document& document) : document_(document) {}

    std::vector<shape_error>& errors() { return errors_; }
    const unread_keys& unread() const { return unread_; }

    // The daemon's settings are only ever read from the file; their rules are checked here.
    void read_daemon(const table& t, const std::string& prefix, daemon_settings& out) {
        table_reader reader{*this, t, prefix};
        if (auto path = reader.get_string("api_socket")) {
            // sun_path holds 108 bytes including the terminating NUL.
            if (path->empty() || path->front() != '/') {
                error(prefix + "api_socket", "must be an absolute path, got " + quoted(*path));
            } else if (path->size() > 107) {
                error(prefix + "api_socket", "too long for a unix socket path (" +
                                                 std::to_string(path->size()) +
                                                 " bytes, at most 107)");
            } else {
                out.api_socket = std::string(*path);
            }
        }
        for (auto [key, into] : {std::pair{"api_group", &out.api_group},
                                 std::pair{"api_read_group", &out.api_read_group}}) {
            auto group = reader.get_string(key);
            if (!group) {
                continue;
            }
            if (!group->empty() &&
                (group->size() > 32 || !is_name(*group) || group->front() == '-')) {
                error(prefix + key,
                      "invalid group name " + quoted(*group) +
                          " (1 to 32 of A-Z a-z 0-9 . _ -, not starting with -; \"\" = none)");
            } else {
                *into = std::string(*group);
            }
        }
        if (auto path = reader.get_string("state_dir")) {
            if (path->empty() || path->front() != '/') {
                error(prefix + "state_dir", "must be an absolute path, got " + quoted(*path));
            } else {
                out.state_dir = std::string(*path);
            }
        }
        if (auto text = reader.get_string("log_level")) {
            if (auto level = parse_log_level(*text)) {
                out.level = *level;
            } else {
                error(prefix + "log_level",
                      "unknown log level " + quoted(*text) +
                          " (expected trace, debug, info, notice, warning or error)");
            }
        }
        if (const node* n = reader.get("api_max_connections", shape::integer)) {
            const std::int64_t value = document_.integer_of(*n);
            if (value < 1 || value > 65536) {
                error(prefix + "api_max_connections",
                      "must be between 1 and 65536, got " + std::to_string(value));
            } else {
                out.api_max_connections = static_cast<std::size_t>(value);
            }
        }
        if (const node* n = reader.get("hand_over_connections", shape::boolean))
            out.hand_over_connections = document_.boolean_of(*n);
        link_timeout_overrides read;
        read_durations(reader, read);
        out.timeouts = read.resolve(out.timeouts);
        reader.report_unknown_keys();
    }

    // A guest's keys as written; check_guest judges the values.
    void read_guest(const table& t, const std::string& prefix, guest_config& out) {
        table_reader reader{*this, t, prefix};
        reader.require("name", out.name);
        reader.require("endpoint", out.endpoint_text);
        read_durations(reader, out.overrides);
        if (const node* n = reader.get("provision", shape::table)) {
            read_provision(document_.table_of(*n), prefix + "provision.", out.provision);
        }
        reader.report_unknown_keys();
    }

    // A [guest.provision] table, or the API's provision object.
    void read_provision(const table& t, const std::string& prefix, provision_config& out) {
        table_reader reader{*this, t, prefix};
        reader.take("config_file", out.config_file);
        // Values are copied once, into the model; shape errors never quote them.
        reader.take("config", out.config_content);
        for_each_table(reader, "ssh_keys", out.ssh_keys,
                       [&](table_reader& key, ssh_key_config& into) {
                           key.require("user", into.user);
                           key.take("public_key", into.public_key);
                           key.take("public_key_file", into.public_key_file);
                       });
        for_each_table(reader, "secrets", out.secrets,
                       [&](table_reader& secret, secret_config& into) {
                           secret.require("name", into.name);
                           secret.take("value", into.value);
                           secret.take("file", into.file);
                           secret.take("credential", into.credential);
                           if (const node* mode = secret.get("mode", shape::integer)) {
                               auto checked = check_secret_mode(document_.integer_of(*mode));
                               if (checked) {
                                   into.mode = *checked;
                               } else {
                                   error(secret.key_path("mode"), checked.error().message);
                               }
                           }
                       });
        for_each_table(reader, "mounts", out.mounts,
                       [&](table_reader& mount, protocol::mount_payload& into) {
                           mount.require("tag", into.tag);
                           mount.require("guest_path", into.guest_path);
                           mount.require("fs_type", into.fs_type);
                           if (const node* n = mount.get("read_only", shape::boolean)) {
                               into.read_only = document_.boolean_of(*n);
                           }
                       });
        reader.report_unknown_keys();
    }

    void error(std::string key, std::string message) {
        errors_.push_back({std::move(key), std::move(message)});
    }

    void wrong_shape(const std::string& key, shape expected, const node& got) {
        error(key, "expected " + std::string(shape_name(expected)) + ", got " +
                       std::string(shape_name(document_.shape_of(got))));
        unread_.add(key, true);
    }

    // Reads the keys of one table, remembering which were asked for so that the rest can be
    // reported as unknown: a typo must not pass silently.
    struct table_reader {
        table_reader(model_reader& owner_, const table& t_, std::string prefix_)
            : owner(owner_), t(t_), prefix(std::move(prefix_)) {}

        model_reader& owner;
        const table& t;
        std::string prefix;  // "guest[0]." etc.
        std::set<std::string, std::less<>> known;

        std::string key_path(std::string_view key) const { return prefix + std::string(key); }

        // The node for `key` if present and of `expected` (nothing = any); reports a wrong shape.
        const node* get(std::string_view key, shape expected = shape::nothing) {
            known.emplace(key);
            const node* n = owner.document_.find(t, key);
            if (n == nullptr) {
                return nullptr;
            }
            owner.document_.note(key_path(key), *n);
            if (expected != shape::nothing && owner.document_.shape_of(*n) != expected) {
                owner.wrong_shape(key_path(key), expected, *n);
                return nullptr;
            }
            return n;
        }

        std::optional<std::string_view> get_string(std::string_view key) {
            const node* n = get(key, shape::string);
            if (n == nullptr) {
                return std::nullopt;
            }
            return owner.document_.string_of(*n);
        }

        // A required string: its absence is reported at the table.
        std::optional<std::string_view> require_string(std::string_view key) {
            if (owner.document_.find(t, key) == nullptr) {
                known.emplace(key);
                owner.error(key_path(key), "missing (required)");
                owner.unread_.add(key_path(key), false);
                return std::nullopt;
            }
            return get_string(key);
        }

        // A string key into a model field (a string, a path or an optional string), if given:
        // copied once, straight from the document.
        template <class Field>
        void take(std::string_view key, Field& into) {
            if (auto text = get_string(key)) {
                into = std::string(*text);
            }
        }
        template <class Field>
        void require(std::string_view key, Field& into) {
            if (auto text = require_string(key)) {
                into = std::string(*text);
            }
        }

        void report_unknown_keys() {
            owner.document_.for_each_key(t, prefix, [&](std::string_view key) {
                if (!known.contains(key)) {
                    // Only the key is named, never the value: it could be a secret under a typo.
                    owner.error(key_path(key), unknown_key_message(key, known));
                }
            });
        }
    };

  private:
    static std::string quoted(std::string_view text) { return "\"" + std::string(text) + "\""; }
    static bool is_name(std::string_view text) {
        return text.find_first_not_of(
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") ==
               std::string_view::npos;
    }

    void read_durations(table_reader& reader, link_timeout_overrides& out) {
        for (std::string_view key : timeout_keys()) {
            const node* n = reader.get(key);
            if (n == nullptr) {
                continue;
            }
            if (document_.shape_of(*n) != shape::string) {
                error(reader.key_path(key), "expected a duration string such as \"10s\", got " +
                                                std::string(shape_name(document_.shape_of(*n))));
                unread_.add(reader.key_path(key), true);
                continue;
            }
            auto parsed = parse_timeout(key, document_.string_of(*n));
            if (!parsed) {
                error(reader.key_path(key), parsed.error().message);
                continue;
            }
            set_override(out, key, *parsed);
        }
    }

    // An array of tables; every element gets a model entry (left at its defaults if it is not a
    // table), so that the model's index is the document's.
    template <class Item, class Read>
    void for_each_table(table_reader& reader, std::string_view key, std::vector<Item>& out,
                        Read read) {
        const node* n = reader.get(key, shape::array);
        if (n == nullptr) {
            return;
        }
        const std::size_t count = document_.size_of(*n);
        for (std::size_t i = 0; i < count; ++i) {
            const std::string path = reader.key_path(key) + "[" + std::to_string(i) + "]";
            const node& element = document_.element(*n, i);
            document_.note(path, element);
            Item& item = out.emplace_back();
            if (document_.shape_of(element) != shape::table) {
                error(path, "expected " + std::string(shape_name(shape::table)) + ", got " +
                                std::string(shape_name(document_.shape_of(element))));
                unread_.add(path, false);
                continue;
            }
            table_reader element_reader{*this, document_.table_of(element), path + "."};
            read(element_reader, item);
            element_reader.report_unknown_keys();
        }
    }

    Document& document_;
    std::vector<shape_error> errors_;
    unread_keys unread_;
};

}  // namespace stereos::config::detail
