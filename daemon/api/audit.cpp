#include "daemon/api/audit.hpp"

#include <pwd.h>

#include <chrono>
#include <optional>
#include <vector>

#include <boost/beast/http/status.hpp>

#include <stereos/protocol/redact.hpp>
#include "daemon/logging.hpp"

namespace stereos::daemon::api {

namespace http = boost::beast::http;

namespace {

constexpr std::string_view guests_prefix = "/v1/guests/";
constexpr std::size_t max_guest_chars = 64;

std::string_view path_of(const http_request& request) {
    auto target = request.target();
    return target.substr(0, std::min(target.find('?'), target.size()));
}

}  // namespace

std::string audited_guest(const http_request& request, const http_response& response) {
    auto path = path_of(request);
    if (!path.starts_with(guests_prefix)) {
        const auto location = response[http::field::location];
        if (!location.starts_with(guests_prefix))
            return {};
        path = location;
    }
    auto name = path.substr(guests_prefix.size());
    name = name.substr(0, std::min(name.find('/'), name.size()));
    if (name.empty())
        return {};
    return protocol::printable_excerpt(name, max_guest_chars);
}

std::string describe_peer(const peer_access& access) {
    if (!access.peer)
        return "an unknown peer";
    const auto& peer = *access.peer;
    std::string text = "uid " + std::to_string(peer.uid);
    if (!access.peer_user.empty())
        text += " (" + access.peer_user + ")";
    text += ", gid " + std::to_string(peer.gid) + ", pid " + std::to_string(peer.pid);
    return text;
}

void api_audit::record(const http_request& request, const route* matched, const peer_access& access,
                       const http_response& response) {
    const bool refused = response.result() == http::status::forbidden;
    if (!refused && !(matched && matched->audited))
        return;
    const auto what = describe(request);
    const auto guest = audited_guest(request, response);
    const auto status = std::to_string(response.result_int());
    std::string outcome = status + " " + std::string(http::obsolete_reason(response.result()));

    std::string uid, gid, pid;
    if (access.peer) {
        uid = std::to_string(access.peer->uid);
        gid = std::to_string(access.peer->gid);
        pid = std::to_string(access.peer->pid);
    }
    const log::fields fields{.guest = guest,
                             .request = what,
                             .peer_uid = uid,
                             .peer_gid = gid,
                             .peer_pid = pid,
                             .peer_user = access.peer_user,
                             .status = status};
    const auto message = what + " by " + describe_peer(access) + ": " + outcome;
    if (!refused) {
        log::notice(message, fields);
        return;
    }
    // One caller retrying in a loop gets one line per window: the throttle compares who and
    // what, not the pid, which changes with every attempt.
    const auto key = "refused " + what + " for uid " + uid;
    if (auto admitted = refusals_.admit(key, std::chrono::steady_clock::now()))
        log::warning("refused " + message + admitted->substr(key.size()), fields);
}

}  // namespace stereos::daemon::api
