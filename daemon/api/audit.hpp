// The local API's audit trail: every request to a route that may change something (the route
// table's `audited`) is logged at notice once answered, with who asked (SO_PEERCRED), the route,
// the guest and the status; refusals (403) at warning, throttled. A request that matched no
// route changed nothing and is not recorded. Never a body: bodies carry secrets and configs.
// Single-threaded, on the daemon's executor.
#pragma once

#include <string>
#include <string_view>

#include "daemon/api/routes.hpp"
#include "daemon/log_throttle.hpp"

namespace stereos::daemon::api {

// The guest a request is about: "/v1/guests/vm1/shutdown" -> "vm1"; for POST /v1/guests (the
// name is in the body, which is never read here) the Location of a 201. Printable and bounded.
std::string audited_guest(const http_request& request, const http_response& response);

// "uid 1000 (alice), gid 1000, pid 4242"; "an unknown peer" without credentials.
std::string describe_peer(const peer_access& access);

class api_audit {
  public:
    // Logs the request if the audit trail records it; call once the answer is decided.
    // `matched`: the request's route, null if it matched none.
    void record(const http_request& request, const route* matched, const peer_access& access,
                const http_response& response);

  private:
    log_throttle refusals_;
};

}  // namespace stereos::daemon::api
