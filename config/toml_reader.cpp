// The TOML reader (toml_reader.hpp): toml_document adapts toml++ to model_reader, and the loader
// turns shape and model errors, both named by key path, into "<file>:<line>: <key>: <what>".
#include "config/toml_reader.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include <toml++/toml.h>

#include "config/model_reader.hpp"

namespace stereos::config {

namespace {

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
    loader(std::string_view source_name, load_options options, const file_probe& files)
        : source_(source_name), options_(options), files_(files) {}

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
        for (auto& e : check_guests(result, options_, files_)) {
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
    const file_probe& files_;
    bool refused_references_ = false;
    // ((line, column), message)
    std::vector<std::pair<std::pair<std::uint32_t, std::uint32_t>, std::string>> errors_;
};

}  // namespace

config_result read_toml_config(std::string_view text, std::string_view source_name,
                               load_options options, const file_probe& files) {
    return loader(source_name, options, files).load(text);
}

config_result load_config_text(std::string_view text, std::string_view source_name,
                               load_options options) {
    return read_toml_config(text, source_name, options, host_file_probe());
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

}  // namespace stereos::config
