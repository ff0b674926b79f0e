// Persistence of runtime-added guests in state_dir/guests.json, so a restart (even after
// SIGKILL) brings them back. Writes are atomic: temp file, fsync, rename, fsync the directory.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/object.hpp>

namespace stereos::daemon {

struct runtime_guest_record {
    std::string name;
    std::string endpoint;
    // The API's provision object without its values (secrets' `value`, `config`): those stay
    // in memory only. Empty if none.
    boost::json::object provision;
    // What was left out, e.g. "config", "secret API_KEY": after a restart the guest needs these
    // values again before it can be provisioned.
    std::vector<std::string> withheld_values;
    // Set only when root or the daemon's user supplied the provisioning: only then are host
    // files and credentials it names followed after a restart. Records without it (e.g. written
    // before callers were told apart) are held to the values-only rules.
    bool references_trusted = false;
    bool operator==(const runtime_guest_record&) const = default;
};

struct state_load_result {
    std::vector<runtime_guest_record> guests;
    // Set when the file was corrupt or unreadable: what happened and where it was moved.
    std::optional<std::string> problem;
};

class state_store {
  public:
    explicit state_store(std::filesystem::path directory);

    // Reads guests.json (a missing file is an empty list). A corrupt or unreadable file is
    // renamed to guests.json.corrupt-<UTC time> and reported, never silently emptied.
    // Leftover temp files of an interrupted write are removed.
    state_load_result load();

    // Replaces guests.json atomically; on failure the previous file is intact and the error
    // is returned.
    std::optional<std::string> save(const std::vector<runtime_guest_record>& guests);

    const std::filesystem::path& file() const noexcept { return file_; }

  private:
    std::filesystem::path directory_;
    std::filesystem::path file_;
};

}  // namespace stereos::daemon
