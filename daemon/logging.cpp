#include "daemon/logging.hpp"

#include <sys/stat.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <vector>

#include <boost/core/null_deleter.hpp>
#include <boost/log/attributes/value_extraction.hpp>
#include <boost/log/core.hpp>
#include <boost/log/sinks/basic_sink_backend.hpp>
#include <boost/log/sinks/sync_frontend.hpp>
#include <boost/log/sinks/text_ostream_backend.hpp>
#include <boost/log/sources/record_ostream.hpp>
#include <boost/log/sources/severity_logger.hpp>

#define SD_JOURNAL_SUPPRESS_LOCATION
#include <systemd/sd-journal.h>

namespace stereos::log {

namespace logging = boost::log;
namespace sinks = boost::log::sinks;
namespace attrs = boost::log::attributes;

namespace {

constexpr std::array<std::string_view, 6> severity_names{"trace",  "debug",   "info",
                                                         "notice", "warning", "error"};

// Field name in the journal, attribute name in Boost.Log.
struct field_name {
    const char* journal;
    const char* attribute;
};
constexpr std::array<field_name, 11> field_names{{
    {"GUEST", "Guest"},
    {"GUEST_STATE", "GuestState"},
    {"GUEST_ENDPOINT", "GuestEndpoint"},
    {"MESSAGE_TYPE", "MessageType"},
    {"REQUEST", "Request"},
    {"MESSAGE_ID", "MessageId"},
    {"API_PEER_UID", "ApiPeerUid"},
    {"API_PEER_GID", "ApiPeerGid"},
    {"API_PEER_PID", "ApiPeerPid"},
    {"API_PEER_USER", "ApiPeerUser"},
    {"API_STATUS", "ApiStatus"},
}};

std::array<std::string_view, 11> field_values(const fields& f) {
    return {f.guest,    f.guest_state, f.endpoint, f.message_type, f.request, f.message_id,
            f.peer_uid, f.peer_gid,    f.peer_pid, f.peer_user,    f.status};
}

// The source tree's absolute path, given to this file only by daemon/CMakeLists.txt.
#ifndef STEREOS_SOURCE_DIR
#define STEREOS_SOURCE_DIR ""
#endif

severity current_level = severity::info;

logging::sources::severity_logger<severity>& source() {
    static logging::sources::severity_logger<severity> instance;
    return instance;
}

template <class T>
std::optional<T> value_of(const logging::record_view& record, const char* name) {
    auto v = logging::extract<T>(name, record);
    if (!v)
        return std::nullopt;
    return *v;
}

// Writes every record to the journal with sd_journal_sendv, our fields included.
class journal_backend : public sinks::basic_sink_backend<sinks::synchronized_feeding> {
  public:
    void consume(const logging::record_view& record) {
        std::vector<std::string> entries;
        entries.reserve(12);
        const auto level = value_of<severity>(record, "Severity").value_or(severity::info);
        entries.push_back("MESSAGE=" + value_of<std::string>(record, "Message").value_or(""));
        entries.push_back("PRIORITY=" + std::to_string(syslog_priority(level)));
        entries.emplace_back("SYSLOG_IDENTIFIER=stereos-hostd");
        if (auto file = value_of<std::string>(record, "CodeFile"))
            entries.push_back("CODE_FILE=" + *file);
        if (auto line = value_of<unsigned>(record, "CodeLine"))
            entries.push_back("CODE_LINE=" + std::to_string(*line));
        if (auto func = value_of<std::string>(record, "CodeFunc"))
            entries.push_back("CODE_FUNC=" + *func);
        for (const auto& name : field_names) {
            if (auto v = value_of<std::string>(record, name.attribute)) {
                entries.push_back(std::string(name.journal) + "=" + *v);
            }
        }
        std::vector<iovec> iov;
        iov.reserve(entries.size());
        for (auto& e : entries)
            iov.push_back({e.data(), e.size()});
        sd_journal_sendv(iov.data(), static_cast<int>(iov.size()));
    }
};

// Readable lines on stderr; "<N>" priority prefixes when systemd reads our stderr.
class text_backend : public sinks::basic_sink_backend<sinks::synchronized_feeding> {
  public:
    explicit text_backend(bool under_systemd) : under_systemd_(under_systemd) {}

    void consume(const logging::record_view& record) {
        const auto level = value_of<severity>(record, "Severity").value_or(severity::info);
        std::string line;
        if (under_systemd_) {
            // Appended, not `"<" + std::to_string(...)`: that prepend makes g++ 12 -O2 warn
            // -Wrestrict falsely inside libstdc++ (GCC bug 105329).
            line = "<";
            line += std::to_string(syslog_priority(level));
            line += '>';
        } else {
            line = timestamp() + " " + std::string(to_string(level)) + " ";
        }
        line += value_of<std::string>(record, "Message").value_or("");
        line += '\n';
        std::fwrite(line.data(), 1, line.size(), stderr);
        std::fflush(stderr);
    }

  private:
    static std::string timestamp() {
        timespec now{};
        clock_gettime(CLOCK_REALTIME, &now);
        tm parts{};
        gmtime_r(&now.tv_sec, &parts);
        std::array<char, 40> text{};
        const auto n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%S", &parts);
        std::snprintf(text.data() + n, text.size() - n, ".%03ldZ", now.tv_nsec / 1000000);
        return text.data();
    }

    bool under_systemd_;
};

}  // namespace

std::string_view to_string(severity level) noexcept {
    return severity_names[static_cast<std::size_t>(level)];
}

std::optional<severity> parse_severity(std::string_view text) noexcept {
    for (std::size_t i = 0; i < severity_names.size(); ++i) {
        if (severity_names[i] == text)
            return static_cast<severity>(i);
    }
    return std::nullopt;
}

int syslog_priority(severity level) noexcept {
    switch (level) {
        case severity::error:
            return 3;
        case severity::warning:
            return 4;
        case severity::notice:
            return 5;
        case severity::info:
            return 6;
        case severity::debug:
        case severity::trace:
            return 7;
    }
    return 6;
}

void setup(sink_kind sink, severity level, bool under_systemd) {
    auto core = logging::core::get();
    core->remove_all_sinks();
    if (sink == sink_kind::journal) {
        core->add_sink(boost::make_shared<sinks::synchronous_sink<journal_backend>>());
    } else {
        core->add_sink(boost::make_shared<sinks::synchronous_sink<text_backend>>(
            boost::make_shared<text_backend>(under_systemd)));
    }
    set_level(level);
}

void set_level(severity level) {
    current_level = level;
}
severity level() noexcept {
    return current_level;
}
bool enabled(severity level) noexcept {
    return level >= current_level;
}

std::string_view source_relative_path(std::string_view path) noexcept {
    constexpr std::string_view source_dir = STEREOS_SOURCE_DIR;
    if (!source_dir.empty() && path.size() > source_dir.size() && path.starts_with(source_dir) &&
        path[source_dir.size()] == '/')
        return path.substr(source_dir.size() + 1);
    // Some generators name sources relative to the object's directory in a build tree inside
    // the source tree ("../../daemon/x.cpp").
    while (path.starts_with("../") || path.starts_with("./"))
        path.remove_prefix(path.starts_with("./") ? 2 : 3);
    return path;
}

std::string readable_function_name(std::string_view name) {
    if (const auto with = name.find(" [with "); with != std::string_view::npos)
        name = name.substr(0, with);  // g++'s template arguments
    // Parameter lists go, nested ones too ("f(int)::<lambda(int)>" -> "f::<lambda>"), and with
    // them a coroutine actor's "...Frame*" parameter; "operator()" keeps its parentheses.
    std::string bare;
    int parens = 0;
    for (std::size_t i = 0; i < name.size(); ++i) {
        const char c = name[i];
        if (c == '(' && parens == 0 && bare.ends_with("operator") && name.substr(i, 2) == "()") {
            bare += "()";
            ++i;
        } else if (c == '(') {
            ++parens;
        } else if (c == ')') {
            parens = parens > 0 ? parens - 1 : 0;
        } else if (parens == 0) {
            bare += c;
        }
    }
    // Qualifiers that followed the parameter list.
    for (bool trimmed = true; trimmed;) {
        trimmed = false;
        for (std::string_view suffix : {" const", " volatile", " noexcept", " &&", " &"}) {
            if (bare.ends_with(suffix)) {
                bare.resize(bare.size() - suffix.size());
                trimmed = true;
            }
        }
    }
    // The return type ends at the last space outside template brackets.
    std::size_t start = 0;
    int angles = 0;
    for (std::size_t i = 0; i < bare.size(); ++i) {
        if (bare[i] == '<')
            ++angles;
        else if (bare[i] == '>' && angles > 0)
            --angles;
        else if (bare[i] == ' ' && angles == 0)
            start = i + 1;
    }
    return bare.substr(start);
}

bool stderr_is_journal() {
    const char* stream = std::getenv("JOURNAL_STREAM");
    if (!stream)
        return false;
    struct stat st {};
    if (fstat(STDERR_FILENO, &st) != 0)
        return false;
    unsigned long long device = 0, inode = 0;
    if (std::sscanf(stream, "%llu:%llu", &device, &inode) != 2)
        return false;
    return device == st.st_dev && inode == st.st_ino;
}

void write(severity level, std::string_view message, const fields& structured,
           std::source_location where) {
    if (!enabled(level))
        return;
    auto& lg = source();
    auto record = lg.open_record(logging::keywords::severity = level);
    if (!record)
        return;
    auto& values = record.attribute_values();
    auto add = [&values](const char* name, auto value) {
        values.insert(name, attrs::make_attribute_value(std::move(value)));
    };
    add("CodeFile", std::string(source_relative_path(where.file_name())));
    add("CodeLine", static_cast<unsigned>(where.line()));
    add("CodeFunc", readable_function_name(where.function_name()));
    const auto values_in = field_values(structured);
    for (std::size_t i = 0; i < field_names.size(); ++i) {
        if (!values_in[i].empty())
            add(field_names[i].attribute, std::string(values_in[i]));
    }
    // The default journal output and the console show only the message: it names its guest.
    if (structured.guest.empty())
        add("Message", std::string(message));
    else
        add("Message", std::string(structured.guest) + ": " + std::string(message));
    lg.push_record(std::move(record));
}

}  // namespace stereos::log
