#include <stereos/link/link_core.hpp>

#include <array>
#include <utility>

#include <boost/asio/error.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/redact.hpp>

namespace stereos::link {

using boost::system::error_code;

namespace {
// A write buffer grown by a large request is given back rather than kept per guest.
constexpr std::size_t keep_write_capacity = 64 * 1024;

std::string describe_ms(std::chrono::milliseconds d) {
    if (d.count() % 1000 == 0)
        return std::to_string(d.count() / 1000) + "s";
    return std::to_string(d.count()) + "ms";
}

template <std::size_t... I>
constexpr auto make_type_names(std::index_sequence<I...>) {
    return std::array<std::string_view, sizeof...(I)>{
        protocol::type_name(protocol::host_message(std::in_place_index<I>))...};
}
std::string_view type_name_at(std::size_t index) {
    static const auto names =
        make_type_names(std::make_index_sequence<std::variant_size_v<protocol::host_message>>{});
    return names[index];
}

template <std::size_t... I>
auto make_reply_kinds(std::index_sequence<I...>) {
    return std::array<protocol::reply_kind, sizeof...(I)>{
        protocol::expected_reply(protocol::host_message(std::in_place_index<I>))...};
}
protocol::reply_kind reply_kind_at(std::size_t index) {
    static const auto kinds =
        make_reply_kinds(std::make_index_sequence<std::variant_size_v<protocol::host_message>>{});
    return kinds[index];
}

std::string describe_expected(std::size_t type_index) {
    switch (reply_kind_at(type_index)) {
        case protocol::reply_kind::pong:
            return "pong";
        case protocol::reply_kind::health:
            return "health";
        case protocol::reply_kind::ack:
            return "ack for " + std::string(type_name_at(type_index));
    }
    return "?";
}

constexpr std::size_t ping_index = protocol::host_message(protocol::ping_request{}).index();
constexpr std::size_t get_health_index =
    protocol::host_message(protocol::get_health_request{}).index();

// The lines of the requests without a payload, as the codec writes them (a unit test pins it):
// polls and keepalives skip building a JSON value.
constexpr std::string_view ping_line = "{\"type\":\"ping\"}\n";
constexpr std::string_view get_health_line = "{\"type\":\"get_health\"}\n";
constexpr std::string_view pong_line = "{\"type\":\"pong\"}";

boost::system::error_code append_request(std::string& out, const protocol::host_message& request) {
    if (request.index() == ping_index) {
        out += ping_line;
        return {};
    }
    if (request.index() == get_health_index) {
        out += get_health_line;
        return {};
    }
    return protocol::encode_into(out, request);
}
}  // namespace

std::string_view to_string(request_outcome outcome) noexcept {
    switch (outcome) {
        case request_outcome::ok:
            return "ok";
        case request_outcome::guest_error:
            return "guest_error";
        case request_outcome::timeout:
            return "guest_timeout";
        case request_outcome::unavailable:
            return "guest_unavailable";
        case request_outcome::connection_lost:
            return "connection_lost";
        case request_outcome::protocol_error:
            return "protocol_error";
        case request_outcome::stopped:
            return "stopped";
        case request_outcome::cancelled:
            return "cancelled";
        case request_outcome::refused:
            return "refused";
    }
    return "?";
}

link_core::link_core(const guest_link_options& options) : options_(options) {}

boost::system::result<std::uint64_t> link_core::add(const protocol::host_message& request,
                                                    clock::time_point deadline,
                                                    clock::time_point now, waiter* to_notify) {
    const auto type_index = request.index();
    if (entries_.size() >= options_.max_queued_requests) {
        metrics_.record(type_index, request_outcome::refused);
        return error_code(link_error::queue_full);
    }
    const auto before = staged_.size();
    if (append_request(staged_, request)) {
        metrics_.record(type_index, request_outcome::refused);
        return error_code(link_error::request_too_large);
    }
    const auto line_size = staged_.size() - before;
    if (staged_.size() > options_.max_queued_bytes) {
        staged_.resize(before);
        metrics_.record(type_index, request_outcome::refused);
        return error_code(link_error::queue_full);
    }
    const auto id = next_id_++;
    entries_.push_back(entry{to_notify, id, deadline, now, static_cast<std::uint32_t>(line_size),
                             static_cast<std::uint8_t>(type_index), entry_state::unwritten, false});
    ++stats_.requests;
    return id;
}

std::size_t link_core::staged_offset(std::size_t index) const {
    std::size_t offset = 0;
    for (std::size_t i = written_count_; i < index; ++i)
        offset += entries_[i].line_size;
    return offset;
}

void link_core::erase_unwritten(std::size_t index) {
    staged_.erase(staged_offset(index), entries_[index].line_size);
    entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(index));
}

link_core::withdraw_outcome link_core::withdraw(std::uint64_t id, clock::time_point now) {
    for (std::size_t i = 0; i < entries_.size(); ++i) {
        auto& e = entries_[i];
        if (e.id != id)
            continue;
        if (e.state == entry_state::abandoned)
            return withdraw_outcome::not_found;
        metrics_.record(e.type_index, request_outcome::cancelled);
        metrics_.record_latency(now - e.queued_at);
        if (e.state == entry_state::written) {
            e.state = entry_state::abandoned;
            e.to_notify = nullptr;
            return withdraw_outcome::abandoned_written;
        }
        erase_unwritten(i);
        return withdraw_outcome::removed_unwritten;
    }
    return withdraw_outcome::not_found;
}

void link_core::finish(entry& e, error_code error, request_outcome outcome, clock::time_point now) {
    metrics_.record(e.type_index, outcome);
    metrics_.record_latency(now - e.queued_at);
    if (auto* to_notify = std::exchange(e.to_notify, nullptr))
        to_notify->complete(error, {});
}

void link_core::on_connected(clock::time_point now, clock::time_point handshake_deadline) {
    framer_.reset();
    early_pushes_.clear();
    writing_.clear();
    phase_ = phase::handshaking;
    handshake_sent_at_ = now;
    handshake_deadline_ = handshake_deadline;
    consecutive_timeouts_ = 0;
    declared_unresponsive_ = false;
    keepalive_outstanding_ = false;
    drop_reason_ = {};
    drop_detail_.clear();
    writing_ += get_health_line;
}

void link_core::on_read(std::size_t size, clock::time_point now, link_actions& out) {
    framer_.commit(size);
    if (size > 0)
        last_received_ = now;
    if (size > 0 && declared_unresponsive_ && phase_ == phase::serving && !drop_requested()) {
        // Any byte proves the guest is back (a paused VM resumed): the grace ends.
        declared_unresponsive_ = false;
        consecutive_timeouts_ = 0;
        out.events.emplace_back(link_events::responsive{});
    }
    while (!drop_requested()) {
        auto line = framer_.next_line();
        if (!line) {
            if (phase_ == phase::handshaking)
                drop(link_error::protocol_error, "guest sent a line over the 1 MiB limit");
            else
                violation("guest sent a line over the 1 MiB limit", out);
            break;
        }
        if (!*line)
            break;
        sort_line(**line, now, out);
    }
    conclude(out);
}

void link_core::conclude(link_actions& out) const noexcept {
    out.close = drop_requested();
    out.write = has_bytes_to_write();
}

void link_core::on_bytes(std::string_view bytes, clock::time_point now, link_actions& out) {
    auto space = framer_.prepare(bytes.size());
    std::copy(bytes.begin(), bytes.end(), space.begin());
    on_read(bytes.size(), now, out);
}

// The one place every line from the guest is sorted.
void link_core::sort_line(std::string_view line, clock::time_point now, link_actions& out) {
    if (phase_ == phase::handshaking) {
        on_handshake_line(line, now, out);
        return;
    }
    if (phase_ != phase::serving)
        return;               // after the connection ended: nothing is listening
    if (line == pong_line) {  // the keepalive's and ping's answer, exactly as the guest sends it
        on_reply(protocol::pong_reply{}, now, out);
        return;
    }
    auto decoded = protocol::decode_guest_line(line);
    if (!decoded) {
        violation("undecodable line from guest (" + decoded.error().detail +
                      "): " + protocol::printable_excerpt(line),
                  out);
        return;
    }
    if (auto* pushed = std::get_if<protocol::lifecycle_payload>(&*decoded)) {
        ++stats_.lifecycle_events;
        out.events.emplace_back(link_events::lifecycle{std::move(*pushed)});
        return;
    }
    if (auto* unknown = std::get_if<protocol::unknown_message>(&*decoded)) {
        ++stats_.unknown_messages;
        out.events.emplace_back(
            link_events::unknown_message{protocol::printable_excerpt(unknown->type, 64)});
        return;
    }
    on_reply(std::move(*decoded), now, out);
}

void link_core::on_handshake_line(std::string_view line, clock::time_point now, link_actions& out) {
    auto decoded = protocol::decode_guest_line(line);
    if (!decoded) {
        drop(link_error::protocol_error, "undecodable line from guest (" + decoded.error().detail +
                                             "): " + protocol::printable_excerpt(line));
        return;
    }
    if (auto* pushed = std::get_if<protocol::lifecycle_payload>(&*decoded)) {
        early_pushes_.push_back(std::move(*pushed));
        return;
    }
    if (std::holds_alternative<protocol::unknown_message>(*decoded)) {
        ++stats_.unknown_messages;
        return;
    }
    auto* health = std::get_if<protocol::health_payload>(&*decoded);
    if (!health) {
        drop(link_error::handshake_failed,
             "guest answered get_health with " +
                 protocol::printable_excerpt(protocol::redacted(*decoded)));
        return;
    }
    phase_ = phase::serving;
    ++stats_.connects;
    metrics_.record(get_health_index, request_outcome::ok);
    metrics_.record_latency(now - handshake_sent_at_);
    out.events.emplace_back(link_events::up{std::move(*health), now, handshake_sent_at_});
    // Pushed before the handshake's answer: told after `up`, as they were received.
    for (auto& pushed : early_pushes_) {
        ++stats_.lifecycle_events;
        out.events.emplace_back(link_events::lifecycle{std::move(pushed)});
    }
    early_pushes_.clear();
}

void link_core::on_reply(protocol::guest_message reply, clock::time_point now, link_actions& out) {
    if (written_count_ == 0) {
        violation("guest sent a reply with no request outstanding: " +
                      protocol::printable_excerpt(protocol::redacted(reply)),
                  out);
        return;
    }
    auto& front = entries_.front();
    const auto expects = reply_kind_at(front.type_index);
    const auto* ack = std::get_if<protocol::ack_payload>(&reply);
    const bool kind_matches = (expects == protocol::reply_kind::pong &&
                               std::holds_alternative<protocol::pong_reply>(reply)) ||
                              (expects == protocol::reply_kind::health &&
                               std::holds_alternative<protocol::health_payload>(reply)) ||
                              (expects == protocol::reply_kind::ack && ack != nullptr);
    if (!kind_matches || (ack && ack->reply_to != type_name_at(front.type_index))) {
        // Described only when it is an error: the common path builds no strings.
        violation("guest reply out of step: expected " + describe_expected(front.type_index) +
                      ", got " + protocol::printable_excerpt(protocol::redacted(reply)),
                  out);
        return;
    }
    // A slow guest is still a live guest: a late (abandoned) reply also counts.
    consecutive_timeouts_ = 0;
    auto done = front;
    entries_.pop_front();
    --written_count_;
    if (done.keepalive)
        keepalive_outstanding_ = false;
    if (done.state == entry_state::abandoned) {
        ++stats_.late_replies_dropped;
        return;
    }
    const auto outcome = ack && !ack->ok ? request_outcome::guest_error : request_outcome::ok;
    metrics_.record(done.type_index, outcome);
    metrics_.record_latency(now - done.queued_at);
    if (done.to_notify)
        done.to_notify->complete({}, std::move(reply));
}

void link_core::violation(std::string detail, link_actions& out) {
    ++stats_.protocol_errors;
    out.events.emplace_back(link_events::protocol_violation{detail});
    drop(link_error::protocol_error, std::move(detail));
}

std::string_view link_core::prepare_write() {
    if (writing_.empty() && phase_ == phase::serving && !staged_.empty() && !drop_requested()) {
        writing_.swap(staged_);
        for (std::size_t i = written_count_; i < entries_.size(); ++i)
            entries_[i].state = entry_state::written;
        written_count_ = entries_.size();
    }
    return writing_;
}

void link_core::commit_write(std::size_t size) {
    writing_.erase(0, size);
    release_spare_capacity();
}

void link_core::release_spare_capacity() {
    // A large request (or a backed-up queue) must not keep its megabytes per guest afterwards.
    if (writing_.empty() && writing_.capacity() > keep_write_capacity)
        std::string().swap(writing_);
    if (staged_.empty() && staged_.capacity() > keep_write_capacity)
        std::string().swap(staged_);
}

bool link_core::has_bytes_to_write() const noexcept {
    if (drop_requested())
        return false;
    return !writing_.empty() || (phase_ == phase::serving && !staged_.empty());
}

void link_core::queue_keepalive(clock::time_point now) {
    const protocol::host_message ping = protocol::ping_request{};
    auto id = add(ping, now + options_.request_timeout, now, nullptr);
    if (!id)
        return;  // the queue is full: requests are outstanding anyway
    entries_.back().keepalive = true;
    keepalive_outstanding_ = true;
}

void link_core::on_deadline(clock::time_point now, link_actions& out) {
    last_deadline_check_ = now;
    if (phase_ == phase::handshaking && now >= handshake_deadline_ && !drop_requested()) {
        metrics_.record(get_health_index, request_outcome::timeout);
        drop(link_error::handshake_timeout, "connected, but no answer to get_health within " +
                                                describe_ms(options_.connect_timeout) +
                                                " of connecting");
    }
    bool keepalive_timed_out = false;
    for (std::size_t i = 0; i < entries_.size();) {
        auto& e = entries_[i];
        if (e.state == entry_state::abandoned || e.deadline > now) {
            ++i;
            continue;
        }
        if (e.state == entry_state::unwritten) {
            auto* to_notify = e.to_notify;
            metrics_.record(e.type_index, request_outcome::unavailable);
            metrics_.record_latency(now - e.queued_at);
            erase_unwritten(i);
            if (to_notify)
                to_notify->complete(link_error::guest_unavailable, {});
            continue;
        }
        // Written: it stays as abandoned so its late reply is consumed.
        e.state = entry_state::abandoned;
        ++stats_.timeouts;
        keepalive_timed_out = keepalive_timed_out || e.keepalive;
        finish(e, link_error::request_timeout, request_outcome::timeout, now);
        if (phase_ == phase::serving &&
            ++consecutive_timeouts_ >= options_.unresponsive_after_timeouts) {
            declare_unresponsive(
                link_error::guest_unresponsive,
                std::to_string(consecutive_timeouts_) + " consecutive requests timed out", out);
        }
        ++i;
    }
    if (keepalive_timed_out) {
        // A no-op when this timeout was also the one that made the count.
        declare_unresponsive(
            link_error::keepalive_timeout,
            "keepalive ping unanswered within " + describe_ms(options_.request_timeout), out);
    }
    if (declared_unresponsive_ && phase_ == phase::serving &&
        now >= unresponsive_since_ + options_.unresponsive_grace) {
        drop(link_error::guest_unresponsive, "no answer for " +
                                                 describe_ms(options_.unresponsive_grace) +
                                                 " after the guest became unresponsive");
    }
    if (phase_ == phase::serving && !drop_requested() && !keepalive_outstanding_ &&
        now >= last_received_ + options_.keepalive_interval) {
        queue_keepalive(now);
    }
    release_spare_capacity();
    conclude(out);
}

link_core::clock::time_point link_core::keepalive_due() const noexcept {
    if (phase_ != phase::serving || keepalive_outstanding_)
        return clock::time_point::max();
    return last_received_ + options_.keepalive_interval;
}

link_core::clock::time_point link_core::next_deadline() const {
    auto next = keepalive_due();
    if (phase_ == phase::handshaking)
        next = handshake_deadline_;
    for (const auto& e : entries_) {
        if (e.state != entry_state::abandoned)
            next = std::min(next, e.deadline);
    }
    if (declared_unresponsive_ && phase_ == phase::serving)
        next = std::min(next, unresponsive_since_ + options_.unresponsive_grace);
    return next;
}

void link_core::declare_unresponsive(error_code cause, std::string reason, link_actions& out) {
    if (phase_ != phase::serving || declared_unresponsive_)
        return;
    declared_unresponsive_ = true;
    unresponsive_since_ = last_deadline_check_;
    out.events.emplace_back(link_events::unresponsive{cause, std::move(reason)});
}

void link_core::drop(error_code reason, std::string detail) {
    if (drop_reason_)
        return;
    drop_reason_ = reason;
    drop_detail_ = std::move(detail);
}

void link_core::on_lost(error_code error, std::string_view operation) {
    if (drop_requested())
        return;
    const bool handshaking = phase_ == phase::handshaking;
    if (error == boost::asio::error::eof) {
        if (handshaking)
            drop(link_error::handshake_failed,
                 "connected, but the connection closed before the guest answered");
        else
            drop(link_error::connection_closed, "the guest closed the connection");
        return;
    }
    std::string detail = handshaking ? "connected, but the " : "";
    detail += operation;
    detail += " failed: " + error.message();
    drop(error, std::move(detail));
}

link_core::connection_end link_core::on_connection_ended(bool stopping, clock::time_point now) {
    connection_end end;
    end.was_up = phase_ == phase::serving;
    if (stopping)
        drop(link_error::link_stopped, {});
    drop(link_error::connection_closed, {});
    end.reason = drop_reason_;
    end.detail = drop_detail_.empty() ? drop_reason_.message() : drop_detail_;
    phase_ = phase::disconnected;
    keepalive_outstanding_ = false;
    if (end.was_up) {
        ++stats_.disconnects;
        stats_.last_error = end.detail;
    }

    // Written requests cannot be retried safely: the guest may have acted on them.
    error_code written_error = link_error::connection_lost;
    auto outcome = request_outcome::connection_lost;
    if (stopping) {
        written_error = link_error::link_stopped;
        outcome = request_outcome::stopped;
    } else if (drop_reason_ == link_error::protocol_error) {
        written_error = link_error::protocol_error;
        outcome = request_outcome::protocol_error;
    }
    // Detach first: a waiter may be resumed later and queue new requests.
    std::vector<entry> lost(entries_.begin(),
                            entries_.begin() + static_cast<std::ptrdiff_t>(written_count_));
    entries_.erase(entries_.begin(),
                   entries_.begin() + static_cast<std::ptrdiff_t>(written_count_));
    written_count_ = 0;
    // The link's own unwritten keepalive is not carried over to the next connection.
    for (std::size_t i = 0; i < entries_.size();) {
        if (entries_[i].keepalive)
            erase_unwritten(i);
        else
            ++i;
    }
    for (auto& e : lost) {
        if (e.state == entry_state::written)
            finish(e, written_error, outcome, now);
    }
    writing_.clear();
    release_spare_capacity();
    framer_.reset();
    early_pushes_.clear();
    drop_reason_ = {};
    drop_detail_.clear();
    return end;
}

void link_core::fail_all(error_code error, clock::time_point now) {
    auto all = std::exchange(entries_, {});
    written_count_ = 0;
    staged_.clear();
    writing_.clear();
    keepalive_outstanding_ = false;
    const auto outcome = error == link_error::link_stopped ? request_outcome::stopped
                                                           : request_outcome::connection_lost;
    for (auto& e : all) {
        if (e.state != entry_state::abandoned)
            finish(e, error, outcome, now);
    }
}

}  // namespace stereos::link
