// A scripted fake `stereosd` for tests of the host daemon: it listens on TCP, unix, hybrid
// vsock or AF_VSOCK sockets, answers like the real guest by default, and can be scripted or told to
// misbehave. Like the real guest it keeps what it was given: inject_ssh_key rewrites the user's
// whole authorized_keys (optionally as a real file under a root directory), and every mount
// stacks on what is already mounted, so a test sees what re-sending does to a guest.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include <stereos/protocol/messages.hpp>

namespace stereos::testing {

using protocol::lifecycle_state;
using std::chrono::milliseconds;

// How the guest answers when nothing is scripted. Read at the moment a request is handled, so a
// test may change it at any time.
struct guest_behaviour {
    // What get_health reports. push_lifecycle() sets it too, shutdown sets `shutdown`.
    lifecycle_state health_state = lifecycle_state::ready;
    std::vector<protocol::agent_status> agents;
    // inject_ssh_key for any other user is refused like the real guest's failed user lookup.
    std::set<std::string, std::less<>> known_users = {"root", "admin"};
    // Set: each accepted inject_ssh_key also replaces ROOT/home/USER/.ssh/authorized_keys
    // (ROOT/root/.ssh/authorized_keys for root) as stereosd does: directories created as needed
    // (.ssh 0700), the payload written to authorized_keys.tmp (0600) and renamed over the file.
    // When run as root, .ssh and the file go to the user if the system knows it, so that sshd can
    // read them. A write error becomes the ack's error. "/" inside a test VM.
    std::optional<std::filesystem::path> root_directory;
    // Non-zero: a valid mount fails as "mount TAG at PATH: exit status N", as in the captures
    // (that guest had no mount device and mount(8) exited 32). Zero: mounts succeed.
    int mount_exit_status = 0;
    // Between the shutdown ack and closing every connection; the real guest took ~15 ms.
    milliseconds shutdown_linger{15};
    // Not empty: each health reply the guest gives (a client's handshake get_health included)
    // reports the next of these uptimes, cycling, instead of the real one; the turn is the
    // guest's, across connections, and reboot() starts it again. Plays a broken guest, e.g. one
    // whose answers alternate between 5 and INT64_MAX.
    std::vector<std::int64_t> uptime_sequence;
    // Keep every received line in memory for received(); a program serving thousands of guests
    // turns this off and uses a line observer instead.
    bool keep_received_lines = true;
};

// Misbehaviour, all off by default. Each switch is read when it matters (on accept, when a
// request is handled), so a test may flip it at any moment.
struct fault_switches {
    // The first this many lines of each connection are answered normally, whatever the other
    // switches say (close_after_lines aside): a client's handshake succeeds, then the faults
    // hit an established connection.
    std::size_t faults_after_lines = 0;
    // Every reply waits this long. Requests are answered one at a time as the real guest does,
    // so pipelined requests get their replies `reply_delay` apart.
    milliseconds reply_delay{0};
    // Read and record requests, never answer them.
    bool never_reply = false;
    // Connections accepted while set are never read nor written, and open ones stop being read
    // (what arrives next is dropped unanswered): the peer's writes back up.
    bool accept_and_hang = false;
    // Non-zero: a connection is closed when its Nth line arrives; that line is recorded but not
    // answered.
    std::size_t close_after_lines = 0;
    // Write the first half of a reply line, then close the connection.
    bool drop_mid_reply = false;
    // Write the first half of a reply line, then nothing more on that connection: it stays
    // open, and requests are still read and recorded, but never answered.
    bool stall_mid_reply = false;
    // Non-zero: every connection is closed (FIN) this long after it was accepted, whatever it
    // is doing; with a client that reconnects, the guest flaps.
    milliseconds connection_lifetime{0};
    // Reply with a line that is not JSON.
    bool garbage_replies = false;
    // Reply with a 2 MiB line (over the 1 MiB limit).
    bool overlong_replies = false;
    // Reply with the wrong kind: `pong` for get_health and acked requests, `ack` for ping.
    bool wrong_reply_kind = false;
    // Swap each pair of replies: the first is held until the second is ready, then both go in
    // reverse order.
    bool out_of_order_replies = false;
    // Non-zero: push this many lifecycle events per second (the current state) to every open
    // connection. Noticed within about a second of being switched on.
    unsigned lifecycle_flood_per_second = 0;
};

// One line the guest received, without its "\n" (or "\r\n"), tagged with the connection it came
// on: connections are numbered 1, 2, ... in the order they were accepted.
struct received_line {
    std::size_t connection = 0;
    std::string text;
    bool operator==(const received_line&) const = default;
};

namespace detail {
class guest_core;
}

// One expected request and what to do about it. Built by fake_guest::expect(); every method
// returns the step so calls chain:
//   guest.expect("ping").reply_after(5ms).then_push_lifecycle(lifecycle_state::healthy);
//   guest.expect("set_config").reply(protocol::ack_payload{"set_config", false, "bad toml"});
//   guest.expect("get_health").no_reply();
// A step's reply still goes through the fault switches (garbage, wrong kind...), except that a
// step's own delay replaces `reply_delay`. A step that sets the answer (reply, reply_raw,
// no_reply) replaces the guest's handling too: the request takes no effect (no key written, no
// mount, no delivery observed, no turn of the uptime sequence).
class script_step {
  public:
    explicit script_step(std::string type) : type_(std::move(type)) {}

    // Answer with this message instead of the default reply.
    script_step& reply(protocol::guest_message message);
    // Answer with these exact bytes (include the "\n" yourself).
    script_step& reply_raw(std::string bytes);
    // Delay the reply (the default one, or the one set by reply()).
    script_step& after(milliseconds delay);
    // The default reply, delayed.
    script_step& reply_after(milliseconds delay) { return after(delay); }
    // Record the request, answer nothing.
    script_step& no_reply();
    // Once the reply is written (or at once with no_reply), push a lifecycle event to every
    // open connection; as push_lifecycle(), this also sets the health state.
    script_step& then_push_lifecycle(lifecycle_state state, std::string message = {});
    // Once the reply is written, write these bytes to every open connection.
    script_step& then_push_raw(std::string bytes);
    // Once the reply is written, close the connection the request came on.
    script_step& then_close();

    const std::string& type() const noexcept { return type_; }

    // What a step does once its reply is written; built by the then_* methods.
    struct after_action {
        enum class kind { push_lifecycle, push_raw, close_connection } what;
        lifecycle_state state = lifecycle_state::ready;
        std::string text;
    };

  private:
    friend class detail::guest_core;
    enum class reply_mode { default_reply, message, raw, none };

    std::string type_;
    reply_mode mode_ = reply_mode::default_reply;
    std::optional<protocol::guest_message> message_;
    std::string raw_;
    std::optional<milliseconds> delay_;
    std::vector<after_action> actions_;
};

// One fake guest: its own state, uptime, script and any number of listeners. Cheap enough that
// a process can serve thousands. Runs on the given executor, which must be single-threaded
// (the same io_context as the code under test); call every member from that thread.
// Destroying the object stops the guest; pending operations then end on their own.
class fake_guest {
  public:
    explicit fake_guest(boost::asio::any_io_executor executor);
    ~fake_guest();
    fake_guest(const fake_guest&) = delete;
    fake_guest& operator=(const fake_guest&) = delete;

    // ---- listeners: each returns the endpoint string a client connects to. Throw
    // boost::system::system_error when the address cannot be bound.
    // "tcp:HOST:PORT" with the real port when `port` is 0; `host` is an IP address.
    std::string listen_tcp(const std::string& host = "127.0.0.1", std::uint16_t port = 0);
    // "unix:PATH". A stale socket file at `path` is replaced; stop() removes the file.
    std::string listen_unix(const std::string& path);
    // "hybrid:PATH:PORT": a Firecracker-style vsock proxy. Each connection must first send
    // "CONNECT <port>\n"; for `vsock_port` it gets "OK <n>\n" and then talks to the guest on the
    // same socket. For another port the connection is closed without an answer, as Firecracker
    // does when nothing listens on that port.
    std::string listen_hybrid(const std::string& path, std::uint32_t vsock_port = 1024);
    // "vsock:CID:PORT" ("vsock:ANY:PORT" for VMADDR_CID_ANY): a real AF_VSOCK listener.
    std::string listen_vsock(std::uint32_t cid, std::uint32_t port = 1024);

    // ---- knobs: public structs, change them at any time.
    guest_behaviour& behaviour;
    fault_switches& faults;

    // ---- script: steps are consumed in order by incoming requests. A request whose type is
    // not the next step's is a violation: it is recorded, answered by default behaviour, and
    // the step keeps waiting. Once every step is consumed, default behaviour applies.
    script_step& expect(std::string type);
    bool script_finished() const noexcept;
    std::size_t script_steps_left() const noexcept;
    const std::vector<std::string>& script_violations() const noexcept;

    // ---- actions
    // Pushes `lifecycle` to every open connection now (ahead of delayed replies) and makes
    // get_health report `state` from now on.
    void push_lifecycle(lifecycle_state state, std::string message = {});
    // Writes raw bytes to every open connection now.
    void push_raw(const std::string& bytes);
    // Closes every connection (FIN); listening goes on and uptime is kept.
    void close_connections();
    // Closes the listeners so new connections are refused (ECONNREFUSED), and re-opens them on
    // the same addresses after `duration`. Open connections are untouched.
    void refuse_connections_for(milliseconds duration);
    // Like a guest reboot: closes every connection, uptime restarts at 0 (an uptime_sequence at
    // its first value), the health state becomes `state`, the mounts are gone, and listeners
    // accept again (also after a shutdown). Written keys are forgotten only without a
    // root_directory (see authorized_keys()); files on disk are left alone.
    void reboot(lifecycle_state state = lifecycle_state::ready);
    // Closes listeners (removing unix socket files), connections and timers so the io_context
    // can run out of work. Final: the guest does not listen again.
    void stop();

    // Called with every received line, e.g. to append it to a file.
    void set_line_observer(std::function<void(const received_line&)> observer);
    // Called once a shutdown has closed every connection, as the real guest then powers off.
    void set_shutdown_observer(std::function<void()> observer);
    // Called once per request the guest accepts (its own ack is ok:true) with a summary that
    // names things and never carries a value: "inject_ssh_key user=admin keys=2" (non-blank
    // lines of the payload), "mount tag=T path=/p stacked=N" (mounts now stacked at that path),
    // "inject_secret name=NAME", "set_config". The request has taken effect by then. A fault
    // switch that garbles or withholds the reply does not undo it: the guest did the work and
    // the answer was lost, which is what makes a host re-send.
    void set_delivery_observer(std::function<void(const std::string& summary)> observer);
    // Called with the connection's number (1, 2, ...) as each connection is accepted.
    void set_accept_observer(std::function<void(std::size_t number)> observer);

    // ---- observations
    const std::vector<received_line>& received() const noexcept;
    // The texts of the received lines only, in order.
    std::vector<std::string> received_texts() const;
    std::size_t connections_accepted() const noexcept;
    std::size_t open_connections() const noexcept;
    // True between a shutdown request (or its linger) and reboot().
    bool is_shut_down() const noexcept;
    std::chrono::seconds uptime() const noexcept;
    // The listener endpoints, in the order they were added.
    const std::vector<std::string>& endpoints() const noexcept;
    // What the last accepted inject_ssh_key for `user` wrote as its whole authorized_keys;
    // nullopt if none did. reboot() forgets it unless behaviour.root_directory is set: then the
    // file is on disk, and a real VM's /home survives a reboot (only /run is lost).
    std::optional<std::string> authorized_keys(std::string_view user) const;
    // Every accepted mount in order, repeats included: a mount over a path already mounted
    // stacks on it, as mount(8) does. reboot() clears them.
    const std::vector<protocol::mount_payload>& mounts() const noexcept;

  private:
    explicit fake_guest(std::shared_ptr<detail::guest_core> core);

    std::shared_ptr<detail::guest_core> core_;
};

// The reply the real guest gives to one request line (without its "\n") under `behaviour`;
// `uptime_seconds` goes into health replies. Exposed to check default answers without sockets.
// Has no memory and no effects: it writes no file, ignores behaviour.uptime_sequence (whose turn
// belongs to a fake_guest) and answers as if a write would succeed.
protocol::guest_message default_reply(std::string_view line, const guest_behaviour& behaviour,
                                      std::int64_t uptime_seconds);

// One request line summed up for a log without anything it carries: its type, plus the name of
// a secret, the user of an SSH key or the tag of a mount ("inject_secret name=API_KEY"). Never a
// secret's value or a config's content. "unparsable" for a line that is not a JSON object.
std::string request_summary(std::string_view line);

}  // namespace stereos::testing
