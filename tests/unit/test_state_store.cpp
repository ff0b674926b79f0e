// state_store: runtime guests survive restarts; corrupt files are set aside, never emptied.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <boost/json/parse.hpp>
#include <boost/test/unit_test.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/json/serialize.hpp>

#include "daemon/event_bus.hpp"
#include "daemon/guest/guest_registry.hpp"
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
         true,
         {"00112233445566778899aabbccddeeff",
          {{"config", "c2VhbGVkIGNvbmZpZw=="}, {"secret API_KEY", "c2VhbGVkIGtleQ=="}}}},
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

BOOST_AUTO_TEST_CASE(damaged_sealed_values_cost_that_guest_its_values_not_the_file) {
    temp_dir dir;
    write_text_file(dir.path() / "guests.json",
                    R"({"version":1,"guests":[{"name":"vm1","endpoint":"tcp:127.0.0.1:1",)"
                    R"("withheld_values":["config"],)"
                    R"("sealed_values":{"key_id":"ab","values":{"config":5}}},)"
                    R"({"name":"vm2","endpoint":"tcp:127.0.0.1:2"}]})");
    auto loaded = state_store(dir.path()).load();
    BOOST_TEST(!loaded.problem.has_value());
    BOOST_TEST_REQUIRE(loaded.guests.size() == 2u);
    BOOST_TEST(loaded.guests[0].name == "vm1");
    BOOST_TEST(loaded.guests[0].sealed.empty());
    BOOST_TEST(loaded.guests[0].withheld_values == std::vector<std::string>{"config"});
    BOOST_TEST_REQUIRE(loaded.warnings.size() == 1u);
    BOOST_TEST(loaded.warnings[0].find("guests[0].sealed_values is damaged") != std::string::npos,
               loaded.warnings[0]);
    BOOST_TEST(loaded.warnings[0].find("\"vm1\" needs its values again") != std::string::npos);
    BOOST_TEST(fs::exists(dir.path() / "guests.json"));  // not moved aside
}

BOOST_AUTO_TEST_SUITE_END()

// The registry with a key: runtime guests' values are sealed into guests.json and opened again by
// the next registry on the same state directory; with another key, a moved value or no key they
// are not, and the guest waits for its values.
namespace {
namespace asio = boost::asio;
namespace json = boost::json;
using stereos::daemon::guest_registry;
using stereos::daemon::provision_caller;
using stereos::daemon::value_seal;
using stereos::daemon::values_at_rest;

const std::string jcard_value = "mixtape = \"base\"\n[secrets]\nT = 'jcard-value-7f3a'\n";
const std::string secret_value = "sk-secret-value-91c2";

values_at_rest key_of(unsigned char fill) {
    value_seal::key_type key{};
    key.fill(fill);
    return {std::make_shared<const value_seal>(key), ""};
}

values_at_rest no_key() {
    return {nullptr, "$CREDENTIALS_DIRECTORY is not set"};
}

json::object provision_with_values() {
    return json::object{
        {"config", jcard_value},
        {"secrets",
         json::array{json::object{{"name", "API_KEY"}, {"value", secret_value}, {"mode", 0600}},
                     json::object{{"name", "OTHER"}, {"value", "second-value-55d1"}}}}};
}

// One registry on the state directory, as a daemon (start) holds it; nothing runs its links.
struct daemon_registry {
    daemon_registry(const fs::path& state, values_at_rest at_rest)
        : store(state), registry(io.get_executor(), bus, store, std::move(at_rest)) {
        registry.start(stereos::config::config{});
    }
    ~daemon_registry() {
        asio::co_spawn(io, registry.async_stop_all(), [](std::exception_ptr) {});
        io.run_for(10s);
    }
    std::vector<std::string> missing(const std::string& name) const {
        auto guest = registry.find(name);
        BOOST_TEST_REQUIRE(guest != nullptr);
        return guest->missing_values();
    }
    const stereos::config::provision_config& provision(const std::string& name) const {
        return registry.find(name)->definition().provision;
    }
    asio::io_context io;
    stereos::daemon::event_bus bus;
    state_store store;
    guest_registry registry;
};

std::string state_text(const fs::path& dir) {
    std::string all;
    for (const auto& e : fs::recursive_directory_iterator(dir)) {
        if (e.is_regular_file())
            all += stereos::testing::read_text_file(e.path());
    }
    return all;
}

json::object record_of(const fs::path& dir, const std::string& name) {
    const auto doc = boost::json::parse(stereos::testing::read_text_file(dir / "guests.json"));
    for (const auto& g : doc.at("guests").as_array()) {
        if (g.at("name").as_string() == name)
            return g.as_object();
    }
    BOOST_FAIL("no record of " + name);
    return {};
}

void add_guest(daemon_registry& d, const std::string& name) {
    auto added = d.registry.add_runtime(name, "tcp:127.0.0.1:1", provision_with_values(),
                                        provision_caller::values_only);
    BOOST_TEST_REQUIRE(added.has_value(), added.error().message);
}
}  // namespace

BOOST_AUTO_TEST_SUITE(sealed_runtime_values)

BOOST_AUTO_TEST_CASE(values_sealed_by_one_daemon_open_in_the_next_with_the_same_key) {
    temp_dir dir;
    {
        daemon_registry first(dir.path(), key_of(1));
        add_guest(first, "vm1");
        const auto status = first.registry.values_at_rest_status();
        BOOST_TEST(status.at("mode").as_string() == "sealed");
    }
    const auto text = state_text(dir.path());
    for (const auto& value :
         {std::string("jcard-value-7f3a"), secret_value, std::string("second-value-55d1")})
        BOOST_TEST(text.find(value) == std::string::npos, value << " is in the state directory");
    const auto record = record_of(dir.path(), "vm1");
    BOOST_TEST(record.at("sealed_values").at("key_id").as_string() == key_of(1).seal->key_id());
    BOOST_TEST(record.at("sealed_values").at("values").as_object().size() == 3u);

    daemon_registry second(dir.path(), key_of(1));
    BOOST_TEST(second.missing("vm1").empty());
    const auto& provision = second.provision("vm1");
    BOOST_TEST(provision.config_content.value_or("") == jcard_value);
    BOOST_TEST_REQUIRE(provision.secrets.size() == 2u);
    BOOST_TEST(provision.secrets[0].name == "API_KEY");
    BOOST_TEST(provision.secrets[0].value.value_or("") == secret_value);
    BOOST_TEST(provision.secrets[0].mode == 0600u);
    BOOST_TEST(provision.secrets[1].value.value_or("") == "second-value-55d1");
}

BOOST_AUTO_TEST_CASE(another_key_or_no_key_leaves_the_guest_waiting_for_its_values) {
    temp_dir dir;
    {
        daemon_registry first(dir.path(), key_of(1));
        add_guest(first, "vm1");
    }
    const std::vector<std::string> all_slots{"config", "secret API_KEY", "secret OTHER"};
    {
        daemon_registry other(dir.path(), key_of(2));
        BOOST_TEST(other.missing("vm1") == all_slots, boost::test_tools::per_element());
        BOOST_TEST(!other.provision("vm1").config_content.has_value());
        BOOST_TEST(other.provision("vm1").secrets.empty());
    }
    {
        daemon_registry memory(dir.path(), no_key());
        BOOST_TEST(memory.missing("vm1") == all_slots, boost::test_tools::per_element());
        const auto status = memory.registry.values_at_rest_status();
        BOOST_TEST(status.at("mode").as_string() == "memory");
        BOOST_TEST(status.at("reason").as_string() == "$CREDENTIALS_DIRECTORY is not set");
    }
    // Neither threw the sealed values away: the first key still opens them.
    daemon_registry again(dir.path(), key_of(1));
    BOOST_TEST(again.missing("vm1").empty());
}

BOOST_AUTO_TEST_CASE(a_value_moved_to_another_guest_or_slot_is_not_used) {
    temp_dir dir;
    {
        daemon_registry first(dir.path(), key_of(1));
        add_guest(first, "vm1");
        add_guest(first, "vm2");
    }
    // vm1's API_KEY put in vm2's record, and vm1's OTHER in its API_KEY slot.
    auto doc = boost::json::parse(stereos::testing::read_text_file(dir.path() / "guests.json"));
    auto& guests = doc.at("guests").as_array();
    auto& vm1 = guests[0].at("sealed_values").at("values").as_object();
    auto& vm2 = guests[1].at("sealed_values").at("values").as_object();
    vm2["secret API_KEY"] = vm1["secret API_KEY"];
    vm1["secret API_KEY"] = vm1["secret OTHER"];
    write_text_file(dir.path() / "guests.json", boost::json::serialize(doc));

    daemon_registry second(dir.path(), key_of(1));
    BOOST_TEST(second.missing("vm1") == std::vector<std::string>{"secret API_KEY"},
               boost::test_tools::per_element());
    BOOST_TEST(second.missing("vm2") == std::vector<std::string>{"secret API_KEY"},
               boost::test_tools::per_element());
    // The others open; no wrong value was taken.
    for (const auto* name : {"vm1", "vm2"}) {
        const auto& provision = second.provision(name);
        BOOST_TEST(provision.config_content.value_or("") == jcard_value);
        BOOST_TEST_REQUIRE(provision.secrets.size() == 1u);
        BOOST_TEST(provision.secrets[0].name == "OTHER");
    }
}

BOOST_AUTO_TEST_CASE(values_supplied_again_are_sealed_with_the_new_key) {
    temp_dir dir;
    {
        daemon_registry first(dir.path(), key_of(1));
        add_guest(first, "vm1");
    }
    {
        daemon_registry moved(dir.path(), key_of(2));
        BOOST_TEST(moved.missing("vm1").size() == 3u);
        auto supplied = moved.registry.supply_values(
            "vm1",
            json::object{{"config", "mixtape = \"new\"\n"},
                         {"secrets", json::array{json::object{{"name", "API_KEY"},
                                                              {"value", "new-value-0b9e"}}}}});
        BOOST_TEST_REQUIRE(supplied.has_value(), supplied.error().message);
        BOOST_TEST(moved.missing("vm1") == std::vector<std::string>{"secret OTHER"},
                   boost::test_tools::per_element());
    }
    BOOST_TEST(state_text(dir.path()).find("new-value-0b9e") == std::string::npos);
    const auto record = record_of(dir.path(), "vm1");
    BOOST_TEST(record.at("sealed_values").at("key_id").as_string() == key_of(2).seal->key_id());
    BOOST_TEST(record.at("sealed_values").at("values").as_object().size() == 2u);

    daemon_registry again(dir.path(), key_of(2));
    BOOST_TEST(again.missing("vm1") == std::vector<std::string>{"secret OTHER"},
               boost::test_tools::per_element());
    BOOST_TEST(again.provision("vm1").config_content.value_or("") == "mixtape = \"new\"\n");
    BOOST_TEST_REQUIRE(again.provision("vm1").secrets.size() == 1u);
    BOOST_TEST(again.provision("vm1").secrets[0].value.value_or("") == "new-value-0b9e");
}

// Without a key, values given again stay in memory, and the older sealed ones are dropped: a
// later start with the key must not bring back a value that was replaced.
BOOST_AUTO_TEST_CASE(a_value_supplied_without_a_key_drops_its_older_sealed_one_only) {
    temp_dir dir;
    {
        daemon_registry first(dir.path(), key_of(1));
        add_guest(first, "vm1");
    }
    {
        daemon_registry memory(dir.path(), no_key());
        auto supplied = memory.registry.supply_values(
            "vm1", json::object{{"config", "mixtape = \"memory\"\n"}});
        BOOST_TEST_REQUIRE(supplied.has_value(), supplied.error().message);
        const auto sealed = record_of(dir.path(), "vm1").at("sealed_values").at("values");
        BOOST_TEST(!sealed.as_object().contains("config"));
        BOOST_TEST(sealed.as_object().size() == 2u);
    }
    // The key is back: the secrets open; the config, replaced meanwhile, is asked for again
    // rather than its older value coming back.
    daemon_registry again(dir.path(), key_of(1));
    BOOST_TEST(again.missing("vm1") == std::vector<std::string>{"config"},
               boost::test_tools::per_element());
    BOOST_TEST(!again.provision("vm1").config_content.has_value());
    BOOST_TEST(again.provision("vm1").secrets.size() == 2u);
}

BOOST_AUTO_TEST_CASE(a_record_pointed_at_another_endpoint_or_trusted_more_opens_nothing) {
    // Whoever can edit guests.json must not get a guest's values sent to a socket of theirs.
    for (const auto* edit : {"endpoint", "references_trusted"}) {
        temp_dir dir;
        {
            daemon_registry first(dir.path(), key_of(1));
            add_guest(first, "vm1");
        }
        auto doc = boost::json::parse(stereos::testing::read_text_file(dir.path() / "guests.json"));
        auto& record = doc.at("guests").as_array()[0].as_object();
        if (std::string_view(edit) == "endpoint")
            record["endpoint"] = "unix:/tmp/attacker.sock";
        else
            record["references_trusted"] = true;
        write_text_file(dir.path() / "guests.json", boost::json::serialize(doc));

        daemon_registry second(dir.path(), key_of(1));
        BOOST_TEST(second.missing("vm1").size() == 3u, edit);
        BOOST_TEST(!second.provision("vm1").config_content.has_value(), edit);
        BOOST_TEST(second.provision("vm1").secrets.empty(), edit);
    }
}

BOOST_AUTO_TEST_CASE(a_replaced_provisioning_is_sealed_anew_and_a_removed_guest_leaves_none) {
    temp_dir dir;
    daemon_registry d(dir.path(), key_of(1));
    add_guest(d, "vm1");
    auto replaced = d.registry.replace_provision(
        "vm1",
        json::object{{"secrets", json::array{json::object{{"name", "ONLY"}, {"value", "v-3"}}}}},
        provision_caller::values_only);
    BOOST_TEST_REQUIRE(replaced.has_value(), replaced.error().message);
    const auto values = record_of(dir.path(), "vm1").at("sealed_values").at("values").as_object();
    BOOST_TEST(values.size() == 1u);
    BOOST_TEST(values.contains("secret ONLY"));

    std::optional<bool> removed;
    const std::string name = "vm1";  // the coroutine keeps a reference: it must outlive it
    asio::co_spawn(d.io, d.registry.async_remove_runtime(name),
                   [&](std::exception_ptr e, auto result) { removed = !e && result.has_value(); });
    d.io.run_for(10s);
    d.io.restart();
    BOOST_TEST_REQUIRE(removed.has_value());
    BOOST_TEST(*removed);
    BOOST_TEST(state_text(dir.path()).find("sealed_values") == std::string::npos);
}

BOOST_AUTO_TEST_SUITE_END()
