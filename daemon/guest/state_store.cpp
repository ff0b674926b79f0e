#include "daemon/guest/state_store.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>

namespace stereos::daemon {

namespace json = boost::json;

namespace {
constexpr const char* file_name = "guests.json";
constexpr const char* temp_prefix = "guests.json.tmp-";
constexpr int format_version = 1;

std::string errno_text(int err) {
    return std::strerror(err);
}

std::string utc_stamp() {
    const std::time_t now = std::time(nullptr);
    std::tm parts{};
    gmtime_r(&now, &parts);
    std::array<char, 32> text{};
    std::strftime(text.data(), text.size(), "%Y%m%dT%H%M%SZ", &parts);
    return text.data();
}

// Parses the file's text; an error names what is wrong.
std::optional<std::string> parse_records(const std::string& text,
                                         std::vector<runtime_guest_record>& out,
                                         std::vector<std::string>& warnings) {
    boost::system::error_code ec;
    auto doc = json::parse(text, ec);
    if (ec)
        return "not valid JSON: " + ec.message();
    if (!doc.is_object())
        return "top level is not an object";
    const auto& top = doc.get_object();
    const auto* version = top.if_contains("version");
    if (!version || !version->is_int64() || version->get_int64() != format_version)
        return "missing or unsupported \"version\" (expected 1)";
    const auto* guests = top.if_contains("guests");
    if (!guests || !guests->is_array())
        return "\"guests\" is missing or not an array";
    for (std::size_t i = 0; i < guests->get_array().size(); ++i) {
        const auto& g = guests->get_array()[i];
        const auto where = "guests[" + std::to_string(i) + "]";
        if (!g.is_object())
            return where + " is not an object";
        const auto* name = g.get_object().if_contains("name");
        const auto* endpoint = g.get_object().if_contains("endpoint");
        if (!name || !name->is_string())
            return where + ".name is missing or not a string";
        if (!endpoint || !endpoint->is_string())
            return where + ".endpoint is missing or not a string";
        runtime_guest_record record{std::string(name->get_string()),
                                    std::string(endpoint->get_string()),
                                    {},
                                    {},
                                    false,
                                    {}};
        if (const auto* trusted = g.get_object().if_contains("references_trusted"))
            record.references_trusted = trusted->is_bool() && trusted->get_bool();
        if (const auto* p = g.get_object().if_contains("provision")) {
            if (!p->is_object())
                return where + ".provision is not an object";
            record.provision = p->get_object();
        }
        if (const auto* w = g.get_object().if_contains("withheld_values")) {
            if (!w->is_array())
                return where + ".withheld_values is not an array";
            for (const auto& item : w->get_array()) {
                if (!item.is_string())
                    return where + ".withheld_values holds something other than a string";
                record.withheld_values.emplace_back(item.get_string());
            }
        }
        // Damaged sealed values cost the guest its values (it waits for them), not the file.
        if (const auto* sealed = g.get_object().if_contains("sealed_values")) {
            const auto* set = sealed->if_object();
            const auto* key_id = set ? set->if_contains("key_id") : nullptr;
            const auto* values = set ? set->if_contains("values") : nullptr;
            bool well_formed = key_id && key_id->is_string() && values && values->is_object();
            if (well_formed) {
                record.sealed.key_id = key_id->get_string();
                for (const auto& [slot, text] : values->get_object()) {
                    well_formed = well_formed && text.is_string();
                    if (text.is_string())
                        record.sealed.slots.emplace(slot, text.get_string());
                }
            }
            if (!well_formed) {
                record.sealed = {};
                warnings.push_back(where +
                                   ".sealed_values is damaged (it needs a key_id string "
                                   "and a values object of strings): guest \"" +
                                   record.name + "\" needs its values again");
            }
        }
        out.push_back(std::move(record));
    }
    return std::nullopt;
}

bool write_all(int fd, const std::string& data) {
    std::size_t done = 0;
    while (done < data.size()) {
        const auto n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        done += static_cast<std::size_t>(n);
    }
    return true;
}
}  // namespace

state_store::state_store(std::filesystem::path directory)
    : directory_(std::move(directory)), file_(directory_ / file_name) {}

state_load_result state_store::load() {
    state_load_result result;
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(directory_, ec)) {
        if (entry.path().filename().string().starts_with(temp_prefix)) {
            std::filesystem::remove(entry.path(), ec);
        }
    }
    for (const auto& entry : std::filesystem::directory_iterator(directory_ / "ledgers", ec)) {
        if (entry.path().filename().string().find(".ledger.json.tmp-") != std::string::npos)
            std::filesystem::remove(entry.path(), ec);
    }
    if (!std::filesystem::exists(file_, ec))
        return result;

    // Read with the system calls, so that a read error (EACCES, EIO, EISDIR) is told from
    // content that does not parse: only the latter is moved aside.
    std::string text;
    const int fd = ::open(file_.c_str(), O_RDONLY | O_CLOEXEC);
    int read_errno = fd < 0 ? errno : 0;
    if (fd >= 0) {
        std::array<char, 65536> chunk{};
        while (true) {
            const auto n = ::read(fd, chunk.data(), chunk.size());
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0) {
                read_errno = errno;
                break;
            }
            if (n == 0)
                break;
            text.append(chunk.data(), static_cast<std::size_t>(n));
        }
        ::close(fd);
    }
    if (read_errno != 0) {
        result.unreadable = file_.string() + " cannot be read: " + errno_text(read_errno) +
                            "; it holds the runtime guests, so the daemon does not start "
                            "without it (fix it and start again)";
        return result;
    }
    std::vector<runtime_guest_record> guests;
    const auto error = parse_records(text, guests, result.warnings);
    if (!error) {
        result.guests = std::move(guests);
        return result;
    }
    result.warnings.clear();
    const std::string problem = "is corrupt: " + *error;

    auto aside = file_;
    aside += ".corrupt-" + utc_stamp();
    std::filesystem::rename(file_, aside, ec);
    if (ec) {
        result.problem = file_.string() + " " + problem + "; it could not be moved aside (" +
                         ec.message() + ") and is left in place";
    } else {
        result.problem = file_.string() + " " + problem + "; moved to " + aside.string() +
                         " and starting with no runtime guests";
    }
    return result;
}

namespace {
// Temp file and rename; `durable` also fsyncs the file and the directory.
std::optional<std::string> replace_file(const std::filesystem::path& directory,
                                        const std::filesystem::path& file, const std::string& text,
                                        const std::string& temp_name, bool durable) {
    const auto temp = directory / temp_name;
    const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return "cannot create " + temp.string() + ": " + errno_text(errno);
    const bool written = write_all(fd, text) && (!durable || ::fsync(fd) == 0);
    const int write_errno = errno;
    ::close(fd);
    if (!written) {
        ::unlink(temp.c_str());
        return "cannot write " + temp.string() + ": " + errno_text(write_errno);
    }
    if (::rename(temp.c_str(), file.c_str()) != 0) {
        const int rename_errno = errno;
        ::unlink(temp.c_str());
        return "cannot replace " + file.string() + ": " + errno_text(rename_errno);
    }
    if (durable) {
        // The rename is durable only once the directory entry is on disk.
        const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dir >= 0) {
            ::fsync(dir);
            ::close(dir);
        }
    }
    return std::nullopt;
}
}  // namespace

std::filesystem::path state_store::ledger_file(std::string_view guest) const {
    // Guest names are [A-Za-z0-9._-]: the suffix keeps "." and ".." from naming a directory.
    return directory_ / "ledgers" / (std::string(guest) + ".ledger.json");
}

boost::system::result<std::optional<delivery_ledger>, std::string> state_store::load_ledger(
    std::string_view guest) const {
    using result = boost::system::result<std::optional<delivery_ledger>, std::string>;
    const auto file = ledger_file(guest);
    std::ifstream in(file, std::ios::binary);
    if (!in) {
        if (errno == ENOENT)
            return result(boost::system::in_place_value, std::nullopt);
        return result(boost::system::in_place_error,
                      "cannot read " + file.string() + ": " + errno_text(errno));
    }
    std::stringstream text;
    text << in.rdbuf();
    boost::system::error_code ec;
    auto doc = json::parse(text.str(), ec);
    auto ledger = ec ? boost::system::result<delivery_ledger, std::string>(
                           boost::system::in_place_error, "not valid JSON: " + ec.message())
                     : delivery_ledger::from_json(doc);
    if (ledger)
        return result(boost::system::in_place_value, std::move(*ledger));
    auto aside = file;
    aside += ".corrupt-" + utc_stamp();
    std::error_code moved;
    std::filesystem::rename(file, aside, moved);
    return result(boost::system::in_place_error,
                  file.string() + " is corrupt (" + ledger.error() + "); " +
                      (moved ? "it could not be moved aside" : "moved to " + aside.string()));
}

std::optional<std::string> state_store::save_ledger(std::string_view guest,
                                                    const delivery_ledger& ledger) const {
    const auto directory = directory_ / "ledgers";
    std::error_code ec;
    std::filesystem::create_directories(directory, ec);
    if (ec)
        return "cannot create " + directory.string() + ": " + ec.message();
    return replace_file(directory, ledger_file(guest), json::serialize(ledger.to_json()) + "\n",
                        std::string(guest) + ".ledger.json.tmp-" + std::to_string(::getpid()),
                        false);
}

void state_store::remove_ledger(std::string_view guest) const {
    std::error_code ignored;
    std::filesystem::remove(ledger_file(guest), ignored);
}

std::optional<std::string> state_store::save(const std::vector<runtime_guest_record>& guests) {
    json::array list;
    for (const auto& g : guests) {
        json::object o{{"name", g.name}, {"endpoint", g.endpoint}};
        if (!g.provision.empty())
            o["provision"] = g.provision;
        if (!g.withheld_values.empty()) {
            json::array withheld;
            for (const auto& w : g.withheld_values)
                withheld.emplace_back(w);
            o["withheld_values"] = std::move(withheld);
        }
        if (g.references_trusted)
            o["references_trusted"] = true;
        if (!g.sealed.empty()) {
            json::object values;
            for (const auto& [slot, text] : g.sealed.slots)
                values[slot] = text;
            o["sealed_values"] = json::object{{"key_id", g.sealed.key_id}, {"values", values}};
        }
        list.emplace_back(std::move(o));
    }
    const std::string text =
        json::serialize(json::object{{"version", format_version}, {"guests", std::move(list)}}) +
        "\n";

    return replace_file(directory_, file_, text, temp_prefix + std::to_string(::getpid()), true);
}

}  // namespace stereos::daemon
