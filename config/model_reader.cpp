// The non-template parts of model_reader.hpp, shared by the TOML and the JSON reader.
#include "config/model_reader.hpp"

#include <algorithm>

namespace stereos::config::detail {

namespace {

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

}  // namespace

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

}  // namespace stereos::config::detail
