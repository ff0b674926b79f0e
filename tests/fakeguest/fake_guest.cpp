#include "tests/fakeguest/fake_guest.hpp"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <deque>
#include <iostream>
#include <map>
#include <utility>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <boost/asio/basic_socket_acceptor.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/generic/stream_protocol.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/value.hpp>
#include <boost/system/system_error.hpp>

#include <stereos/protocol/codec.hpp>
#include <stereos/protocol/line_framer.hpp>
#include <stereos/util/completion_tokens.hpp>

namespace stereos::testing {

namespace asio = boost::asio;
namespace json = boost::json;
using boost::system::error_code;
using clock_type = std::chrono::steady_clock;
using generic_stream = asio::generic::stream_protocol;
using socket_type = generic_stream::socket;
using acceptor_type = asio::basic_socket_acceptor<generic_stream>;

namespace {

using transport::rethrow_if_failed;
using transport::use_tuple;

// Small reads keep thousands of idle connections small; a long line in progress reads bigger.
constexpr std::size_t small_read = 4 * 1024;
constexpr std::size_t large_read = 64 * 1024;

std::size_t next_read_size(const protocol::line_framer& framer) {
    return framer.buffered() > small_read ? large_read : small_read;
}
constexpr std::size_t max_handshake_bytes = 256;
constexpr auto flood_idle_poll = std::chrono::seconds(1);

// ---- the real guest's answers --------------------------------------------------------------

// Go's decoder turns each invalid UTF-8 byte inside a string into U+FFFD; outside strings any
// such byte is a syntax error either way, so replacing them all up front gives the same result.
std::string replace_invalid_utf8(std::string_view in) {
    std::string out;
    out.reserve(in.size());
    std::size_t i = 0;
    while (i < in.size()) {
        const auto c = static_cast<unsigned char>(in[i]);
        std::size_t length = 0;
        std::uint32_t min_value = 0;
        if (c < 0x80) {
            out += in[i++];
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            length = 2, min_value = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            length = 3, min_value = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            length = 4, min_value = 0x10000;
        }
        bool valid = length != 0 && i + length <= in.size();
        std::uint32_t value = length == 0 ? 0 : (c & (0xFF >> (length + 1)));
        for (std::size_t k = 1; valid && k < length; ++k) {
            const auto next = static_cast<unsigned char>(in[i + k]);
            valid = (next & 0xC0) == 0x80;
            value = (value << 6) | (next & 0x3F);
        }
        valid = valid && value >= min_value && value <= 0x10FFFF &&
                !(value >= 0xD800 && value <= 0xDFFF);
        if (valid) {
            out.append(in.substr(i, length));
            i += length;
        } else {
            out += "\xEF\xBF\xBD";
            ++i;
        }
    }
    return out;
}

// Go matches keys exactly first, then case-insensitively (as protocol::decode_host_line does).
const json::value* find_key(const json::object& object, std::string_view key) {
    if (auto it = object.find(key); it != object.end())
        return &it->value();
    for (const auto& kv : object) {
        const std::string_view k = kv.key();
        if (std::equal(k.begin(), k.end(), key.begin(), key.end(), [](char a, char b) {
                return std::tolower(static_cast<unsigned char>(a)) ==
                       std::tolower(static_cast<unsigned char>(b));
            }))
            return &kv.value();
    }
    return nullptr;
}

const char* json_kind_name(json::kind kind) {
    switch (kind) {
        case json::kind::array:
            return "array";
        case json::kind::string:
            return "string";
        case json::kind::bool_:
            return "bool";
        case json::kind::null:
            return "null";
        case json::kind::object:
            return "object";
        default:
            return "number";
    }
}

// Go's %q, close enough for error texts.
std::string in_quotes(std::string_view text) {
    std::string out = "\"";
    for (char c : text) {
        if (c == '"' || c == '\\')
            out += '\\';
        out += c;
    }
    return out + "\"";
}

// The payload names stereosd uses in "decode X payload: ..." errors.
std::string_view payload_noun(std::string_view type) {
    if (type == "set_config")
        return "config";
    if (type == "inject_secret")
        return "secret";
    if (type == "inject_ssh_key")
        return "ssh key";
    return type;
}

bool is_known_request(std::string_view type) {
    static constexpr auto known =
        std::to_array<std::string_view>({"ping", "get_health", "set_config", "inject_secret",
                                         "mount", "shutdown", "inject_ssh_key"});
    return std::find(std::begin(known), std::end(known), type) != std::end(known);
}

bool is_recognized_ssh_key(std::string_view key) {
    static constexpr auto key_types = std::to_array<std::string_view>(
        {"ssh-ed25519 ", "ssh-rsa ", "ssh-dss ", "ecdsa-sha2-nistp256 ", "ecdsa-sha2-nistp384 ",
         "ecdsa-sha2-nistp521 ", "sk-ssh-ed25519@openssh.com ",
         "sk-ecdsa-sha2-nistp256@openssh.com "});
    return std::any_of(std::begin(key_types), std::end(key_types),
                       [&](std::string_view prefix) { return key.starts_with(prefix); });
}

bool is_system_directory(std::string_view path) {
    static constexpr auto system_dirs =
        std::to_array<std::string_view>({"/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/nix",
                                         "/proc", "/run", "/sbin", "/sys", "/usr", "/var"});
    if (path == "/")
        return true;
    return std::any_of(std::begin(system_dirs), std::end(system_dirs), [&](std::string_view dir) {
        return path == dir || (path.starts_with(dir) && path[dir.size()] == '/');
    });
}

protocol::ack_payload ack(std::string reply_to, std::string error = {}) {
    const bool ok = error.empty();
    return {std::move(reply_to), ok, std::move(error)};
}

// What stereosd checks after decoding; the texts are the ones in the captures.
protocol::ack_payload validate(const protocol::host_message& request,
                               const guest_behaviour& behaviour) {
    using namespace protocol;
    if (const auto* secret = std::get_if<secret_payload>(&request)) {
        if (secret->name.empty())
            return ack("inject_secret", "secret name cannot be empty");
        if (secret->name.find_first_of("/\\") != std::string::npos || secret->name == "." ||
            secret->name == ".." || secret->name.find('\0') != std::string::npos)
            return ack("inject_secret", "invalid secret name: " + in_quotes(secret->name) +
                                            " (must be a simple filename)");
        return ack("inject_secret");
    }
    if (const auto* key = std::get_if<ssh_key_payload>(&request)) {
        if (!is_recognized_ssh_key(key->public_key))
            return ack("inject_ssh_key",
                       "invalid SSH public key format: must start with a recognized key type "
                       "(e.g., ssh-ed25519)");
        if (!behaviour.known_users.contains(key->user))
            return ack("inject_ssh_key",
                       "lookup user " + in_quotes(key->user) + ": user: unknown user " + key->user);
        return ack("inject_ssh_key");
    }
    if (const auto* mount = std::get_if<mount_payload>(&request)) {
        if (mount->tag.empty())
            return ack("mount", "mount tag cannot be empty");
        if (!mount->guest_path.starts_with('/'))
            return ack("mount", "guest_path must be absolute: " + in_quotes(mount->guest_path));
        if (is_system_directory(mount->guest_path))
            return ack("mount",
                       "cannot mount over system directory: " + in_quotes(mount->guest_path));
        if (mount->fs_type != "virtiofs" && mount->fs_type != "9p")
            return ack("mount", "unsupported filesystem type: " + in_quotes(mount->fs_type) +
                                    " (must be virtiofs or 9p)");
        if (behaviour.mount_exit_status != 0)
            return ack("mount", "mount " + mount->tag + " at " + mount->guest_path +
                                    ": exit status " + std::to_string(behaviour.mount_exit_status));
        return ack("mount");
    }
    return ack(std::string(type_name(request)));
}

struct answer {
    std::string request_type;  // "" for lines without a usable type
    protocol::guest_message reply;
    bool starts_shutdown = false;
    // The decoded request, for the guest to act on when the reply is an ok ack.
    std::optional<protocol::host_message> request = std::nullopt;
};

answer answer_line(std::string_view raw_line, const guest_behaviour& behaviour,
                   std::int64_t uptime_seconds) {
    using namespace protocol;
    const std::string line = replace_invalid_utf8(raw_line);
    auto malformed = [](std::string why) {
        return answer{"", ack("", "malformed JSON: " + std::move(why))};
    };
    error_code ec;
    const json::value envelope = json::parse(line, ec);
    if (ec)
        return malformed(ec.message());
    if (!envelope.is_object())
        return malformed(std::string("cannot unmarshal ") + json_kind_name(envelope.kind()) +
                         " into an envelope");
    std::string type;
    if (const auto* t = find_key(envelope.get_object(), "type"); t && !t->is_null()) {
        if (!t->is_string())
            return malformed(std::string("cannot unmarshal ") + json_kind_name(t->kind()) +
                             " into the envelope type");
        type = t->get_string();
    }
    if (type == "ping")
        return {type, pong_reply{}};
    if (type == "get_health")
        return {type, health_payload{behaviour.health_state, behaviour.agents, uptime_seconds}};
    if (!is_known_request(type))
        return {type, ack(type, "unknown message type: " + type)};
    auto decoded = decode_host_line(line);
    if (!decoded || !decoded->message) {
        const std::string detail = decoded ? "no payload" : decoded.error().detail;
        return {type,
                ack(type, "decode " + std::string(payload_noun(type)) + " payload: " + detail)};
    }
    answer result{type, validate(*decoded->message, behaviour)};
    result.starts_shutdown = type == "shutdown";
    result.request = std::move(*decoded->message);
    return result;
}

// ---- what the real guest does with what it accepts ---------------------------------------------

// The "keys=N" of a delivery summary: a payload holds one key per line.
std::size_t count_key_lines(std::string_view keys) {
    std::size_t count = 0;
    while (!keys.empty()) {
        const auto nl = keys.find('\n');
        const auto line = keys.substr(0, nl);
        if (line.find_first_not_of(" \t\r") != std::string_view::npos)
            ++count;
        keys.remove_prefix(nl == std::string_view::npos ? keys.size() : nl + 1);
    }
    return count;
}

std::error_code last_error() {
    return {errno, std::system_category()};
}

// sshd reads authorized_keys as the user: when the fake guest runs as root (inside a test VM),
// .ssh and the file must be the user's, as stereosd makes them. A user the system does not know
// (a test's made-up one) keeps root as owner.
std::optional<std::pair<uid_t, gid_t>> owner_for(const std::string& user) {
    if (::geteuid() != 0)
        return std::nullopt;
    passwd entry{};
    passwd* found = nullptr;
    std::array<char, 4096> buffer{};
    if (::getpwnam_r(user.c_str(), &entry, buffer.data(), buffer.size(), &found) != 0 || !found)
        return std::nullopt;
    return std::pair{found->pw_uid, found->pw_gid};
}

// As stereosd: the payload becomes the whole file, written beside it and renamed over it, so
// sshd never reads half a file and no earlier key survives.
std::error_code write_authorized_keys(const std::filesystem::path& root, const std::string& user,
                                      std::string_view content) {
    namespace fs = std::filesystem;
    const fs::path home = user == "root" ? root / "root" : root / "home" / user;
    const fs::path ssh_dir = home / ".ssh";
    const fs::path target = ssh_dir / "authorized_keys";
    const fs::path temp = ssh_dir / "authorized_keys.tmp";
    std::error_code ec;
    fs::create_directories(home, ec);
    if (ec)
        return ec;
    const auto owner = owner_for(user);
    // A .ssh that exists is left as it is; a new one is 0700 whatever the umask.
    if (::mkdir(ssh_dir.c_str(), 0700) == 0) {
        if (::chmod(ssh_dir.c_str(), 0700) != 0)
            return last_error();
        if (owner && ::chown(ssh_dir.c_str(), owner->first, owner->second) != 0)
            return last_error();
    } else if (errno != EEXIST) {
        return last_error();
    }
    const int fd =
        ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return last_error();
    auto fail = [&](std::error_code error) {
        ::close(fd);
        ::unlink(temp.c_str());
        return error;
    };
    // A left-over temp file keeps its old mode and owner through O_TRUNC: set both.
    if (::fchmod(fd, 0600) != 0)
        return fail(last_error());
    if (owner && ::fchown(fd, owner->first, owner->second) != 0)
        return fail(last_error());
    while (!content.empty()) {
        const auto written = ::write(fd, content.data(), content.size());
        if (written < 0 && errno == EINTR)
            continue;
        if (written < 0)
            return fail(last_error());
        content.remove_prefix(static_cast<std::size_t>(written));
    }
    if (::close(fd) != 0) {
        const auto error = last_error();
        ::unlink(temp.c_str());
        return error;
    }
    if (::rename(temp.c_str(), target.c_str()) != 0) {
        const auto error = last_error();
        ::unlink(temp.c_str());
        return error;
    }
    return {};
}

std::string encode_line(const protocol::guest_message& message) {
    auto line = protocol::encode(message);
    if (!line)
        throw boost::system::system_error(line.error(), "fake guest: cannot encode its reply");
    return std::move(*line);
}

std::string overlong_line() {
    constexpr std::size_t size = 2 * 1024 * 1024;
    std::string line = R"({"type":"pong","payload":")";
    line.append(size - line.size() - 3, 'a');
    line += "\"}\n";
    return line;
}

std::uint32_t port_of(const generic_stream::endpoint& endpoint) {
    const auto* address = endpoint.data();
    if (address->sa_family == AF_INET)
        return ntohs(reinterpret_cast<const sockaddr_in*>(address)->sin_port);
    if (address->sa_family == AF_INET6)
        return ntohs(reinterpret_cast<const sockaddr_in6*>(address)->sin6_port);
    if (address->sa_family == AF_VSOCK)
        return reinterpret_cast<const sockaddr_vm*>(address)->svm_port;
    return 0;
}

bool is_ip(const generic_stream::endpoint& endpoint) {
    const auto family = endpoint.protocol().family();
    return family == AF_INET || family == AF_INET6;
}

}  // namespace

protocol::guest_message default_reply(std::string_view line, const guest_behaviour& behaviour,
                                      std::int64_t uptime_seconds) {
    return answer_line(line, behaviour, uptime_seconds).reply;
}

std::string request_summary(std::string_view line) {
    error_code ec;
    const auto parsed = json::parse(line, ec);
    if (ec || !parsed.is_object())
        return "unparsable";
    const auto& object = parsed.get_object();
    const auto* type = object.if_contains("type");
    if (!type || !type->is_string())
        return "unparsable";
    std::string summary(type->get_string());
    const auto* payload = object.if_contains("payload");
    if (!payload || !payload->is_object())
        return summary;
    // Only fields that name things; values and contents stay out of every log.
    const std::string_view field = summary == "inject_secret"    ? "name"
                                   : summary == "inject_ssh_key" ? "user"
                                   : summary == "mount"          ? "tag"
                                                                 : "";
    if (field.empty())
        return summary;
    if (const auto* named = payload->get_object().if_contains(field); named && named->is_string())
        summary += " " + std::string(field) + "=" + std::string(named->get_string());
    return summary;
}

// ---- script_step ----------------------------------------------------------------------------

script_step& script_step::reply(protocol::guest_message message) {
    mode_ = reply_mode::message;
    message_ = std::move(message);
    return *this;
}
script_step& script_step::reply_raw(std::string bytes) {
    mode_ = reply_mode::raw;
    raw_ = std::move(bytes);
    return *this;
}
script_step& script_step::after(milliseconds delay) {
    delay_ = delay;
    return *this;
}
script_step& script_step::no_reply() {
    mode_ = reply_mode::none;
    return *this;
}
script_step& script_step::then_push_lifecycle(lifecycle_state state, std::string message) {
    actions_.push_back({after_action::kind::push_lifecycle, state, std::move(message)});
    return *this;
}
script_step& script_step::then_push_raw(std::string bytes) {
    actions_.push_back({after_action::kind::push_raw, lifecycle_state::ready, std::move(bytes)});
    return *this;
}
script_step& script_step::then_close() {
    actions_.push_back({after_action::kind::close_connection, lifecycle_state::ready, {}});
    return *this;
}

// ---- the guest ------------------------------------------------------------------------------

namespace detail {

struct listener {
    // Made from its address: asio's "noexcept" default endpoint calls code that can throw.
    explicit listener(generic_stream::endpoint bind_to) : address(std::move(bind_to)) {}

    bool hybrid = false;
    generic_stream::endpoint address;  // as bound: a TCP port 0 is replaced by the real one
    std::string unix_path;             // empty for TCP
    std::uint32_t vsock_port = 0;
    std::string endpoint_text;
    std::shared_ptr<acceptor_type> acceptor;  // null while closed
};

struct outgoing {
    std::string bytes;
    clock_type::time_point ready_at;
    bool cut_in_half = false;
    std::vector<script_step::after_action> actions;
    bool stall_after_half = false;  // half a line, then silence on this connection
};

struct connection {
    connection(socket_type s, std::size_t number)
        : id(number),
          socket(std::move(s)),
          wake(socket.get_executor()),
          lifetime(socket.get_executor()) {}

    std::size_t id;
    socket_type socket;
    asio::steady_timer wake;      // the writer's condition variable
    asio::steady_timer lifetime;  // closes the connection when `connection_lifetime` is set
    protocol::line_framer framer;
    std::deque<outgoing> replies;
    std::string pushes;            // unsolicited bytes; they go ahead of delayed replies
    std::optional<outgoing> held;  // the first of a pair, when replies are swapped
    clock_type::time_point last_reply_at{};
    std::size_t lines = 0;
    bool open = true;
    bool serving = false;     // past the hybrid handshake, reader and writer running
    bool input_done = false;  // EOF or an over-long line: close once replies are out
    bool reset_when_flushed = false;
    bool stalled = false;  // wrote half a line and went silent
};

class guest_core : public std::enable_shared_from_this<guest_core> {
  public:
    explicit guest_core(asio::any_io_executor executor)
        : executor_(std::move(executor)),
          shutdown_timer_(executor_),
          refuse_timer_(executor_),
          flood_timer_(executor_),
          booted_at_(clock_type::now()) {}

    guest_behaviour behaviour;
    fault_switches faults;
    std::deque<script_step> script;
    std::size_t next_step = 0;
    std::vector<std::string> violations;
    std::vector<received_line> received;
    std::vector<std::string> endpoints;
    std::function<void(const received_line&)> observer;
    std::function<void()> shutdown_observer;
    std::function<void(const std::string&)> delivery_observer;
    std::function<void(std::size_t)> accept_observer;
    std::size_t accepted = 0;
    // What the guest holds of what it accepted; see fake_guest::authorized_keys() and mounts().
    std::map<std::string, std::string, std::less<>> authorized_keys;
    std::vector<protocol::mount_payload> mounts;

    std::size_t open_count() const { return connections_.size(); }
    bool shut_down() const { return shutdown_started_; }
    std::chrono::seconds uptime() const {
        return std::chrono::duration_cast<std::chrono::seconds>(clock_type::now() - booted_at_);
    }

    std::string add_listener(const std::shared_ptr<listener>& where) {
        if (stopped_)
            throw std::logic_error("fake guest: listen after stop()");
        open_listener(where);
        where->address = where->acceptor->local_endpoint();
        if (is_ip(where->address)) {
            const auto port = std::to_string(port_of(where->address));
            where->endpoint_text.replace(where->endpoint_text.rfind(':') + 1, std::string::npos,
                                         port);
        }
        listeners_.push_back(where);
        endpoints.push_back(where->endpoint_text);
        return where->endpoint_text;
    }

    void push_lifecycle(lifecycle_state state, std::string message, bool set_state = true) {
        if (set_state)
            behaviour.health_state = state;
        push_raw(encode_line(protocol::lifecycle_payload{state, std::move(message)}));
    }

    void push_raw(const std::string& bytes) {
        for (auto& [id, conn] : connections_) {
            if (!conn->serving || !conn->open || conn->stalled)
                continue;
            conn->pushes += bytes;
            conn->wake.cancel();
        }
    }

    void close_all_connections() {
        auto all = connections_;
        for (auto& [id, conn] : all)
            close_connection(conn, false);
    }

    void refuse_for(milliseconds duration) {
        if (stopped_)
            return;
        close_listeners();
        refuse_timer_.expires_after(duration);
        refuse_timer_.async_wait([self = shared_from_this()](error_code ec) {
            if (!ec && !self->stopped_ && !self->shutdown_started_)
                self->reopen_listeners();
        });
    }

    void reboot(lifecycle_state state) {
        if (stopped_)
            return;
        shutdown_timer_.cancel();
        refuse_timer_.cancel();
        shutdown_started_ = false;
        close_all_connections();
        booted_at_ = clock_type::now();
        uptime_turn_ = 0;
        behaviour.health_state = state;
        // A reboot loses what was only in memory or mounted; keys written to disk stay there.
        mounts.clear();
        if (!behaviour.root_directory)
            authorized_keys.clear();
        reopen_listeners();
    }

    void stop() {
        if (stopped_)
            return;
        stopped_ = true;
        shutdown_timer_.cancel();
        refuse_timer_.cancel();
        flood_timer_.cancel();
        close_listeners();
        for (const auto& where : listeners_) {
            if (!where->unix_path.empty())
                ::unlink(where->unix_path.c_str());
        }
        close_all_connections();
    }

  private:
    // ---- listening

    void open_listener(const std::shared_ptr<listener>& where) {
        auto acceptor = std::make_shared<acceptor_type>(executor_);
        acceptor->open(where->address.protocol());
        if (is_ip(where->address)) {
            // Re-opening on the same port must not wait for TIME_WAIT connections.
            acceptor->set_option(asio::socket_base::reuse_address(true));
        } else if (!where->unix_path.empty()) {
            ::unlink(where->unix_path.c_str());  // a stale socket file from an earlier run
        }
        acceptor->bind(where->address);
        acceptor->listen(asio::socket_base::max_listen_connections);
        where->acceptor = acceptor;
        asio::co_spawn(executor_, accept_loop(shared_from_this(), where, acceptor),
                       rethrow_if_failed);
    }

    void close_listeners() {
        for (const auto& where : listeners_) {
            if (where->acceptor) {
                error_code ignored;
                where->acceptor->close(ignored);
                where->acceptor.reset();
            }
        }
    }

    void reopen_listeners() {
        for (const auto& where : listeners_) {
            if (!where->acceptor)
                open_listener(where);
        }
    }

    asio::awaitable<void> accept_loop(std::shared_ptr<guest_core> self,
                                      std::shared_ptr<listener> where,
                                      std::shared_ptr<acceptor_type> acceptor) {
        for (;;) {
            auto [ec, socket] = co_await acceptor->async_accept(use_tuple);
            if (!acceptor->is_open() || self->stopped_)
                co_return;
            if (ec) {
                // Out of descriptors or similar: try again shortly rather than spin.
                asio::steady_timer pause(executor_, std::chrono::milliseconds(10));
                co_await pause.async_wait(use_tuple);
                continue;
            }
            self->on_accepted(std::move(socket), *where);
        }
    }

    void on_accepted(socket_type socket, const listener& where) {
        // Go's net package sets TCP_NODELAY on every TCP connection; so does the real guest.
        if (where.address.protocol().family() == AF_INET ||
            where.address.protocol().family() == AF_INET6) {
            const int one = 1;
            ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        auto conn = std::make_shared<connection>(std::move(socket), ++accepted);
        connections_.emplace(conn->id, conn);
        if (accept_observer)
            accept_observer(conn->id);
        if (faults.connection_lifetime.count() > 0) {
            conn->lifetime.expires_after(faults.connection_lifetime);
            conn->lifetime.async_wait([self = shared_from_this(), conn](error_code ec) {
                if (!ec)
                    self->close_connection(conn, false);
            });
        }
        if (faults.accept_and_hang && faults.faults_after_lines == 0)
            return;  // held open by connections_, never read nor written
        if (where.hybrid) {
            asio::co_spawn(executor_, hybrid_handshake(shared_from_this(), conn, where.vsock_port),
                           rethrow_if_failed);
        } else {
            start_serving(conn);
        }
    }

    void start_serving(const std::shared_ptr<connection>& conn) {
        conn->serving = true;
        asio::co_spawn(executor_, read_requests(shared_from_this(), conn), rethrow_if_failed);
        asio::co_spawn(executor_, write_replies(shared_from_this(), conn), rethrow_if_failed);
        if (!flood_running_) {
            flood_running_ = true;
            asio::co_spawn(executor_, flood_lifecycle(shared_from_this()), rethrow_if_failed);
        }
    }

    // Firecracker's host side of vsock: "CONNECT <port>\n" -> "OK <host port>\n". Bytes after
    // the handshake line stay in the framer: a client may pipeline its first request.
    asio::awaitable<void> hybrid_handshake(std::shared_ptr<guest_core> self,
                                           std::shared_ptr<connection> conn,
                                           std::uint32_t vsock_port) {
        std::optional<std::string> line;
        while (!line) {
            auto next = conn->framer.next_line();
            if (next && *next) {
                line = std::string(**next);
                break;
            }
            if (!next || conn->framer.buffered() > max_handshake_bytes) {
                self->close_connection(conn, false);
                co_return;
            }
            auto space = conn->framer.prepare(next_read_size(conn->framer));
            auto [ec, n] = co_await conn->socket.async_read_some(
                asio::buffer(space.data(), space.size()), use_tuple);
            if (!conn->open)
                co_return;
            conn->framer.commit(n);
            if (ec) {
                self->close_connection(conn, false);
                co_return;
            }
        }
        if (*line != "CONNECT " + std::to_string(vsock_port)) {
            self->close_connection(conn, false);  // Firecracker: nothing listens on that port
            co_return;
        }
        const std::string ok = "OK " + std::to_string(1073741824 + conn->id) + "\n";
        auto [ec, n] = co_await asio::async_write(conn->socket, asio::buffer(ok), use_tuple);
        if (!conn->open)
            co_return;
        if (ec) {
            self->close_connection(conn, false);
            co_return;
        }
        self->start_serving(conn);
    }

    // ---- serving a connection

    asio::awaitable<void> read_requests(std::shared_ptr<guest_core> self,
                                        std::shared_ptr<connection> conn) {
        // The framer may already hold requests sent along with the hybrid handshake.
        if (!self->drain_lines(conn))
            co_return;
        for (;;) {
            auto space = conn->framer.prepare(next_read_size(conn->framer));
            auto [ec, n] = co_await conn->socket.async_read_some(
                asio::buffer(space.data(), space.size()), use_tuple);
            if (!conn->open)
                co_return;
            if (self->faults.accept_and_hang && conn->lines >= self->faults.faults_after_lines)
                co_return;  // hangs from now on: held open, never read again nor answered
            conn->framer.commit(n);
            if (ec) {
                if (ec != asio::error::eof) {
                    self->close_connection(conn, false);
                    co_return;
                }
                // Like bufio.Scanner, the last line may end at EOF instead of "\n".
                if (conn->framer.buffered() > 0)
                    conn->framer.feed("\n");
                if (self->drain_lines(conn))
                    self->finish_input(*conn, false);
                co_return;
            }
            if (!self->drain_lines(conn))
                co_return;
        }
    }

    // Handles every complete line; false when reading must stop.
    bool drain_lines(const std::shared_ptr<connection>& conn) {
        for (;;) {
            auto next = conn->framer.next_line();
            if (!next) {
                finish_input(*conn, true);  // over 1 MiB: reset, as the real guest's close does
                return false;
            }
            if (!*next)
                return true;
            if (!handle_line(conn, **next))
                return false;
        }
    }

    void finish_input(connection& conn, bool reset) {
        conn.input_done = true;
        conn.reset_when_flushed = reset;
        if (conn.held) {
            conn.replies.push_back(std::move(*conn.held));
            conn.held.reset();
        }
        conn.wake.cancel();
    }

    // False when the connection is closed or must not be read any more.
    bool handle_line(const std::shared_ptr<connection>& conn, std::string_view line) {
        ++conn->lines;
        received_line record{conn->id, std::string(line)};
        if (observer)
            observer(record);
        if (behaviour.keep_received_lines)
            received.push_back(std::move(record));
        if (faults.close_after_lines != 0 && conn->lines >= faults.close_after_lines) {
            close_connection(conn, false);
            return false;
        }
        if (conn->stalled)
            return true;  // read and recorded, never answered

        auto answered = answer_line(line, behaviour, uptime().count());
        const script_step* step = nullptr;
        if (next_step < script.size()) {
            if (script[next_step].type() == answered.request_type) {
                step = &script[next_step++];
            } else {
                violations.push_back("step " + std::to_string(next_step + 1) + ": expected \"" +
                                     script[next_step].type() + "\", got \"" +
                                     answered.request_type + "\" on connection " +
                                     std::to_string(conn->id));
            }
        }

        // A step that sets the answer replaces the guest's handling; otherwise the guest acts
        // on the request now, whatever the fault switches later do to the reply.
        if (!step || step->mode_ == script_step::reply_mode::default_reply)
            act_on(answered);

        // The first faults_after_lines lines of a connection are answered as a healthy guest
        // would, so a link's handshake succeeds and the fault hits an established connection.
        fault_switches active = faults;
        if (conn->lines <= faults.faults_after_lines)
            active = fault_switches{};
        std::string bytes;
        bool replies = !active.never_reply;
        milliseconds delay = active.reply_delay;
        std::vector<script_step::after_action> actions;
        if (step) {
            switch (step->mode_) {
                case script_step::reply_mode::default_reply:
                    bytes = encode_line(answered.reply);
                    break;
                case script_step::reply_mode::message:
                    bytes = encode_line(*step->message_);
                    answered.starts_shutdown = false;  // the script decides instead
                    break;
                case script_step::reply_mode::raw:
                    bytes = step->raw_;
                    answered.starts_shutdown = false;
                    break;
                case script_step::reply_mode::none:
                    replies = false;
                    answered.starts_shutdown = false;
                    break;
            }
            delay = step->delay_.value_or(delay);
            actions = step->actions_;
        } else {
            bytes = encode_line(answered.reply);
        }
        if (answered.starts_shutdown)
            begin_shutdown();

        if (!replies) {
            run_actions(conn, actions);
            return conn->open;
        }
        if (active.wrong_reply_kind) {
            bytes = answered.request_type == "ping"
                        ? encode_line(protocol::ack_payload{"ping", true, {}})
                        : encode_line(protocol::pong_reply{});
        }
        if (active.garbage_replies)
            bytes = "this is not JSON: @#%!\n";
        if (active.overlong_replies)
            bytes = overlong_line();

        // One request at a time, as the real guest: a delay starts when the previous reply
        // is due.
        const auto ready_at = std::max(clock_type::now(), conn->last_reply_at) + delay;
        conn->last_reply_at = ready_at;
        outgoing item{std::move(bytes), ready_at, active.drop_mid_reply, std::move(actions),
                      active.stall_mid_reply};
        if (active.out_of_order_replies && !conn->held) {
            conn->held = std::move(item);
            return true;
        }
        conn->replies.push_back(std::move(item));
        if (conn->held) {
            conn->replies.push_back(std::move(*conn->held));
            conn->held.reset();
        }
        conn->wake.cancel();
        return true;
    }

    // What the real guest does besides answering: report the (scripted) uptime, write keys,
    // mount. May turn an ok ack into a failed one, as a write error does in stereosd.
    void act_on(answer& answered) {
        if (auto* health = std::get_if<protocol::health_payload>(&answered.reply)) {
            const auto& sequence = behaviour.uptime_sequence;
            if (!sequence.empty())
                health->uptime_seconds = sequence[uptime_turn_++ % sequence.size()];
            return;
        }
        auto* acked = std::get_if<protocol::ack_payload>(&answered.reply);
        if (!acked || !acked->ok || !answered.request)
            return;
        std::string summary;
        if (const auto* key = std::get_if<protocol::ssh_key_payload>(&*answered.request)) {
            if (behaviour.root_directory) {
                if (const auto ec = write_authorized_keys(*behaviour.root_directory, key->user,
                                                          key->public_key)) {
                    *acked = ack("inject_ssh_key", "write authorized_keys: " + ec.message());
                    return;
                }
            }
            authorized_keys.insert_or_assign(key->user, key->public_key);
            summary = "inject_ssh_key user=" + key->user +
                      " keys=" + std::to_string(count_key_lines(key->public_key));
        } else if (const auto* mount = std::get_if<protocol::mount_payload>(&*answered.request)) {
            mounts.push_back(*mount);
            const auto stacked =
                std::count_if(mounts.begin(), mounts.end(), [&](const protocol::mount_payload& m) {
                    return m.guest_path == mount->guest_path;
                });
            summary = "mount tag=" + mount->tag + " path=" + mount->guest_path +
                      " stacked=" + std::to_string(stacked);
        } else if (const auto* secret = std::get_if<protocol::secret_payload>(&*answered.request)) {
            summary = "inject_secret name=" + secret->name;  // never the value
        } else if (std::holds_alternative<protocol::config_payload>(*answered.request)) {
            summary = "set_config";  // never the content: it carries secrets
        } else {
            return;  // shutdown: an ack, not a delivery
        }
        if (delivery_observer)
            delivery_observer(summary);
    }

    void run_actions(const std::shared_ptr<connection>& conn,
                     const std::vector<script_step::after_action>& actions) {
        using kind = script_step::after_action::kind;
        for (const auto& action : actions) {
            switch (action.what) {
                case kind::push_lifecycle:
                    push_lifecycle(action.state, action.text);
                    break;
                case kind::push_raw:
                    push_raw(action.text);
                    break;
                case kind::close_connection:
                    close_connection(conn, false);
                    break;
            }
        }
    }

    asio::awaitable<void> write_replies(std::shared_ptr<guest_core> self,
                                        std::shared_ptr<connection> conn) {
        // After a batch of pushes a due reply goes next, so a flood cannot starve replies
        // (the real guest interleaves them too).
        bool pushed_last = false;
        while (conn->open) {
            const bool reply_due =
                !conn->replies.empty() && conn->replies.front().ready_at <= clock_type::now();
            if (!conn->pushes.empty() && !(pushed_last && reply_due)) {
                const std::string bytes = std::exchange(conn->pushes, {});
                auto [ec, n] =
                    co_await asio::async_write(conn->socket, asio::buffer(bytes), use_tuple);
                if (ec) {
                    self->close_connection(conn, false);
                    co_return;
                }
                pushed_last = true;
                continue;
            }
            pushed_last = false;
            if (reply_due) {
                outgoing item = std::move(conn->replies.front());
                conn->replies.pop_front();
                const bool halved = item.cut_in_half || item.stall_after_half;
                const auto size =
                    halved ? std::max<std::size_t>(item.bytes.size() / 2, 1) : item.bytes.size();
                auto [ec, n] = co_await asio::async_write(
                    conn->socket, asio::buffer(item.bytes.data(), size), use_tuple);
                if (ec || item.cut_in_half) {
                    self->close_connection(conn, false);
                    co_return;
                }
                if (item.stall_after_half) {
                    co_await self->stay_silent(conn);
                    co_return;
                }
                if (conn->open)
                    self->run_actions(conn, item.actions);
                continue;
            }
            if (conn->replies.empty() && conn->input_done) {
                self->close_connection(conn, conn->reset_when_flushed);
                co_return;
            }
            conn->wake.expires_at(conn->replies.empty() ? clock_type::time_point::max()
                                                        : conn->replies.front().ready_at);
            co_await conn->wake.async_wait(use_tuple);
        }
    }

    // After half a line: write nothing more, but keep the connection open until the peer
    // closes it (or the guest stops).
    asio::awaitable<void> stay_silent(std::shared_ptr<connection> conn) {
        conn->stalled = true;
        conn->replies.clear();
        conn->pushes.clear();
        conn->held.reset();
        while (conn->open && !conn->input_done) {
            conn->wake.expires_at(clock_type::time_point::max());
            co_await conn->wake.async_wait(use_tuple);
        }
        close_connection(conn, false);
    }

    // `conn` may be a reference into connections_: keep the id, erase last.
    void close_connection(const std::shared_ptr<connection>& conn, bool reset) {
        if (!conn->open)
            return;
        conn->open = false;
        error_code ignored;
        if (reset)
            conn->socket.set_option(asio::socket_base::linger(true, 0), ignored);
        conn->socket.close(ignored);
        conn->wake.cancel();
        conn->lifetime.cancel();
        const std::size_t id = conn->id;
        connections_.erase(id);
    }

    // ---- shutdown and the lifecycle flood

    void begin_shutdown() {
        behaviour.health_state = lifecycle_state::shutdown;
        if (shutdown_started_)
            return;
        shutdown_started_ = true;
        // The real guest answers what is already queued, then powers off ~15 ms later.
        shutdown_timer_.expires_after(behaviour.shutdown_linger);
        shutdown_timer_.async_wait([self = shared_from_this()](error_code ec) {
            if (ec || self->stopped_)
                return;
            self->refuse_timer_.cancel();
            self->close_listeners();
            self->close_all_connections();
            if (self->shutdown_observer)
                self->shutdown_observer();
        });
    }

    // Runs while any connection is open; idles at a slow poll while the flood is off, since
    // the switch is a plain field a test may set at any moment.
    asio::awaitable<void> flood_lifecycle(std::shared_ptr<guest_core> self) {
        // At high rates one timer wake per event is slower than the rate asked for: wake at
        // most every millisecond and send every event due by then in one write.
        auto last = clock_type::now();
        double owed = 0;
        while (!self->stopped_ && !self->connections_.empty()) {
            const unsigned rate = self->faults.lifecycle_flood_per_second;
            const clock_type::duration wait =
                rate == 0
                    ? clock_type::duration(flood_idle_poll)
                    : std::max<clock_type::duration>(std::chrono::microseconds(1'000'000 / rate),
                                                     std::chrono::milliseconds(1));
            self->flood_timer_.expires_after(wait);
            co_await self->flood_timer_.async_wait(use_tuple);
            if (self->stopped_)
                break;
            const auto now = clock_type::now();
            const unsigned rate_now = self->faults.lifecycle_flood_per_second;
            owed += std::chrono::duration<double>(now - last).count() * rate_now;
            last = now;
            if (rate == 0 || rate_now == 0) {
                owed = 0;
                continue;
            }
            // A stalled loop does not burst more than a second's worth.
            owed = std::min(owed, static_cast<double>(rate_now));
            const auto count = static_cast<std::size_t>(owed);
            owed -= static_cast<double>(count);
            if (count == 0)
                continue;
            const auto line =
                encode_line(protocol::lifecycle_payload{self->behaviour.health_state, "flood"});
            std::string lines;
            lines.reserve(line.size() * count);
            for (std::size_t i = 0; i < count; ++i)
                lines += line;
            self->push_raw(lines);
        }
        self->flood_running_ = false;
    }

    asio::any_io_executor executor_;
    asio::steady_timer shutdown_timer_;
    asio::steady_timer refuse_timer_;
    asio::steady_timer flood_timer_;
    clock_type::time_point booted_at_;
    std::vector<std::shared_ptr<listener>> listeners_;
    std::map<std::size_t, std::shared_ptr<connection>> connections_;
    bool shutdown_started_ = false;
    bool stopped_ = false;
    bool flood_running_ = false;
    std::size_t uptime_turn_ = 0;  // the next index into behaviour.uptime_sequence
};

}  // namespace detail

// ---- fake_guest ------------------------------------------------------------------------------

namespace {
std::shared_ptr<detail::guest_core> make_core(asio::any_io_executor executor) {
    return std::make_shared<detail::guest_core>(std::move(executor));
}
}  // namespace

fake_guest::fake_guest(asio::any_io_executor executor)
    : fake_guest(make_core(std::move(executor))) {}

fake_guest::fake_guest(std::shared_ptr<detail::guest_core> core)
    : behaviour(core->behaviour), faults(core->faults), core_(std::move(core)) {}

fake_guest::~fake_guest() {
    // stop() only throws if memory runs out; a destructor must not throw, so report it.
    try {
        core_->stop();
    } catch (const std::exception& failure) {
        std::cerr << "fake guest: stop failed: " << failure.what() << "\n";
    }
}

std::string fake_guest::listen_tcp(const std::string& host, std::uint16_t port) {
    const auto address = asio::ip::make_address(host);
    auto where = std::make_shared<detail::listener>(
        generic_stream::endpoint(asio::ip::tcp::endpoint(address, port)));
    const std::string shown = address.is_v6() ? "[" + address.to_string() + "]" : host;
    where->endpoint_text = "tcp:" + shown + ":" + std::to_string(port);
    return core_->add_listener(where);
}

std::string fake_guest::listen_unix(const std::string& path) {
    auto where = std::make_shared<detail::listener>(
        generic_stream::endpoint(asio::local::stream_protocol::endpoint(path)));
    where->unix_path = path;
    where->endpoint_text = "unix:" + path;
    return core_->add_listener(where);
}

std::string fake_guest::listen_hybrid(const std::string& path, std::uint32_t vsock_port) {
    auto where = std::make_shared<detail::listener>(
        generic_stream::endpoint(asio::local::stream_protocol::endpoint(path)));
    where->hybrid = true;
    where->unix_path = path;
    where->vsock_port = vsock_port;
    where->endpoint_text = "hybrid:" + path + ":" + std::to_string(vsock_port);
    return core_->add_listener(where);
}

std::string fake_guest::listen_vsock(std::uint32_t cid, std::uint32_t port) {
    sockaddr_vm address{};
    address.svm_family = AF_VSOCK;
    address.svm_cid = cid;
    address.svm_port = port;
    auto where =
        std::make_shared<detail::listener>(generic_stream::endpoint(&address, sizeof address));
    where->endpoint_text = "vsock:" + (cid == VMADDR_CID_ANY ? "ANY" : std::to_string(cid)) + ":" +
                           std::to_string(port);
    return core_->add_listener(where);
}

script_step& fake_guest::expect(std::string type) {
    return core_->script.emplace_back(std::move(type));
}
bool fake_guest::script_finished() const noexcept {
    return core_->next_step == core_->script.size();
}
std::size_t fake_guest::script_steps_left() const noexcept {
    return core_->script.size() - core_->next_step;
}
const std::vector<std::string>& fake_guest::script_violations() const noexcept {
    return core_->violations;
}

void fake_guest::push_lifecycle(lifecycle_state state, std::string message) {
    core_->push_lifecycle(state, std::move(message));
}
void fake_guest::push_raw(const std::string& bytes) {
    core_->push_raw(bytes);
}
void fake_guest::close_connections() {
    core_->close_all_connections();
}
void fake_guest::refuse_connections_for(milliseconds duration) {
    core_->refuse_for(duration);
}
void fake_guest::reboot(lifecycle_state state) {
    core_->reboot(state);
}
void fake_guest::stop() {
    core_->stop();
}
void fake_guest::set_line_observer(std::function<void(const received_line&)> observer) {
    core_->observer = std::move(observer);
}
void fake_guest::set_shutdown_observer(std::function<void()> observer) {
    core_->shutdown_observer = std::move(observer);
}
void fake_guest::set_delivery_observer(std::function<void(const std::string& summary)> observer) {
    core_->delivery_observer = std::move(observer);
}
void fake_guest::set_accept_observer(std::function<void(std::size_t number)> observer) {
    core_->accept_observer = std::move(observer);
}

const std::vector<received_line>& fake_guest::received() const noexcept {
    return core_->received;
}
std::vector<std::string> fake_guest::received_texts() const {
    std::vector<std::string> texts;
    texts.reserve(core_->received.size());
    for (const auto& line : core_->received)
        texts.push_back(line.text);
    return texts;
}
std::size_t fake_guest::connections_accepted() const noexcept {
    return core_->accepted;
}
std::size_t fake_guest::open_connections() const noexcept {
    return core_->open_count();
}
bool fake_guest::is_shut_down() const noexcept {
    return core_->shut_down();
}
std::chrono::seconds fake_guest::uptime() const noexcept {
    return core_->uptime();
}
const std::vector<std::string>& fake_guest::endpoints() const noexcept {
    return core_->endpoints;
}
std::optional<std::string> fake_guest::authorized_keys(std::string_view user) const {
    const auto found = core_->authorized_keys.find(user);
    if (found == core_->authorized_keys.end())
        return std::nullopt;
    return found->second;
}
const std::vector<protocol::mount_payload>& fake_guest::mounts() const noexcept {
    return core_->mounts;
}

}  // namespace stereos::testing
