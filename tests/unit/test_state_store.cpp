// state_store: runtime guests survive restarts; corrupt files are set aside, never emptied.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

#include "daemon/guest/state_store.hpp"
#include "tests/support/child_process.hpp"

namespace fs = std::filesystem;
using stereos::daemon::runtime_guest_record;
using stereos::daemon::state_store;

using namespace std::chrono_literals;

namespace {
// The state directory is the daemon's own: owner-only, as in production.
struct temp_dir : stereos::testing::temp_directory {
    temp_dir() : temp_directory("stereos-state", 0700) {}
};

using stereos::testing::write_text_file;

std::vector<std::string> names_in(const fs::path& dir) {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir))
        names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
}
}  // namespace

BOOST_AUTO_TEST_SUITE(runtime_guest_persistence)

BOOST_AUTO_TEST_CASE(a_missing_file_is_an_empty_list) {
    temp_dir dir;
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST(loaded.guests.empty());
    BOOST_TEST(!loaded.problem.has_value());
}

BOOST_AUTO_TEST_CASE(saved_guests_load_back_identically) {
    temp_dir dir;
    const std::vector<runtime_guest_record> guests{
        {"vm1", "tcp:127.0.0.1:1024", {}, {}, false},
        {"vm2",
         "vsock:7:1024",
         boost::json::parse(R"({"mounts":[{"tag":"t","guest_path":"/w","fs_type":"9p"}]})")
             .as_object(),
         {},
         false},
        {"vm3",
         "unix:/run/vm3.sock",
         boost::json::parse(R"({"secrets":[{"name":"K","file":"/etc/k"}]})").as_object(),
         {"config", "secret API_KEY"},
         true},
    };
    BOOST_TEST(!state_store(dir.path()).save(guests).has_value());
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST(!loaded.problem.has_value());
    BOOST_TEST((loaded.guests == guests));
    BOOST_TEST(names_in(dir.path()) == std::vector<std::string>{"guests.json"},
               boost::test_tools::per_element());
    const auto perms = fs::status(dir.path() / "guests.json").permissions();
    BOOST_TEST(((perms & fs::perms::others_read) == fs::perms::none));
}

BOOST_AUTO_TEST_CASE(a_corrupt_file_is_set_aside_and_reported) {
    temp_dir dir;
    write_text_file(dir.path() / "guests.json", R"({"version":1,"guests":[{"name":"vm1")");
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST(loaded.guests.empty());
    BOOST_TEST_REQUIRE(loaded.problem.has_value());
    BOOST_TEST(loaded.problem->find("is corrupt: not valid JSON") != std::string::npos);
    BOOST_TEST(loaded.problem->find("moved to") != std::string::npos);
    const auto names = names_in(dir.path());
    BOOST_TEST_REQUIRE(names.size() == 1u);
    BOOST_TEST(names[0].starts_with("guests.json.corrupt-"));
    // The content is kept for the operator.
    std::ifstream kept(dir.path() / names[0]);
    std::stringstream text;
    text << kept.rdbuf();
    BOOST_TEST(text.str().find("vm1") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(a_structurally_wrong_file_names_the_problem) {
    temp_dir dir;
    write_text_file(dir.path() / "guests.json",
                    R"({"version":1,"guests":[{"name":"vm1","endpoint":5}]})");
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST_REQUIRE(loaded.problem.has_value());
    BOOST_TEST(loaded.problem->find("guests[0].endpoint is missing or not a string") !=
               std::string::npos);
}

BOOST_AUTO_TEST_CASE(an_unknown_version_is_not_guessed_at) {
    temp_dir dir;
    write_text_file(dir.path() / "guests.json", R"({"version":2,"guests":[]})");
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST_REQUIRE(loaded.problem.has_value());
    BOOST_TEST(loaded.problem->find("version") != std::string::npos);
}

BOOST_AUTO_TEST_CASE(leftovers_of_an_interrupted_write_are_removed_and_the_old_file_kept) {
    temp_dir dir;
    state_store store(dir.path());
    BOOST_TEST(!store.save({{"vm1", "tcp:127.0.0.1:1", {}, {}}}).has_value());
    write_text_file(dir.path() / "guests.json.tmp-12345", R"({"version":1,"gue)");
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST(loaded.guests.size() == 1u);
    BOOST_TEST(names_in(dir.path()) == std::vector<std::string>{"guests.json"},
               boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(a_failed_save_leaves_the_previous_file_intact) {
    temp_dir dir;
    state_store store(dir.path());
    BOOST_TEST(!store.save({{"vm1", "tcp:127.0.0.1:1", {}, {}}}).has_value());
    // Occupy the temp file name with a directory so creating it fails.
    fs::create_directory(dir.path() / ("guests.json.tmp-" + std::to_string(::getpid())));
    auto error = store.save({{"vm2", "tcp:127.0.0.1:2", {}, {}}});
    BOOST_TEST_REQUIRE(error.has_value());
    BOOST_TEST(error->find("cannot create") != std::string::npos);
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST_REQUIRE(loaded.guests.size() == 1u);
    BOOST_TEST(loaded.guests[0].name == "vm1");
}

// A file that exists but cannot be read (here: a directory in its place, EISDIR; EACCES and EIO
// take the same path) is not corrupt: nothing is moved aside, and the caller must not start.
BOOST_AUTO_TEST_CASE(an_unreadable_file_is_reported_and_left_alone) {
    temp_dir dir;
    fs::create_directory(dir.path() / "guests.json");
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST(!loaded.problem.has_value());
    BOOST_TEST_REQUIRE(loaded.unreadable.has_value());
    BOOST_TEST(loaded.unreadable->find("cannot be read: Is a directory") != std::string::npos,
               *loaded.unreadable);
    BOOST_TEST(names_in(dir.path()) == std::vector<std::string>{"guests.json"},
               boost::test_tools::per_element());
}

// A guest's delivery ledger: digests and the run, round-tripped; no file is no ledger; a
// corrupt one is set aside and reported.
BOOST_AUTO_TEST_CASE(ledgers_load_back_and_a_corrupt_one_is_set_aside) {
    temp_dir dir;
    const state_store store(dir.path());
    BOOST_TEST_REQUIRE(store.load_ledger("vm1").has_value());
    BOOST_TEST(!store.load_ledger("vm1")->has_value());
    stereos::daemon::delivery_ledger ledger;
    using steady = std::chrono::steady_clock;
    ledger.start_run({"boot-1", steady::time_point{} + 5s, steady::time_point{} + 6s,
                      steady::time_point{} + 90s});
    ledger.record({"secret K", "ab12", std::chrono::system_clock::time_point{} + 7s,
                   stereos::daemon::delivery_origin::provisioning});
    ledger.add_api_key("admin", "ssh-ed25519 AAAAkey a@b");
    BOOST_TEST(!store.save_ledger("vm1", ledger).has_value());
    auto loaded = store.load_ledger("vm1");
    BOOST_TEST_REQUIRE(loaded.has_value());
    BOOST_TEST_REQUIRE(loaded->has_value());
    BOOST_TEST((**loaded == ledger));

    write_text_file(dir.path() / "ledgers" / "vm2.ledger.json", "{\"version\":1,\"items\":5}");
    auto corrupt = store.load_ledger("vm2");
    BOOST_TEST_REQUIRE(corrupt.has_error());
    BOOST_TEST(corrupt.error().find("\"items\" is missing or not an array") != std::string::npos,
               corrupt.error());
    BOOST_TEST(!fs::exists(dir.path() / "ledgers" / "vm2.ledger.json"));
}

BOOST_AUTO_TEST_SUITE_END()
