#include <stereos/protocol/codec.hpp>

#include <array>
#include <cctype>
#include <limits>
#include <utility>

#include <boost/json/monotonic_resource.hpp>
#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <boost/json/value_from.hpp>
#include <boost/system/system_error.hpp>

namespace stereos::protocol {

namespace json = boost::json;

namespace {

// Go's encoding/json writes these as \u escapes so JSON can sit inside HTML. They can only
// occur inside strings of serialized JSON, so replacing them in place is safe.
void escape_like_go_from(std::string& text, std::size_t from) {
    static constexpr std::string_view special = "<>&\xE2";
    std::size_t pos = text.find_first_of(special, from);
    if (pos == std::string::npos)
        return;
    std::string out(text, 0, pos);
    out.reserve(text.size() + 16);
    for (; pos < text.size(); ++pos) {
        const char c = text[pos];
        if (c == '<') {
            out += "\\u003c";
        } else if (c == '>') {
            out += "\\u003e";
        } else if (c == '&') {
            out += "\\u0026";
        } else if (c == '\xE2' && pos + 2 < text.size() && text[pos + 1] == '\x80' &&
                   (text[pos + 2] == '\xA8' || text[pos + 2] == '\xA9')) {
            out += text[pos + 2] == '\xA8' ? "\\u2028" : "\\u2029";
            pos += 2;
        } else {
            out += c;
        }
    }
    text = std::move(out);
}

// ---- encoding --------------------------------------------------------------------------------

json::object payload_object(const config_payload& p) {
    return {{"content", p.content}};
}
json::object payload_object(const secret_payload& p) {
    json::object o{{"name", p.name}, {"value", p.value}};
    if (p.mode != 0)
        o["mode"] = p.mode;
    return o;
}
json::object payload_object(const ssh_key_payload& p) {
    return {{"user", p.user}, {"public_key", p.public_key}};
}
json::object payload_object(const mount_payload& p) {
    json::object o{{"tag", p.tag}, {"guest_path", p.guest_path}, {"fs_type", p.fs_type}};
    if (p.read_only)
        o["read_only"] = true;
    return o;
}
json::object payload_object(const shutdown_payload& p) {
    json::object o;
    if (!p.reason.empty())
        o["reason"] = p.reason;
    return o;
}
json::object payload_object(const agent_status& p) {
    json::object o{{"name", p.name}, {"running", p.running}};
    if (!p.session.empty())
        o["session"] = p.session;
    o["restarts"] = p.restarts;
    if (!p.error.empty())
        o["error"] = p.error;
    return o;
}
json::object payload_object(const health_payload& p) {
    json::object o{{"state", to_string(p.state)}};
    if (!p.agents.empty()) {
        json::array agents;
        agents.reserve(p.agents.size());
        for (const auto& a : p.agents)
            agents.emplace_back(payload_object(a));
        o["agents"] = std::move(agents);
    }
    o["uptime_seconds"] = p.uptime_seconds;
    return o;
}
json::object payload_object(const ack_payload& p) {
    json::object o{{"reply_to", p.reply_to}, {"ok", p.ok}};
    if (!p.error.empty())
        o["error"] = p.error;
    return o;
}
json::object payload_object(const lifecycle_payload& p) {
    json::object o{{"state", to_string(p.state)}};
    if (!p.message.empty())
        o["message"] = p.message;
    return o;
}

template <class Message>
json::object envelope(const Message& message) {
    json::object o{{"type", type_name(message)}};
    std::visit(
        [&o](const auto& body) {
            using T = std::decay_t<decltype(body)>;
            if constexpr (!std::is_same_v<T, ping_request> &&
                          !std::is_same_v<T, get_health_request> &&
                          !std::is_same_v<T, pong_reply> && !std::is_same_v<T, unknown_message>) {
                o["payload"] = payload_object(body);
            }
        },
        message);
    return o;
}

template <class Message>
boost::system::error_code append_line(std::string& out, const Message& message) {
    const auto old_size = out.size();
    out += json::serialize(envelope(message));
    escape_like_go_from(out, old_size);
    out += '\n';
    if (out.size() - old_size > max_line_bytes) {
        out.resize(old_size);
        return error::line_too_long;
    }
    return {};
}

// ---- decoding --------------------------------------------------------------------------------

decode_error fail(error code, std::string detail) {
    return {make_error_code(code), std::move(detail)};
}

std::string join(std::string_view path, std::string_view key) {
    std::string out(path);
    if (!out.empty())
        out += '.';
    out += key;
    return out;
}

bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size())
        return false;
    for (std::size_t i = 0; i < a.size(); ++i) {
        if (std::tolower(static_cast<unsigned char>(a[i])) !=
            std::tolower(static_cast<unsigned char>(b[i])))
            return false;
    }
    return true;
}

// Go's decoder prefers an exact key and falls back to a case-insensitive match.
const json::value* find_key(const json::object& o, std::string_view key) {
    if (auto it = o.find(key); it != o.end())
        return &it->value();
    for (const auto& kv : o) {
        if (iequals(kv.key(), key))
            return &kv.value();
    }
    return nullptr;
}

const char* kind_name(json::kind k) {
    switch (k) {
        case json::kind::null:
            return "null";
        case json::kind::bool_:
            return "a boolean";
        case json::kind::int64:
        case json::kind::uint64:
        case json::kind::double_:
            return "a number";
        case json::kind::string:
            return "a string";
        case json::kind::array:
            return "an array";
        case json::kind::object:
            return "an object";
    }
    return "a value";
}

decode_error wrong_type(std::string_view path, const char* wanted, const json::value& got) {
    return fail(error::wrong_type,
                std::string(path) + ": expected " + wanted + ", got " + kind_name(got.kind()));
}

// Reads one field of an object into `out`. `required` fields must be present; JSON null counts
// as absent, as in Go.
class object_reader {
  public:
    object_reader(const json::object& o, std::string_view path) : object_(o), path_(path) {}

    std::optional<decode_error> string(std::string_view key, std::string& out, bool required) {
        const auto* v = present(key);
        if (!v)
            return missing(key, required);
        if (!v->is_string())
            return wrong_type(join(path_, key), "a string", *v);
        out.assign(v->get_string().data(), v->get_string().size());
        return std::nullopt;
    }
    std::optional<decode_error> boolean(std::string_view key, bool& out, bool required) {
        const auto* v = present(key);
        if (!v)
            return missing(key, required);
        if (!v->is_bool())
            return wrong_type(join(path_, key), "a boolean", *v);
        out = v->get_bool();
        return std::nullopt;
    }
    template <class Int>
    std::optional<decode_error> integer(std::string_view key, Int& out, bool required) {
        const auto* v = present(key);
        if (!v)
            return missing(key, required);
        const auto where = join(path_, key);
        if (v->is_int64()) {
            const auto n = v->get_int64();
            if (std::cmp_less(n, std::numeric_limits<Int>::min()) ||
                std::cmp_greater(n, std::numeric_limits<Int>::max()))
                return fail(error::value_out_of_range,
                            where + ": " + std::to_string(n) + " is out of range");
            out = static_cast<Int>(n);
            return std::nullopt;
        }
        if (v->is_uint64()) {
            const auto n = v->get_uint64();
            if (std::cmp_greater(n, std::numeric_limits<Int>::max()))
                return fail(error::value_out_of_range,
                            where + ": " + std::to_string(n) + " is out of range");
            out = static_cast<Int>(n);
            return std::nullopt;
        }
        return wrong_type(where, "an integer", *v);
    }
    std::optional<decode_error> state(std::string_view key, lifecycle_state& out) {
        std::string text;
        if (auto e = string(key, text, true))
            return e;
        auto parsed = parse_lifecycle_state(text);
        if (!parsed)
            return fail(error::unknown_state,
                        join(path_, key) + ": unknown state \"" + text.substr(0, 64) + "\"");
        out = *parsed;
        return std::nullopt;
    }
    const json::value* present(std::string_view key) const {
        const auto* v = find_key(object_, key);
        return (v && !v->is_null()) ? v : nullptr;
    }
    std::string path(std::string_view key) const { return join(path_, key); }

  private:
    std::optional<decode_error> missing(std::string_view key, bool required) const {
        if (!required)
            return std::nullopt;
        return fail(error::missing_field, join(path_, key) + ": required field is missing");
    }

    const json::object& object_;
    std::string path_;
};

#define STEREOS_TRY(expr)           \
    if (auto stereos_err_ = (expr)) \
    return *stereos_err_

decode_result<const json::object*> as_object(const json::value* v, std::string_view path) {
    if (!v)
        return fail(error::missing_field, std::string(path) + ": required field is missing");
    if (!v->is_object())
        return wrong_type(path, "an object", *v);
    return &v->get_object();
}

template <class T>
decode_result<T> decode_payload(const json::object& o, std::string_view path);

template <>
decode_result<agent_status> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    agent_status a;
    STEREOS_TRY(r.string("name", a.name, true));
    STEREOS_TRY(r.boolean("running", a.running, true));
    STEREOS_TRY(r.string("session", a.session, false));
    STEREOS_TRY(r.integer("restarts", a.restarts, true));
    STEREOS_TRY(r.string("error", a.error, false));
    return a;
}

template <>
decode_result<health_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    health_payload h;
    STEREOS_TRY(r.state("state", h.state));
    if (const auto* agents = r.present("agents")) {
        if (!agents->is_array())
            return wrong_type(r.path("agents"), "an array", *agents);
        const auto& list = agents->get_array();
        h.agents.reserve(list.size());
        for (std::size_t i = 0; i < list.size(); ++i) {
            const auto where = r.path("agents[" + std::to_string(i) + "]");
            auto item = as_object(&list[i], where);
            if (!item)
                return item.error();
            auto a = decode_payload<agent_status>(**item, where);
            if (!a)
                return a.error();
            h.agents.push_back(std::move(*a));
        }
    }
    STEREOS_TRY(r.integer("uptime_seconds", h.uptime_seconds, true));
    if (h.uptime_seconds < 0 || h.uptime_seconds > max_uptime_seconds) {
        return fail(error::value_out_of_range,
                    r.path("uptime_seconds") + ": " + std::to_string(h.uptime_seconds) +
                        " is outside 0.." + std::to_string(max_uptime_seconds) + " (100 years)");
    }
    return h;
}
template <>
decode_result<ack_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    ack_payload a;
    STEREOS_TRY(r.string("reply_to", a.reply_to, true));
    STEREOS_TRY(r.boolean("ok", a.ok, true));
    STEREOS_TRY(r.string("error", a.error, false));
    return a;
}
template <>
decode_result<lifecycle_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    lifecycle_payload l;
    STEREOS_TRY(r.state("state", l.state));
    STEREOS_TRY(r.string("message", l.message, false));
    return l;
}
template <>
decode_result<config_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    config_payload c;
    STEREOS_TRY(r.string("content", c.content, true));
    return c;
}
template <>
decode_result<secret_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    secret_payload s;
    STEREOS_TRY(r.string("name", s.name, true));
    STEREOS_TRY(r.string("value", s.value, true));
    STEREOS_TRY(r.integer("mode", s.mode, false));
    return s;
}
template <>
decode_result<ssh_key_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    ssh_key_payload k;
    STEREOS_TRY(r.string("user", k.user, true));
    STEREOS_TRY(r.string("public_key", k.public_key, true));
    return k;
}
template <>
decode_result<mount_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    mount_payload m;
    STEREOS_TRY(r.string("tag", m.tag, true));
    STEREOS_TRY(r.string("guest_path", m.guest_path, true));
    STEREOS_TRY(r.string("fs_type", m.fs_type, true));
    STEREOS_TRY(r.boolean("read_only", m.read_only, false));
    return m;
}
template <>
decode_result<shutdown_payload> decode_payload(const json::object& o, std::string_view path) {
    object_reader r(o, path);
    shutdown_payload s;
    STEREOS_TRY(r.string("reason", s.reason, false));
    return s;
}

// The payload of an envelope; a missing payload decodes as an empty object where that is
// valid (e.g. shutdown without a reason), since Go omits empty payloads.
template <class T>
decode_result<T> decode_envelope_payload(const object_reader& envelope) {
    static const json::object empty;
    const auto* v = envelope.present("payload");
    if (!v)
        return decode_payload<T>(empty, "payload");
    if (!v->is_object())
        return wrong_type("payload", "an object", *v);
    return decode_payload<T>(v->get_object(), "payload");
}

// Parses a line into its envelope object, with a small stack arena: replies are tiny.
template <class Handler>
auto with_envelope(std::string_view line, Handler&& handler)
    -> decltype(handler(std::declval<const json::object&>())) {
    while (!line.empty() && (line.back() == '\r' || line.back() == '\n'))
        line.remove_suffix(1);
    std::array<unsigned char, 2048> arena;
    json::monotonic_resource resource(arena.data(), arena.size());
    boost::system::error_code ec;
    json::value v = json::parse(line, ec, &resource);
    if (ec)
        return fail(error::invalid_json, "invalid JSON: " + ec.message());
    if (!v.is_object())
        return wrong_type("line", "an object", v);
    return handler(v.get_object());
}

decode_result<std::string> envelope_type(const object_reader& r) {
    std::string type;
    const auto* t = r.present("type");
    if (!t)
        return fail(error::missing_field, "type: required field is missing");
    if (!t->is_string())
        return wrong_type("type", "a string", *t);
    type.assign(t->get_string().data(), t->get_string().size());
    return type;
}

template <class Out, class T>
decode_result<Out> widen(decode_result<T>&& r) {
    if (!r)
        return r.error();
    return Out{std::move(*r)};
}

}  // namespace

// ---- public ----------------------------------------------------------------------------------

void escape_like_go(std::string& text) {
    escape_like_go_from(text, 0);
}

boost::system::result<std::string> encode(const host_message& message) {
    std::string out;
    if (auto ec = append_line(out, message))
        return ec;
    return out;
}

boost::system::result<std::string> encode(const guest_message& message) {
    std::string out;
    if (auto ec = append_line(out, message))
        return ec;
    return out;
}

std::string render_json(const host_message& message) {
    return json::serialize(envelope(message));
}

std::string render_json(const guest_message& message) {
    return json::serialize(envelope(message));
}

boost::system::error_code encode_into(std::string& out, const host_message& message) {
    return append_line(out, message);
}

decode_result<guest_message> decode_guest_line(std::string_view line) {
    return with_envelope(line, [](const json::object& o) -> decode_result<guest_message> {
        object_reader r(o, "");
        auto type = envelope_type(r);
        if (!type)
            return type.error();
        if (*type == "pong")
            return guest_message{pong_reply{}};
        if (*type == "health") {
            if (!r.present("payload"))
                return fail(error::missing_field, "payload: required field is missing");
            return widen<guest_message>(decode_envelope_payload<health_payload>(r));
        }
        if (*type == "ack") {
            if (!r.present("payload"))
                return fail(error::missing_field, "payload: required field is missing");
            return widen<guest_message>(decode_envelope_payload<ack_payload>(r));
        }
        if (*type == "lifecycle") {
            if (!r.present("payload"))
                return fail(error::missing_field, "payload: required field is missing");
            return widen<guest_message>(decode_envelope_payload<lifecycle_payload>(r));
        }
        return guest_message{unknown_message{std::move(*type)}};
    });
}

decode_result<host_request> decode_host_line(std::string_view line) {
    return with_envelope(line, [](const json::object& o) -> decode_result<host_request> {
        object_reader r(o, "");
        auto type = envelope_type(r);
        if (!type)
            return type.error();
        host_request out{*type, std::nullopt};
        auto take = [&](auto&& decoded) -> decode_result<host_request> {
            if (!decoded)
                return decoded.error();
            out.message = host_message{std::move(*decoded)};
            return std::move(out);
        };
        const auto& t = out.type;
        if (t == "ping")
            return take(decode_result<ping_request>(ping_request{}));
        if (t == "get_health")
            return take(decode_result<get_health_request>(get_health_request{}));
        if (t == "set_config")
            return take(decode_envelope_payload<config_payload>(r));
        if (t == "inject_secret")
            return take(decode_envelope_payload<secret_payload>(r));
        if (t == "inject_ssh_key")
            return take(decode_envelope_payload<ssh_key_payload>(r));
        if (t == "mount")
            return take(decode_envelope_payload<mount_payload>(r));
        if (t == "shutdown")
            return take(decode_envelope_payload<shutdown_payload>(r));
        return out;
    });
}

// ---- Boost.JSON conversions --------------------------------------------------------------------

namespace {
template <class T>
T value_to_or_throw(const json::value& in) {
    auto o = as_object(&in, "value");
    if (!o)
        throw boost::system::system_error(o.error().code, o.error().detail);
    auto r = decode_payload<T>(**o, "");
    if (!r)
        throw boost::system::system_error(r.error().code, r.error().detail);
    return std::move(*r);
}
}  // namespace

#define STEREOS_PROTOCOL_DEFINE_CONVERSIONS(T)                                  \
    void tag_invoke(json::value_from_tag, json::value& out, const T& payload) { \
        out = payload_object(payload);                                          \
    }                                                                           \
    T tag_invoke(json::value_to_tag<T>, const json::value& in) {                \
        return value_to_or_throw<T>(in);                                        \
    }

STEREOS_PROTOCOL_DEFINE_CONVERSIONS(config_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(secret_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(ssh_key_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(mount_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(shutdown_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(agent_status)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(health_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(ack_payload)
STEREOS_PROTOCOL_DEFINE_CONVERSIONS(lifecycle_payload)

#undef STEREOS_PROTOCOL_DEFINE_CONVERSIONS

void tag_invoke(json::value_from_tag, json::value& out, const lifecycle_state& state) {
    out = to_string(state);
}
lifecycle_state tag_invoke(json::value_to_tag<lifecycle_state>, const json::value& in) {
    if (!in.is_string())
        throw boost::system::system_error(error::wrong_type, "state: not a string");
    auto parsed = parse_lifecycle_state(in.get_string());
    if (!parsed)
        throw boost::system::system_error(error::unknown_state, "state: unknown state");
    return *parsed;
}

}  // namespace stereos::protocol
