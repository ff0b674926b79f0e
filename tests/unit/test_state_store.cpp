// state_store: runtime guests survive restarts; corrupt files are set aside, never emptied.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

#include "daemon/state_store.hpp"
#include "tests/support/child_process.hpp"

namespace fs = std::filesystem;
using stereos::daemon::runtime_guest_record;
using stereos::daemon::state_store;

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

BOOST_AUTO_TEST_SUITE_END()
