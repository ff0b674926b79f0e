#include "daemon/event_bus.hpp"

#include <algorithm>
#include <array>
#include <cstdio>
#include <ctime>

#include <boost/json/serialize.hpp>

namespace stereos::daemon {

namespace json = boost::json;

std::string format_utc(std::chrono::system_clock::time_point at) {
    const auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(at.time_since_epoch()).count();
    const auto seconds = static_cast<std::time_t>(ms / 1000);
    std::tm parts{};
    gmtime_r(&seconds, &parts);
    std::array<char, 40> text{};
    const auto n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%S", &parts);
    std::snprintf(text.data() + n, text.size() - n, ".%03dZ", static_cast<int>(ms % 1000));
    return text.data();
}

std::optional<std::shared_ptr<const std::string>> event_subscription::next() {
    if (queue_.empty())
        return std::nullopt;
    auto line = std::move(queue_.front());
    queue_.pop_front();
    return line;
}

void event_subscription::deliver(const std::string& guest,
                                 const std::shared_ptr<const std::string>& line) {
    if (overflowed_)
        return;
    if (!guest_filter_.empty() && guest_filter_ != guest)
        return;
    if (queue_.size() >= capacity_) {
        overflowed_ = true;
        queue_.clear();
        if (bus_)
            ++bus_->dropped_;
    } else {
        queue_.push_back(line);
    }
    if (notify_)
        notify_();
}

void event_subscription::close() {
    if (bus_)
        bus_->forget(this);
    bus_ = nullptr;
    notify_ = nullptr;
    queue_.clear();
}

event_subscription::~event_subscription() {
    close();
}

std::shared_ptr<const std::string> event_bus::serialize_event(std::uint64_t seq,
                                                              std::string_view guest,
                                                              std::string_view kind,
                                                              json::object fields,
                                                              clock::time_point at) {
    json::object event{{"seq", seq}, {"time", format_utc(at)}, {"guest", guest}, {"kind", kind}};
    for (auto& field : fields)
        event[field.key()] = std::move(field.value());
    return std::make_shared<const std::string>(json::serialize(event) + "\n");
}

std::shared_ptr<const std::string> event_bus::snapshot_line(std::string_view guest,
                                                            std::string_view kind,
                                                            json::object fields,
                                                            clock::time_point at) const {
    return serialize_event(seq_, guest, kind, std::move(fields), at);
}

std::uint64_t event_bus::publish(std::string_view guest, std::string_view kind, json::object fields,
                                 clock::time_point at) {
    auto line = serialize_event(++seq_, guest, kind, std::move(fields), at);
    const std::string guest_name(guest);
    // Copy: a notify callback may close its subscription while we iterate.
    const auto targets = subscribers_;
    for (auto* s : targets) {
        if (std::find(subscribers_.begin(), subscribers_.end(), s) != subscribers_.end())
            s->deliver(guest_name, line);
    }
    return seq_;
}

std::shared_ptr<event_subscription> event_bus::subscribe(std::string guest_filter,
                                                         std::size_t capacity) {
    std::shared_ptr<event_subscription> s(
        new event_subscription(this, std::move(guest_filter), std::max<std::size_t>(capacity, 1)));
    subscribers_.push_back(s.get());
    return s;
}

void event_bus::forget(event_subscription* subscriber) {
    std::erase(subscribers_, subscriber);
}

event_bus::~event_bus() {
    for (auto* s : subscribers_)
        s->bus_ = nullptr;
}

}  // namespace stereos::daemon
