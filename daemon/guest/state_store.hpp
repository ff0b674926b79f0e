// Persistence of runtime-added guests in state_dir/guests.json, so a restart (even after
// SIGKILL) brings them back. Writes are atomic: temp file, fsync, rename, fsync the directory.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <boost/json/object.hpp>
#include <boost/system/result.hpp>

#include "daemon/guest/delivery_ledger.hpp"
#include "daemon/guest/value_seal.hpp"

namespace stereos::daemon {

struct runtime_guest_record {
    std::string name;
    std::string endpoint;
    // The API's provision object without its values (secrets' `value`, `config`): those are
    // in memory, and sealed in `sealed` when the daemon has a key. Empty if none.
    boost::json::object provision;
    // What was left out, e.g. "config", "secret API_KEY": after a restart the guest needs these
    // values again before it can be provisioned.
    std::vector<std::string> withheld_values;
    // Set only when root or the daemon's user supplied the provisioning: only then are host
    // files and credentials it names followed after a restart. Records without it (e.g. written
    // before callers were told apart) are held to the values-only rules.
    bool references_trusted = false;
    // The withheld values sealed with the daemon's key (value_seal), never in plaintext. Empty
    // when the daemon that wrote the record had no key.
    sealed_values sealed{};
    bool operator==(const runtime_guest_record&) const = default;
};

struct state_load_result {
    std::vector<runtime_guest_record> guests;
    // Set when the file was corrupt: what happened and where it was moved.
    std::optional<std::string> problem;
    // Set when the file exists but cannot be read (EACCES, EIO): the daemon must not start
    // without the guests it holds, nor move it aside.
    std::optional<std::string> unreadable;
    // Damage confined to one guest (its sealed values): the guest is kept without it.
    std::vector<std::string> warnings;
};

class state_store {
  public:
    explicit state_store(std::filesystem::path directory);

    // Reads guests.json (a missing file is an empty list). A corrupt file is renamed to
    // guests.json.corrupt-<UTC time> and reported, never silently emptied; one that cannot be
    // read is left in place and reported as `unreadable`. Leftover temp files of an interrupted
    // write are removed.
    state_load_result load();

    // Delivery ledgers, one file per guest under ledgers/. Written atomically (temp file,
    // rename) but not fsynced: only a host crash could lose a write, and a host reboot starts
    // every guest's run over anyway (a new boot_id).
    // nullopt: no ledger yet. An error names the file and what is wrong; the file is moved aside.
    boost::system::result<std::optional<delivery_ledger>, std::string> load_ledger(
        std::string_view guest) const;
    std::optional<std::string> save_ledger(std::string_view guest,
                                           const delivery_ledger& ledger) const;
    void remove_ledger(std::string_view guest) const;
    // The key of the ledger's digests: made on first use, kept in the state directory.
    std::filesystem::path digest_key_file() const { return directory_ / "ledger.key"; }

    // Replaces guests.json atomically; on failure the previous file is intact and the error
    // is returned.
    std::optional<std::string> save(const std::vector<runtime_guest_record>& guests);

    const std::filesystem::path& file() const noexcept { return file_; }

    std::filesystem::path ledger_file(std::string_view guest) const;

  private:
    std::filesystem::path directory_;
    std::filesystem::path file_;
};

}  // namespace stereos::daemon
