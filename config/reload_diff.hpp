// The reload diff: what a SIGHUP reload changes in the guest list, so that the daemon touches
// only the guests whose settings changed.
#pragma once

#include <string>
#include <vector>

namespace stereos::config {

struct config;  // config.hpp, which includes this header

// The guest lists of two configs compared by name, for SIGHUP reload. `changed`: the endpoint
// differs (a new link). `updated`: the same endpoint, other effective settings differ (timeouts,
// provisioning), which apply to the live link. Names are in the order of `after` (removed: of
// `before`).
struct guest_diff {
    std::vector<std::string> added;
    std::vector<std::string> removed;
    std::vector<std::string> changed;
    std::vector<std::string> updated;
    std::vector<std::string> unchanged;
};
guest_diff diff_guests(const config& before, const config& after);

}  // namespace stereos::config
