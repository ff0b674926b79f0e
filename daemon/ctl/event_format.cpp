#include "daemon/ctl/event_format.hpp"

#include <algorithm>
#include <initializer_list>
#include <string_view>

#include <boost/json/serialize.hpp>

namespace stereos::ctl {

namespace json = boost::json;

namespace {

std::string text_of(const json::object& o, std::string_view key) {
    const auto* v = o.if_contains(key);
    if (!v || v->is_null())
        return {};
    if (v->is_string())
        return std::string(v->get_string());
    return json::serialize(*v);
}

std::string in_parens(const std::string& text) {
    return text.empty() ? "" : " (" + text + ")";
}

// Pieces are appended, never prepended: `" " + std::string(...)` inserts at the front, where
// g++ 12 -O2 warns -Wrestrict falsely inside libstdc++ (GCC bug 105329).
void append(std::string& line, std::initializer_list<std::string_view> pieces) {
    for (const auto piece : pieces)
        line += piece;
}

}  // namespace

std::string format_event(const json::object& event) {
    const auto time = text_of(event, "time");
    const auto guest = text_of(event, "guest");
    const auto kind = text_of(event, "kind");
    std::string line;
    append(line, {time, " ", guest.empty() ? std::string_view("-") : guest, " ", kind});
    if (kind == "state") {
        const auto from = text_of(event, "from");
        append(line, {" ", from, from.empty() ? "" : " -> ", text_of(event, "to"),
                      in_parens(text_of(event, "reason"))});
        if (const auto* s = event.if_contains("snapshot"); s && s->is_bool() && s->get_bool())
            line += " [current]";
    } else if (kind == "lifecycle") {
        append(line, {" ", text_of(event, "state"), in_parens(text_of(event, "message"))});
    } else if (kind == "link") {
        append(line, {" ", text_of(event, "event"), in_parens(text_of(event, "reason"))});
    } else if (kind == "provision") {
        const auto step = text_of(event, "step");
        append(line, {" ", text_of(event, "state"), step.empty() ? "" : " at ", step,
                      in_parens(text_of(event, "error"))});
        if (event.contains("sent"))
            append(line, {": ", text_of(event, "sent"), " sent, ", text_of(event, "already"),
                          " already delivered in this run"});
    } else if (kind == "overflow") {
        append(line, {": ", text_of(event, "reason")});
    } else {
        json::object rest = event;
        for (auto key : {"seq", "time", "guest", "kind"})
            rest.erase(key);
        append(line, {" ", json::serialize(rest)});
    }
    return line;
}

std::string format_table(const std::vector<std::vector<std::string>>& rows) {
    std::vector<std::size_t> widths;
    for (const auto& row : rows) {
        widths.resize(std::max(widths.size(), row.size()), 0);
        for (std::size_t i = 0; i < row.size(); ++i)
            widths[i] = std::max(widths[i], row[i].size());
    }
    std::string out;
    for (const auto& row : rows) {
        std::string line;
        for (std::size_t i = 0; i < row.size(); ++i) {
            line += row[i];
            if (i + 1 < row.size())
                line += std::string(widths[i] - row[i].size() + 2, ' ');
        }
        out += line + "\n";
    }
    return out;
}

std::string format_seconds(long long seconds) {
    if (seconds < 0)
        return "-";
    std::string out;
    const long long days = seconds / 86400, hours = seconds / 3600 % 24,
                    minutes = seconds / 60 % 60, secs = seconds % 60;
    if (days)
        out += std::to_string(days) + "d";
    if (days || hours)
        out += std::to_string(hours) + "h";
    if (days || hours || minutes)
        out += std::to_string(minutes) + "m";
    out += std::to_string(secs) + "s";
    return out;
}

}  // namespace stereos::ctl
