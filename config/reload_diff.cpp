// The reload diff (reload_diff.hpp).
#include "config/reload_diff.hpp"

#include "config/config.hpp"

namespace stereos::config {

guest_diff diff_guests(const config& before, const config& after) {
    // What the daemon acts on; the endpoint's spelling and which timeouts were overrides are not.
    guest_diff diff;
    for (const auto& guest : after.guests) {
        const guest_config* old = before.find_guest(guest.name);
        if (old == nullptr) {
            diff.added.push_back(guest.name);
        } else if (old->endpoint != guest.endpoint) {
            diff.changed.push_back(guest.name);
        } else if (old->timeouts != guest.timeouts || old->provision != guest.provision) {
            diff.updated.push_back(guest.name);
        } else {
            diff.unchanged.push_back(guest.name);
        }
    }
    for (const auto& guest : before.guests) {
        if (after.find_guest(guest.name) == nullptr) {
            diff.removed.push_back(guest.name);
        }
    }
    return diff;
}

}  // namespace stereos::config
