#include "daemon/api/metrics.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>
#include <variant>

#include <boost/json/parse.hpp>

#include "daemon/guest/guest_registry.hpp"
#include "daemon/guest/guest_state_machine.hpp"

namespace stereos::daemon {

namespace json = boost::json;

namespace {

// The wire type of host_message alternative `index`.
template <std::size_t... I>
std::array<std::string_view, sizeof...(I)> make_type_names(std::index_sequence<I...>) {
    return {protocol::type_name(protocol::host_message(std::in_place_index<I>))...};
}
std::string_view type_name_at(std::size_t index) {
    static const auto names =
        make_type_names(std::make_index_sequence<std::variant_size_v<protocol::host_message>>{});
    return names[index];
}

// Label values: guest names are [A-Za-z0-9._-], but escape anyway so a future name can never
// break the exposition.
std::string label_value(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    for (char c : text) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
    return out;
}

std::string number(double value) {
    std::array<char, 40> text{};
    std::snprintf(text.data(), text.size(), "%.9g", value);
    return text.data();
}

void header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

}  // namespace

api_metrics::api_metrics(event_bus& bus) : observer_(bus.subscribe("", 16)) {
    // Drained synchronously from publish(), so the queue never fills.
    observer_->set_notify([this] {
        while (auto line = observer_->next())
            on_event(**line);
    });
}

api_metrics::~api_metrics() {
    observer_->close();
}

void api_metrics::on_event(const std::string& line) {
    // Cheap filter first: most events are state and lifecycle changes.
    if (line.find(R"("kind":"provision")") == std::string::npos ||
        line.find(R"("failed")") == std::string::npos)
        return;
    boost::system::error_code ec;
    auto event = json::parse(line, ec);
    if (ec || !event.is_object())
        return;
    const auto& object = event.get_object();
    const auto* state = object.if_contains("state");
    const auto* guest = object.if_contains("guest");
    if (!state || !guest || !state->is_string() || !guest->is_string() ||
        state->get_string() != "failed")
        return;
    ++guests_[std::string(guest->get_string())].provisioning_failures;
}

void api_metrics::response_sent(unsigned status) {
    ++responses_[status];
}

std::string api_metrics::render(const guest_registry& registry, const event_bus& bus) {
    const auto guests = registry.all();
    std::erase_if(guests_, [&](const auto& entry) { return !registry.find(entry.first); });

    std::string out;
    out.reserve(1024 + guests.size() * 2048);

    header(out, "stereos_guest_state", "gauge", "1 for the guest's current state, else 0.");
    for (const auto& g : guests) {
        const auto current = g->machine().state();
        const auto name = label_value(g->name());
        for (auto state : all_guest_states) {
            out += "stereos_guest_state{guest=\"" + name + "\",state=\"" +
                   std::string(to_string(state)) + "\"} " + (state == current ? "1\n" : "0\n");
        }
    }

    auto per_guest = [&](std::string_view metric, std::string_view type, std::string_view help,
                         auto value_of) {
        header(out, metric, type, help);
        for (const auto& g : guests) {
            out += metric;
            out +=
                "{guest=\"" + label_value(g->name()) + "\"} " + std::to_string(value_of(*g)) + "\n";
        }
    };
    per_guest("stereos_guest_link_up", "gauge", "1 while the guest's link is connected.",
              [](const managed_guest& g) { return g.link().is_up() ? 1 : 0; });
    per_guest("stereos_guest_link_connects_total", "counter",
              "Connections established to the guest (the first one and every reconnect).",
              [](const managed_guest& g) { return g.link().stats().connects; });
    per_guest("stereos_guest_link_reconnects_total", "counter",
              "Connections established after the first one.", [](const managed_guest& g) {
                  const auto connects = g.link().stats().connects;
                  return connects > 0 ? connects - 1 : 0;
              });
    per_guest("stereos_guest_link_connect_failures_total", "counter", "Failed connect attempts.",
              [](const managed_guest& g) { return g.link().stats().connect_failures; });
    per_guest("stereos_guest_link_disconnects_total", "counter", "Established connections lost.",
              [](const managed_guest& g) { return g.link().stats().disconnects; });
    per_guest("stereos_guest_protocol_errors_total", "counter",
              "Protocol errors (wrong reply kind, bad line); each resets the connection.",
              [](const managed_guest& g) { return g.link().stats().protocol_errors; });
    per_guest("stereos_guest_link_socket_watch_failures_total", "counter",
              "Waits for the guest's socket file without an inotify watch (retry timer only).",
              [](const managed_guest& g) { return g.link().stats().socket_watch_failures; });
    per_guest("stereos_guest_link_requests_total", "counter",
              "Requests sent on the link, including health polls and keepalives.",
              [](const managed_guest& g) { return g.link().stats().requests; });
    per_guest("stereos_guest_link_timeouts_total", "counter",
              "Requests on the link that timed out, including health polls.",
              [](const managed_guest& g) { return g.link().stats().timeouts; });
    per_guest("stereos_guest_provisioning_failures_total", "counter",
              "Provisioning runs that failed (automatic or requested).",
              [&](const managed_guest& g) {
                  auto it = guests_.find(g.name());
                  return it == guests_.end() ? std::uint64_t{0} : it->second.provisioning_failures;
              });

    header(out, "stereos_guest_requests_total", "counter",
           "Requests on the guest's link (API calls, health polls, provisioning, keepalives), "
           "by wire type and outcome.");
    for (const auto& g : guests) {
        const auto& counts = g->link().metrics().counts;
        const auto name = label_value(g->name());
        for (std::size_t type = 0; type < counts.size(); ++type) {
            for (std::size_t outcome = 0; outcome < counts[type].size(); ++outcome) {
                if (counts[type][outcome] == 0)
                    continue;
                out += "stereos_guest_requests_total{guest=\"" + name + "\",type=\"" +
                       std::string(type_name_at(type)) + "\",outcome=\"" +
                       std::string(to_string(static_cast<link::request_outcome>(outcome))) +
                       "\"} " + std::to_string(counts[type][outcome]) + "\n";
            }
        }
    }

    header(out, "stereos_guest_request_duration_seconds", "histogram",
           "Latency of requests on the guest's link, from queueing to completion.");
    for (const auto& g : guests) {
        const auto& m = g->link().metrics();
        if (m.latency_count == 0)
            continue;
        const auto label = "guest=\"" + label_value(g->name()) + "\"";
        std::uint64_t cumulative = 0;
        for (std::size_t i = 0; i < m.latency_bounds.size(); ++i) {
            cumulative += m.latency_buckets[i];
            const double bound = std::chrono::duration<double>(m.latency_bounds[i]).count();
            out += "stereos_guest_request_duration_seconds_bucket{" + label + ",le=\"" +
                   number(bound) + "\"} " + std::to_string(cumulative) + "\n";
        }
        out += "stereos_guest_request_duration_seconds_bucket{" + label + ",le=\"+Inf\"} " +
               std::to_string(m.latency_count) + "\n";
        out += "stereos_guest_request_duration_seconds_sum{" + label + "} " +
               number(std::chrono::duration<double>(m.latency_sum).count()) + "\n";
        out += "stereos_guest_request_duration_seconds_count{" + label + "} " +
               std::to_string(m.latency_count) + "\n";
    }

    header(out, "stereos_guests", "gauge", "Guests managed by the daemon.");
    out += "stereos_guests " + std::to_string(guests.size()) + "\n";
    header(out, "stereos_event_subscribers", "gauge", "Open /v1/events streams.");
    out += "stereos_event_subscribers " + std::to_string(event_streams_) + "\n";
    header(out, "stereos_events_published_total", "counter", "Events published.");
    out += "stereos_events_published_total " + std::to_string(bus.last_seq()) + "\n";
    header(out, "stereos_events_dropped_total", "counter",
           "Subscribers cut off because they fell behind (their queue overflowed).");
    out += "stereos_events_dropped_total " + std::to_string(bus.events_dropped()) + "\n";
    header(out, "stereos_api_connections", "gauge", "Open API connections.");
    out += "stereos_api_connections " + std::to_string(connections_open_) + "\n";
    header(out, "stereos_api_connections_rejected_total", "counter",
           "API connections answered 503 because the connection limit was reached.");
    out += "stereos_api_connections_rejected_total " + std::to_string(connections_rejected_) + "\n";
    header(out, "stereos_api_accept_errors_total", "counter",
           "Failed accepts on the API socket (e.g. EMFILE), each retried after a pause.");
    out += "stereos_api_accept_errors_total " + std::to_string(accept_errors_) + "\n";
    header(out, "stereos_api_responses_total", "counter", "API responses by HTTP status.");
    for (const auto& [status, count] : responses_) {
        out += "stereos_api_responses_total{status=\"" + std::to_string(status) + "\"} " +
               std::to_string(count) + "\n";
    }
    header(out, "stereos_api_undeclared_responses_total", "counter",
           "API responses whose status and code their route does not declare (a bug).");
    out += "stereos_api_undeclared_responses_total " + std::to_string(undeclared_responses_) + "\n";
    return out;
}

}  // namespace stereos::daemon
