// stereos-hostd: the host-side daemon of the StereOS control plane.
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>

#include "config/config.hpp"
#include "daemon/guest/seal_key.hpp"
#include "daemon/host_daemon.hpp"
#include "daemon/logging.hpp"

using namespace stereos;

namespace {

int run_hostd(int argc, char** argv) {
    CLI::App app{
        "stereos-hostd: keeps a persistent connection to every StereOS guest, tracks "
        "their state, provisions them and serves a local API."};
    std::optional<std::string> config_path;
    bool check_config = false;
    std::optional<std::string> log_level;
    std::string log_sink = "auto";
    app.add_option("--config", config_path,
                   "Config file (default: $CONFIGURATION_DIRECTORY/config.toml, else "
                   "/etc/stereos-hostd/config.toml)");
    app.add_flag("--check-config", check_config, "Validate the config file and exit (0 or 1)");
    app.add_option("--log-level", log_level, "trace|debug|info|notice|warning|error")
        ->check(CLI::IsMember({"trace", "debug", "info", "notice", "warning", "error"}));
    app.add_option("--log", log_sink,
                   "Where logs go: stderr or journal (default: journal when "
                   "stderr is connected to it)")
        ->check(CLI::IsMember({"auto", "stderr", "journal"}));
    app.set_version_flag("--version", "stereos-hostd " STEREOS_VERSION);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }

    const auto path = config::choose_config_path(config_path);
    auto loaded = config::load_config_file(path);
    if (!loaded) {
        std::fprintf(stderr, "stereos-hostd: invalid config:\n%s\n",
                     config::to_string(loaded.error()).c_str());
        return 1;
    }
    if (check_config) {
        std::printf("%s: OK (%zu guests)\n", path.c_str(), loaded->guests.size());
        return 0;
    }

    const bool journal = log_sink == "journal" || (log_sink == "auto" && log::stderr_is_journal());
    const bool under_systemd = std::getenv("INVOCATION_ID") != nullptr;
    log::setup(journal ? log::sink_kind::journal : log::sink_kind::stderr_text, log::severity::info,
               under_systemd);

    // Once, at start: the credential is fixed for the life of the process.
    auto at_rest = daemon::load_seal_key(std::getenv("CREDENTIALS_DIRECTORY"));
    if (at_rest.seal)
        log::info("runtime guests' values are sealed in the state directory (key id " +
                  at_rest.seal->key_id() + ")");
    else
        log::notice("runtime guests' values stay in memory only: " + at_rest.reason);

    boost::asio::io_context io(1);
    daemon::host_daemon hostd(io, {path, log_level, std::move(at_rest)}, std::move(*loaded));
    try {
        hostd.start();
    } catch (const std::exception& e) {
        log::error(std::string("cannot start: ") + e.what());
        return 1;
    }
    io.run();
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run_hostd(argc, argv);
    } catch (const std::exception& e) {
        // A bug escaped the event loop (background tasks rethrow theirs): say what it was, and
        // exit non-zero so systemd restarts the daemon (Restart=on-failure).
        std::fprintf(stderr, "stereos-hostd: stopped by an unexpected error: %s\n", e.what());
    } catch (...) {
        std::fprintf(stderr, "stereos-hostd: stopped by an unexpected error\n");
    }
    return 1;
}
