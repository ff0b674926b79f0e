#include "daemon/pending_requests.hpp"

#include <algorithm>
#include <utility>

namespace stereos::daemon {

namespace {
std::string_view kind_name(protocol::reply_kind kind) {
    switch (kind) {
        case protocol::reply_kind::pong:
            return "pong";
        case protocol::reply_kind::health:
            return "health";
        case protocol::reply_kind::ack:
            return "ack";
    }
    return "?";
}
}  // namespace

std::uint64_t pending_requests::add(const protocol::host_message& request, std::string line,
                                    completion done) {
    const auto id = next_id_++;
    queued_bytes_ += line.size();
    entries_.push_back(entry{id, protocol::expected_reply(request),
                             std::string(protocol::type_name(request)), std::move(line),
                             entry_state::unwritten, std::move(done)});
    return id;
}

std::size_t pending_requests::take_unwritten(std::string& out) {
    std::size_t taken = 0;
    for (auto it = entries_.begin() + static_cast<std::ptrdiff_t>(written_count_);
         it != entries_.end(); ++it) {
        out += it->line;
        queued_bytes_ -= it->line.size();
        std::string().swap(it->line);
        it->state = entry_state::written;
        ++taken;
    }
    written_count_ += taken;
    return taken;
}

pending_requests::reply_outcome pending_requests::match_reply(
    const protocol::guest_message& reply) const {
    if (written_count_ == 0)
        return reply_outcome::nothing_outstanding;
    const auto& front = entries_.front();
    const auto* ack = std::get_if<protocol::ack_payload>(&reply);
    const bool kind_matches = (front.expects == protocol::reply_kind::pong &&
                               std::holds_alternative<protocol::pong_reply>(reply)) ||
                              (front.expects == protocol::reply_kind::health &&
                               std::holds_alternative<protocol::health_payload>(reply)) ||
                              (front.expects == protocol::reply_kind::ack && ack != nullptr);
    if (!kind_matches)
        return reply_outcome::unexpected_kind;
    if (ack && ack->reply_to != front.type)
        return reply_outcome::mismatched_reply_to;
    return front.state == entry_state::abandoned ? reply_outcome::dropped_abandoned
                                                 : reply_outcome::completed;
}

pending_requests::reply_outcome pending_requests::on_reply(protocol::guest_message reply) {
    const auto outcome = match_reply(reply);
    if (outcome != reply_outcome::completed && outcome != reply_outcome::dropped_abandoned)
        return outcome;
    auto done = std::move(entries_.front().done);
    entries_.pop_front();
    --written_count_;
    if (outcome == reply_outcome::completed)
        done({}, std::move(reply));
    return outcome;
}

pending_requests::cancel_outcome pending_requests::cancel(std::uint64_t id) {
    auto it =
        std::find_if(entries_.begin(), entries_.end(), [id](const entry& e) { return e.id == id; });
    if (it == entries_.end() || it->state == entry_state::abandoned)
        return cancel_outcome::not_found;
    if (it->state == entry_state::written) {
        it->state = entry_state::abandoned;
        it->done = nullptr;
        return cancel_outcome::abandoned_written;
    }
    queued_bytes_ -= it->line.size();
    entries_.erase(it);
    return cancel_outcome::removed_unwritten;
}

void pending_requests::on_connection_lost(boost::system::error_code written_error) {
    // Detach first: completions may resume callers that queue new requests.
    std::deque<entry> lost(
        std::make_move_iterator(entries_.begin()),
        std::make_move_iterator(entries_.begin() + static_cast<std::ptrdiff_t>(written_count_)));
    entries_.erase(entries_.begin(),
                   entries_.begin() + static_cast<std::ptrdiff_t>(written_count_));
    written_count_ = 0;
    for (auto& e : lost) {
        if (e.state == entry_state::written && e.done)
            e.done(written_error, {});
    }
}

void pending_requests::fail_all(boost::system::error_code error) {
    auto all = std::exchange(entries_, {});
    written_count_ = 0;
    queued_bytes_ = 0;
    for (auto& e : all) {
        if (e.state != entry_state::abandoned && e.done)
            e.done(error, {});
    }
}

std::size_t pending_requests::written() const noexcept {
    return written_count_;
}

std::string pending_requests::describe_oldest_written() const {
    if (written_count_ == 0)
        return {};
    const auto& front = entries_.front();
    std::string text(kind_name(front.expects));
    if (front.expects == protocol::reply_kind::ack)
        text += " for " + front.type;
    return text;
}

}  // namespace stereos::daemon
