// Configuration loading: YAML -> Config, with ${VAR} expansion and validation.
//
// Every problem in a file is collected as "FILE:LINE: KEY: what is wrong"
// (LINE 1-based, KEY the dotted path) and reported together in one
// ConfigError, so a user fixes a file in one pass.

#include "relaymeter/config/config.hpp"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <optional>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <iomanip>
#include <sstream>
#include <string_view>
#include <system_error>

namespace relaymeter::config {

namespace {

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
    std::string out;
    for (std::size_t i = 0; i < parts.size(); ++i) {
        if (i != 0) out += sep;
        out += parts[i];
    }
    return out;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

std::string_view trim(std::string_view s) {
    const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; };
    while (!s.empty() && space(s.front())) s.remove_prefix(1);
    while (!s.empty() && space(s.back())) s.remove_suffix(1);
    return s;
}

std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return out;
}

// A value quoted for an error message, shortened so one line stays readable.
std::string shown(std::string_view s) {
    constexpr std::size_t max_shown = 60;
    std::string out = "'";
    if (s.size() > max_shown) {
        out.append(s.substr(0, max_shown));
        out += "...";
    } else {
        out.append(s);
    }
    out += "'";
    return out;
}

// Port: 1 to 5 decimal digits, value <= 65535.
std::optional<std::uint16_t> parse_port(std::string_view s) {
    if (s.empty() || s.size() > 5) return std::nullopt;
    unsigned value = 0;
    for (char c : s) {
        if (!is_digit(c)) return std::nullopt;
        value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(value);
}

// Registered name or IPv4 literal: letters, digits, '-', '.', '_'.
bool valid_reg_name(std::string_view s) {
    if (s.empty()) return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
        return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_';
    });
}

// Inside the brackets of an IPv6 literal: hex digits, ':', '.', optional %zone.
bool valid_ipv6_literal(std::string_view s) {
    const auto pct = s.find('%');
    const std::string_view addr = s.substr(0, pct);
    if (addr.find(':') == std::string_view::npos) return false;
    const bool addr_ok = std::all_of(addr.begin(), addr.end(),
                                     [](char c) { return is_hex(c) || c == ':' || c == '.'; });
    if (!addr_ok) return false;
    if (pct == std::string_view::npos) return true;
    const std::string_view zone = s.substr(pct + 1);
    return !zone.empty() && std::all_of(zone.begin(), zone.end(), [](char c) {
        return is_alpha(c) || is_digit(c) || c == '-' || c == '_' || c == '.';
    });
}

// Splits "host:port" / "[v6]:port" into host and the text after the colon
// (port_text is nullopt when there is no colon). Returns false on bad syntax.
bool split_host_port(std::string_view text, std::string& host,
                     std::optional<std::string_view>& port_text) {
    port_text.reset();
    if (!text.empty() && text.front() == '[') {
        const auto close = text.find(']');
        if (close == std::string_view::npos) return false;
        const std::string_view inside = text.substr(1, close - 1);
        if (!valid_ipv6_literal(inside)) return false;
        host.assign(inside);
        const std::string_view rest = text.substr(close + 1);
        if (rest.empty()) return true;
        if (rest.front() != ':') return false;
        port_text = rest.substr(1);
        return true;
    }
    const auto colon = text.find(':');
    const std::string_view name = text.substr(0, colon);
    if (!valid_reg_name(name)) return false;
    host.assign(name);
    if (colon != std::string_view::npos) port_text = text.substr(colon + 1);
    return true;
}

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diag = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t up = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
            diag = up;
        }
    }
    return row[b.size()];
}

std::string describe(const YAML::Node& n) {
    switch (n.Type()) {
    case YAML::NodeType::Map: return "a map";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Scalar: return shown(n.Scalar());
    default: return "no value";
    }
}

// A scalar written as a string: quoted, or tagged !!str.
bool is_string_scalar(const YAML::Node& n) {
    return n.Tag() == "!" || n.Tag() == "tag:yaml.org,2002:str";
}

bool is_yaml_non_finite(std::string_view s) {
    static const std::set<std::string_view> words = {
        ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF",
        ".nan", ".NaN", ".NAN"};
    return words.count(s) != 0;
}

bool read_text_file(const std::string& path, std::string& out, std::string& reason) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
        reason = "is a directory";
        return false;
    }
    errno = 0;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        reason = errno != 0 ? std::strerror(errno) : "cannot open";
        return false;
    }
    std::ostringstream ss;
    ss << in.rdbuf();
    if (in.bad()) {
        reason = "read error";
        return false;
    }
    out = ss.str();
    return true;
}

// ---------------------------------------------------------------------------

// One key/value pair being read, with its dotted path and its line (0-based;
// -1 when unknown).
struct Item {
    YAML::Node key;
    YAML::Node value;
    std::string path;
    int line = -1;
};

int line_of(const YAML::Node& key, const YAML::Node& value) {
    if (value.IsDefined() && !value.IsNull() && value.Mark().line >= 0) return value.Mark().line;
    return key.Mark().line;
}

enum class Bound { positive, non_negative };

class Loader {
public:
    Loader(std::string file, EnvLookup env) : file_(std::move(file)), env_(env) {}

    Config load(const std::string& text);
    // The documented defaults (config/relaymeter.yaml, CONTRACT.md) of the
    // keys a file may leave out whose default is not a constant: the
    // upstream from RELAYMETER_UPSTREAM / RELAYMETER_UPSTREAM_KEY, and the
    // contract's four prices.
    void documented_defaults(Config& cfg, const YAML::Node& root);

private:
    using Handler = std::function<void(const Item&)>;
    struct Field {
        const char* name;
        Handler read;
    };

    void error(int line, const std::string& key, const std::string& what);
    void error(const Item& it, const std::string& what) { error(it.line, it.path, what); }

    // Walks a map, dispatching each known key and reporting unknown and
    // duplicate ones. A missing value (null) is an empty map.
    void walk(const Item& it, const std::vector<Field>& fields);
    // Iterates the entries of a map (any keys); false when `it` is not a map.
    bool entries(const Item& it, const std::function<void(const Item&)>& each);

    std::optional<std::string> expand(const Item& it, const std::string& raw);
    std::optional<std::string> scalar_for(const Item& it, const char* expected);

    void read_string(const Item& it, std::string& dest);
    void read_bool(const Item& it, bool& dest);
    template <class T>
    void read_uint(const Item& it, T& dest, std::uint64_t min, std::uint64_t max);
    void read_double(const Item& it, double& dest, Bound bound,
                     std::optional<double> max = std::nullopt);
    // A duration in seconds: at most kMaxSeconds, so that a deadline "now +
    // this" never overflows the clock (1e10 s did, and every read timed out
    // at once).
    void read_seconds(const Item& it, double& dest, Bound bound);

    void read_server(const Item& it, ServerConfig& s);
    void read_upstream(const Item& it, UpstreamConfig& u);
    void read_pricing(const Item& it, std::map<std::string, Price>& pricing);
    void read_metrics(const Item& it, MetricsConfig& m);
    void read_streaming(const Item& it, StreamingConfig& s);
    void read_alerts(const Item& it, AlertsConfig& a);
    void read_log(const Item& it, LogConfig& l);
    void read_auth(const Item& it, AuthConfig& a);
    void read_admin(const Item& it, AdminConfig& a);
    void read_ledger(const Item& it, LedgerConfig& l);
    void read_keys_file(const Item& it, AuthConfig& a);

    void add_key(AuthConfig& a, AuthKey key, const std::string& where, const std::string& file,
                 int line, const std::string& path);

    std::string file_;
    EnvLookup env_;
    std::vector<std::string> errors_;
    std::map<std::string, std::string> key_names_; // name -> where first seen
    std::map<std::string, std::string> key_values_; // key -> where first seen
};

void Loader::error(int line, const std::string& key, const std::string& what) {
    std::string msg = file_;
    if (line >= 0) msg += ":" + std::to_string(line + 1);
    msg += ": ";
    if (!key.empty()) msg += key + ": ";
    msg += what;
    errors_.push_back(std::move(msg));
}

bool Loader::entries(const Item& it, const std::function<void(const Item&)>& each) {
    if (!it.value.IsDefined() || it.value.IsNull()) return true;
    if (!it.value.IsMap()) return false;
    std::map<std::string, int> seen;
    for (auto kv = it.value.begin(); kv != it.value.end(); ++kv) {
        // Copies: the iterator's operator-> returns a temporary proxy.
        const YAML::Node k = kv->first;
        const YAML::Node v = kv->second;
        Item child{k, v, {}, line_of(k, v)};
        const int key_line = k.Mark().line;
        if (!k.IsScalar()) {
            error(key_line, it.path, "a key must be a plain name, got " + describe(k));
            continue;
        }
        child.path = it.path.empty() ? k.Scalar() : it.path + "." + k.Scalar();
        const auto [pos, fresh] = seen.emplace(k.Scalar(), key_line);
        if (!fresh) {
            error(key_line, child.path,
                  "duplicate key (first at line " + std::to_string(pos->second + 1) + ")");
            continue;
        }
        each(child);
    }
    return true;
}

void Loader::walk(const Item& it, const std::vector<Field>& fields) {
    std::vector<std::string> names;
    for (const Field& f : fields) names.emplace_back(f.name);
    const bool is_map = entries(it, [&](const Item& child) {
        const std::string& name = child.key.Scalar();
        for (const Field& f : fields) {
            if (name == f.name) {
                f.read(child);
                return;
            }
        }
        std::string msg = "unknown key";
        std::string best;
        std::size_t best_d = 3;
        for (const std::string& n : names) {
            const std::size_t d = edit_distance(name, n);
            if (d < best_d) {
                best_d = d;
                best = n;
            }
        }
        if (!best.empty()) msg += " (did you mean '" + best + "'?)";
        msg += "; accepted: " + join(names, ", ");
        error(child.key.Mark().line, child.path, msg);
    });
    if (!is_map) {
        error(it, "expected a map with keys " + join(names, ", ") + ", got " + describe(it.value));
    }
}

std::optional<std::string> Loader::expand(const Item& it, const std::string& raw) {
    try {
        return expand_env(raw, env_);
    } catch (const std::invalid_argument& e) {
        error(it, e.what());
        return std::nullopt;
    }
}

// The expanded text of a scalar that is to be read as a number or a bool.
// A quoted string is refused unless it carries a ${VAR} to expand.
std::optional<std::string> Loader::scalar_for(const Item& it, const char* expected) {
    if (!it.value.IsScalar()) {
        error(it, std::string("expected ") + expected + ", got " + describe(it.value));
        return std::nullopt;
    }
    const std::string& raw = it.value.Scalar();
    if (is_string_scalar(it.value) && raw.find("${") == std::string::npos) {
        error(it, std::string("expected ") + expected + ", got the string " + shown(raw) +
                      " (remove the quotes)");
        return std::nullopt;
    }
    auto text = expand(it, raw);
    if (!text) return std::nullopt;
    return std::string(trim(*text));
}

void Loader::read_string(const Item& it, std::string& dest) {
    if (!it.value.IsDefined() || it.value.IsNull()) {
        dest.clear();
        return;
    }
    if (!it.value.IsScalar()) {
        error(it, "expected a string, got " + describe(it.value));
        return;
    }
    if (auto text = expand(it, it.value.Scalar())) dest = std::move(*text);
}

void Loader::read_bool(const Item& it, bool& dest) {
    const auto text = scalar_for(it, "true or false");
    if (!text) return;
    if (*text == "true" || *text == "True" || *text == "TRUE") {
        dest = true;
    } else if (*text == "false" || *text == "False" || *text == "FALSE") {
        dest = false;
    } else {
        error(it, "expected true or false, got " + shown(*text));
    }
}

template <class T>
void Loader::read_uint(const Item& it, T& dest, std::uint64_t min, std::uint64_t max) {
    const auto text = scalar_for(it, "an integer");
    if (!text) return;
    std::string_view s = *text;
    const bool negative = !s.empty() && s.front() == '-';
    if (!s.empty() && (s.front() == '+' || s.front() == '-')) s.remove_prefix(1);
    const bool all_digits =
        !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return is_digit(c); });
    if (!all_digits) {
        error(it, "expected an integer, got " + shown(*text));
        return;
    }
    const bool zero = std::all_of(s.begin(), s.end(), [](char c) { return c == '0'; });
    if (negative && !zero) {
        error(it, min == 0 ? std::string("must not be negative")
                           : "must be at least " + std::to_string(min));
        return;
    }
    std::uint64_t value = 0;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec == std::errc::result_out_of_range || value > max) {
        error(it, "must be at most " + std::to_string(max));
        return;
    }
    if (ec != std::errc() || ptr != s.data() + s.size()) {
        error(it, "expected an integer, got " + shown(*text));
        return;
    }
    if (value < min) {
        error(it, "must be at least " + std::to_string(min));
        return;
    }
    dest = static_cast<T>(value);
}

void Loader::read_seconds(const Item& it, double& dest, Bound bound) {
    constexpr double kMaxSeconds = 365.0 * 24 * 3600;
    read_double(it, dest, bound, kMaxSeconds);
}

void Loader::read_double(const Item& it, double& dest, Bound bound, std::optional<double> max) {
    const auto text = scalar_for(it, "a number");
    if (!text) return;
    if (is_yaml_non_finite(*text)) {
        error(it, "must be a finite number");
        return;
    }
    std::string_view s = *text;
    if (s.size() > 1 && s.front() == '+' && s[1] != '-') s.remove_prefix(1);
    double value = 0;
    const auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec == std::errc::result_out_of_range) {
        error(it, "must be a finite number");
        return;
    }
    if (ec != std::errc() || ptr != s.data() + s.size()) {
        error(it, "expected a number, got " + shown(*text));
        return;
    }
    if (!std::isfinite(value)) {
        error(it, "must be a finite number");
        return;
    }
    if (bound == Bound::positive && value <= 0) {
        error(it, value < 0 ? "must not be negative" : "must be greater than 0");
        return;
    }
    if (bound == Bound::non_negative && value < 0) {
        error(it, "must not be negative");
        return;
    }
    if (max && value > *max) {
        std::ostringstream os;
        os << "must be at most " << std::setprecision(15) << *max;
        error(it, os.str());
        return;
    }
    dest = value;
}

// ---------------------------------------------------------------------------

void Loader::read_server(const Item& it, ServerConfig& s) {
    constexpr std::uint64_t max_threads = 4096;
    walk(it, {
        {"listen",
         [&](const Item& f) {
             std::string text = s.listen;
             read_string(f, text);
             std::string host;
             std::uint16_t port = 0;
             if (!parse_listen(text, host, port)) {
                 error(f, "malformed address " + shown(text) +
                              " (expected HOST:PORT or [IPv6]:PORT, port 0-65535)");
                 return;
             }
             s.listen = text;
             s.listen_host = host;
             s.listen_port = port;
         }},
        {"threads", [&](const Item& f) { read_uint(f, s.threads, 0, max_threads); }},
        {"max_request_body_bytes",
         [&](const Item& f) {
             read_uint(f, s.max_request_body_bytes, 1, std::numeric_limits<std::uint64_t>::max());
         }},
        {"max_header_bytes",
         [&](const Item& f) {
             // At most 1 GiB: proxy::Request keeps a head (start line and
             // fields, each up to this limit in Beast's parser) at 32-bit offsets.
             read_uint(f, s.max_header_bytes, 1, std::uint64_t{1} << 30);
         }},
        {"header_timeout_s", [&](const Item& f) { read_seconds(f, s.header_timeout_s, Bound::positive); }},
        {"idle_timeout_s", [&](const Item& f) { read_seconds(f, s.idle_timeout_s, Bound::positive); }},
        {"drain_timeout_s", [&](const Item& f) { read_seconds(f, s.drain_timeout_s, Bound::positive); }},
        {"protected_mode", [&](const Item& f) { read_bool(f, s.protected_mode); }},
    });
}

void Loader::read_upstream(const Item& it, UpstreamConfig& u) {
    walk(it, {
        {"base_url",
         [&](const Item& f) {
             std::string text = u.base_url;
             read_string(f, text);
             UpstreamConfig parsed = u;
             const std::string err = parse_upstream_url(text, parsed);
             if (!err.empty()) {
                 error(f, err);
                 return;
             }
             u.base_url = text;
             u.tls = parsed.tls;
             u.host = parsed.host;
             u.port = parsed.port;
             u.base_path = parsed.base_path;
         }},
        {"api_key", [&](const Item& f) { read_string(f, u.api_key); }},
        {"connect_timeout_s", [&](const Item& f) { read_seconds(f, u.connect_timeout_s, Bound::positive); }},
        {"request_timeout_s", [&](const Item& f) { read_seconds(f, u.request_timeout_s, Bound::positive); }},
        {"max_connections",
         [&](const Item& f) {
             read_uint(f, u.max_connections, 1, std::numeric_limits<unsigned>::max());
         }},
        {"tls",
         [&](const Item& f) {
             walk(f, {
                 {"verify", [&](const Item& g) { read_bool(g, u.tls_options.verify); }},
                 {"ca_file", [&](const Item& g) { read_string(g, u.tls_options.ca_file); }},
             });
         }},
    });
}

void Loader::read_pricing(const Item& it, std::map<std::string, Price>& pricing) {
    const bool is_map = entries(it, [&](const Item& model) {
        const std::string& name = model.key.Scalar();
        if (trim(name).empty()) {
            error(model.key.Mark().line, model.path, "model name must not be empty");
            return;
        }
        Price price;
        bool has_input = false;
        bool has_output = false;
        std::size_t errors_before = errors_.size();
        walk(model, {
            {"input",
             [&](const Item& f) {
                 has_input = true;
                 read_double(f, price.input, Bound::non_negative);
             }},
            {"output",
             [&](const Item& f) {
                 has_output = true;
                 read_double(f, price.output, Bound::non_negative);
             }},
            {"cached_input",
             [&](const Item& f) {
                 double v = 0;
                 const std::size_t before = errors_.size();
                 read_double(f, v, Bound::non_negative);
                 if (errors_.size() == before) price.cached_input = v;
             }},
        });
        if (model.value.IsMap() || model.value.IsNull()) {
            const int line = model.key.Mark().line;
            if (!has_input) error(line, model.path + ".input", "required (USD per 1M input tokens)");
            if (!has_output) error(line, model.path + ".output", "required (USD per 1M output tokens)");
        }
        if (errors_.size() == errors_before) pricing[name] = price;
    });
    if (!is_map) {
        error(it, "expected a map of model name -> { input, output, cached_input }, got " +
                      describe(it.value));
    }
}

void Loader::read_metrics(const Item& it, MetricsConfig& m) {
    static const std::set<std::string> reserved = {"model", "code", "type", "le", "version", "key"};
    walk(it, {
        {"max_models",
         [&](const Item& f) { read_uint(f, m.max_models, 1, std::numeric_limits<unsigned>::max()); }},
        {"max_keys",
         [&](const Item& f) { read_uint(f, m.max_keys, 1, std::numeric_limits<unsigned>::max()); }},
        {"labels",
         [&](const Item& f) {
             m.labels.clear();
             const bool is_map = entries(f, [&](const Item& label) {
                 const std::string& name = label.key.Scalar();
                 const int line = label.key.Mark().line;
                 bool ok = !name.empty() && (is_alpha(name[0]) || name[0] == '_');
                 ok = ok && std::all_of(name.begin(), name.end(), [](char c) {
                          return is_alpha(c) || is_digit(c) || c == '_';
                      });
                 if (!ok) {
                     error(line, label.path, "label name must match [a-zA-Z_][a-zA-Z0-9_]*");
                     return;
                 }
                 if (name.rfind("__", 0) == 0) {
                     error(line, label.path, "label names starting with '__' are reserved");
                     return;
                 }
                 if (reserved.count(name) != 0) {
                     error(line, label.path,
                           "label name " + shown(name) +
                               " is used by relaymeter's own series (reserved: model, code, type, le, version, key)");
                     return;
                 }
                 std::string value;
                 const std::size_t before = errors_.size();
                 read_string(label, value);
                 if (errors_.size() == before) m.labels.emplace_back(name, std::move(value));
             });
             if (!is_map) error(f, "expected a map of label name -> value, got " + describe(f.value));
         }},
    });
}

void Loader::read_streaming(const Item& it, StreamingConfig& s) {
    walk(it, {
        {"inject_include_usage", [&](const Item& f) { read_bool(f, s.inject_include_usage); }},
        {"idle_timeout_s", [&](const Item& f) { read_seconds(f, s.idle_timeout_s, Bound::positive); }},
        {"total_timeout_s",
         [&](const Item& f) { read_seconds(f, s.total_timeout_s, Bound::non_negative); }},
    });
}

void Loader::read_alerts(const Item& it, AlertsConfig& a) {
    walk(it, {
        {"latency_p95_ms", [&](const Item& f) { read_double(f, a.latency_p95_ms, Bound::positive); }},
        {"error_rate_percent",
         [&](const Item& f) { read_double(f, a.error_rate_percent, Bound::non_negative, 100.0); }},
        {"cost_per_hour_usd",
         [&](const Item& f) { read_double(f, a.cost_per_hour_usd, Bound::non_negative); }},
        {"window_s",
         [&](const Item& f) {
             double v = a.window_s;
             const std::size_t before = errors_.size();
             read_double(f, v, Bound::positive, 3600.0);
             if (errors_.size() != before) return;
             if (v < 60) {
                 error(f, "must be at least 60 (windows have minute resolution, 60 to 3600 s)");
                 return;
             }
             a.window_s = v;
         }},
        {"min_requests",
         [&](const Item& f) { read_uint(f, a.min_requests, 0, std::numeric_limits<unsigned>::max()); }},
        {"interval_s", [&](const Item& f) { read_seconds(f, a.interval_s, Bound::positive); }},
        {"for_s", [&](const Item& f) { read_seconds(f, a.for_s, Bound::non_negative); }},
        {"models",
         [&](const Item& f) {
             a.models.clear();
             const bool is_map = entries(f, [&](const Item& model) {
                 const std::string& name = model.key.Scalar();
                 if (trim(name).empty()) {
                     error(model.key.Mark().line, model.path, "model name must not be empty");
                     return;
                 }
                 AlertOverride o;
                 const std::size_t before = errors_.size();
                 walk(model, {
                     {"latency_p95_ms",
                      [&](const Item& g) {
                          double v = 0;
                          const std::size_t b = errors_.size();
                          read_double(g, v, Bound::positive);
                          if (errors_.size() == b) o.latency_p95_ms = v;
                      }},
                     {"error_rate_percent",
                      [&](const Item& g) {
                          double v = 0;
                          const std::size_t b = errors_.size();
                          read_double(g, v, Bound::non_negative, 100.0);
                          if (errors_.size() == b) o.error_rate_percent = v;
                      }},
                 });
                 if (errors_.size() == before) a.models[name] = o;
             });
             if (!is_map) {
                 error(f, "expected a map of model name -> { latency_p95_ms, error_rate_percent }, got " +
                              describe(f.value));
             }
         }},
        {"webhooks",
         [&](const Item& f) {
             a.webhooks.clear();
             if (f.value.IsNull()) return;
             if (!f.value.IsSequence()) {
                 error(f, "expected a list of { url, format, timeout_s }, got " + describe(f.value));
                 return;
             }
             std::size_t index = 0;
             for (const YAML::Node& entry : f.value) {
                 Item e{f.key, entry, f.path + "[" + std::to_string(index++) + "]",
                        entry.Mark().line >= 0 ? entry.Mark().line : f.line};
                 if (!entry.IsMap()) {
                     error(e, "expected a map { url, format, timeout_s }, got " + describe(entry));
                     continue;
                 }
                 WebhookConfig w;
                 bool has_url = false;
                 const std::size_t before = errors_.size();
                 walk(e, {
                     {"url",
                      [&](const Item& g) {
                          has_url = true;
                          const std::size_t b = errors_.size();
                          read_string(g, w.url);
                          if (errors_.size() != b) return;
                          const std::string err = parse_webhook_url(w.url, w);
                          if (!err.empty()) error(g, err);
                      }},
                     {"format",
                      [&](const Item& g) {
                          std::string text;
                          const std::size_t b = errors_.size();
                          read_string(g, text);
                          if (errors_.size() != b) return;
                          if (text == "json") {
                              w.format = WebhookConfig::Format::json;
                          } else if (text == "alertmanager") {
                              w.format = WebhookConfig::Format::alertmanager;
                          } else {
                              error(g, "unknown format " + shown(text) + "; accepted: json, alertmanager");
                          }
                      }},
                     {"timeout_s", [&](const Item& g) { read_seconds(g, w.timeout_s, Bound::positive); }},
                 });
                 if (!has_url) error(e.line, e.path + ".url", "required (http://HOST[:PORT][/PATH] or https://...)");
                 if (errors_.size() == before) a.webhooks.push_back(std::move(w));
             }
         }},
    });
}

void Loader::read_log(const Item& it, LogConfig& l) {
    walk(it, {
        {"level",
         [&](const Item& f) {
             static const std::set<std::string> levels = {"trace", "debug", "info", "warn",
                                                          "error", "critical", "off"};
             std::string text = l.level;
             read_string(f, text);
             if (levels.count(text) == 0) {
                 error(f, "unknown level " + shown(text) +
                              "; accepted: trace, debug, info, warn, error, critical, off");
                 return;
             }
             l.level = text;
         }},
    });
}

void Loader::add_key(AuthConfig& a, AuthKey key, const std::string& where, const std::string& file,
                     int line, const std::string& path) {
    const auto record = [&](const std::string& what) {
        std::string msg = file;
        if (line >= 0) msg += ":" + std::to_string(line + 1);
        errors_.push_back(msg + ": " + path + ": " + what);
    };
    bool ok = true;
    if (const auto n = key_names_.find(key.name); n != key_names_.end()) {
        record("duplicate name " + shown(key.name) + " (first at " + n->second + ")");
        ok = false;
    }
    // Never show the key itself.
    if (const auto k = key_values_.find(key.key); k != key_values_.end()) {
        record("key of " + shown(key.name) + " is the same as the key at " + k->second);
        ok = false;
    }
    if (!ok) return;
    key_names_.emplace(key.name, where);
    key_values_.emplace(key.key, where);
    a.keys.push_back(std::move(key));
}

void Loader::read_keys_file(const Item& it, AuthConfig& a) {
    std::string text;
    std::string reason;
    if (!read_text_file(a.keys_file, text, reason)) {
        error(it, "cannot read " + shown(a.keys_file) + ": " + reason);
        return;
    }
    const std::string& kfile = a.keys_file;
    const std::string path = "auth.keys_file";
    std::size_t start = 0;
    int line = 0;
    std::size_t entry_lines = 0;
    while (start <= text.size()) {
        std::size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        const std::string_view raw = trim(std::string_view(text).substr(start, end - start));
        const int this_line = line;
        start = end + 1;
        ++line;
        if (raw.empty() || raw.front() == '#') continue;
        ++entry_lines;
        const auto where = kfile + ":" + std::to_string(this_line + 1);
        const auto colon = raw.find(':');
        if (colon == std::string_view::npos) {
            errors_.push_back(where + ": " + path + ": expected NAME:KEY");
            continue;
        }
        AuthKey key{std::string(trim(raw.substr(0, colon))), std::string(trim(raw.substr(colon + 1)))};
        if (key.name.empty()) {
            errors_.push_back(where + ": " + path + ": name must not be empty");
            continue;
        }
        if (key.key.empty()) {
            errors_.push_back(where + ": " + path + ": key of " + shown(key.name) +
                              " must not be empty");
            continue;
        }
        add_key(a, std::move(key), where, kfile, this_line, path);
    }
    if (entry_lines == 0 && a.keys.empty()) {
        error(it, shown(a.keys_file) + " holds no keys (expected NAME:KEY lines)");
    }
}

void Loader::read_auth(const Item& it, AuthConfig& a) {
    bool has_keys = false;
    bool has_keys_file = false;
    std::optional<Item> keys_file_item;
    walk(it, {
        {"keys",
         [&](const Item& f) {
             has_keys = true;
             if (!f.value.IsSequence()) {
                 error(f, "expected a list of { name, key }, got " + describe(f.value));
                 return;
             }
             if (f.value.size() == 0) {
                 error(f, "must not be empty (remove the auth section to turn auth off)");
                 return;
             }
             std::size_t index = 0;
             for (const YAML::Node& entry : f.value) {
                 Item e{f.key, entry, f.path + "[" + std::to_string(index++) + "]",
                        entry.Mark().line >= 0 ? entry.Mark().line : f.line};
                 AuthKey key;
                 bool has_name = false;
                 bool has_key = false;
                 const std::size_t before = errors_.size();
                 walk(e, {
                     {"name",
                      [&](const Item& g) {
                          has_name = true;
                          read_string(g, key.name);
                          if (errors_.size() == before && key.name.empty())
                              error(g, "must not be empty");
                      }},
                     {"key",
                      [&](const Item& g) {
                          has_key = true;
                          const std::size_t b = errors_.size();
                          read_string(g, key.key);
                          if (errors_.size() == b && key.key.empty()) error(g, "must not be empty");
                      }},
                 });
                 if (entry.IsMap()) {
                     if (!has_name) error(e.line, e.path + ".name", "required");
                     if (!has_key) error(e.line, e.path + ".key", "required");
                 }
                 if (errors_.size() != before) continue;
                 add_key(a, std::move(key), file_ + ":" + std::to_string(e.line + 1), file_, e.line,
                         e.path);
             }
         }},
        {"keys_file",
         [&](const Item& f) {
             has_keys_file = true;
             const std::size_t before = errors_.size();
             read_string(f, a.keys_file);
             if (errors_.size() != before) return;
             if (a.keys_file.empty()) {
                 error(f, "must not be empty");
                 return;
             }
             keys_file_item = f;
         }},
    });
    // The file is read after the inline keys so that duplicates are reported
    // against the inline entry whatever the order in the section.
    if (keys_file_item) read_keys_file(*keys_file_item, a);
    if (!has_keys && !has_keys_file && (it.value.IsNull() || it.value.IsMap())) {
        error(it, "give keys or keys_file (remove the auth section to turn auth off)");
    }
    a.enabled = has_keys || has_keys_file;
}

void Loader::read_admin(const Item& it, AdminConfig& a) {
    walk(it, {
        {"token", [&](const Item& f) { read_string(f, a.token); }},
    });
}

void Loader::read_ledger(const Item& it, LedgerConfig& l) {
    l.enabled = true;
    bool has_path = false;
    walk(it, {
        {"path",
         [&](const Item& f) {
             has_path = true;
             const std::size_t before = errors_.size();
             read_string(f, l.path);
             if (errors_.size() == before && l.path.empty()) error(f, "must not be empty");
         }},
        {"flush_interval_ms",
         [&](const Item& f) { read_uint(f, l.flush_interval_ms, 1, 3600000); }},
        {"max_bytes",
         [&](const Item& f) { read_uint(f, l.max_bytes, 4096, std::numeric_limits<std::int64_t>::max()); }},
        {"keep", [&](const Item& f) { read_uint(f, l.keep, 0, 1000000); }},
        {"fsync", [&](const Item& f) { read_bool(f, l.fsync); }},
        {"buffer_bytes",
         [&](const Item& f) { read_uint(f, l.buffer_bytes, 65536, std::uint64_t{1} << 40); }},
    });
    if (!has_path && (it.value.IsNull() || it.value.IsMap())) {
        error(it.line, it.path + ".path", "required (remove the ledger section to turn the ledger off)");
    }
}

Config Loader::load(const std::string& text) {
    Config cfg;
    cfg.source = file_;
    std::vector<YAML::Node> docs;
    try {
        if (const auto line = yaml_load_all_stall_line(text)) {
            error(*line, "", "malformed YAML: unexpected ','");
            throw ConfigError(errors_);
        }
        docs = YAML::LoadAll(text);
    } catch (const YAML::Exception& e) {
        error(e.mark.line, "", "malformed YAML: " + e.msg);
        throw ConfigError(errors_);
    }
    if (docs.size() > 1) {
        error(docs[1].Mark().line, "", "expected one YAML document, found " + std::to_string(docs.size()));
    }
    if (docs.empty() || docs[0].IsNull()) {
        documented_defaults(cfg, YAML::Node());
        if (!errors_.empty()) throw ConfigError(errors_);
        return cfg; // empty file or only comments: all defaults
    }
    const YAML::Node& root = docs[0];
    if (!root.IsMap()) {
        error(root.Mark().line, "", "the top level must be a map of sections, got " + describe(root));
        throw ConfigError(errors_);
    }
    Item top{YAML::Node(), root, "", root.Mark().line};
    walk(top, {
        {"server", [&](const Item& f) { read_server(f, cfg.server); }},
        {"upstream", [&](const Item& f) { read_upstream(f, cfg.upstream); }},
        {"pricing", [&](const Item& f) { read_pricing(f, cfg.pricing); }},
        {"metrics", [&](const Item& f) { read_metrics(f, cfg.metrics); }},
        {"streaming", [&](const Item& f) { read_streaming(f, cfg.streaming); }},
        {"alerts", [&](const Item& f) { read_alerts(f, cfg.alerts); }},
        {"log", [&](const Item& f) { read_log(f, cfg.log); }},
        {"auth", [&](const Item& f) { read_auth(f, cfg.auth); }},
        {"admin", [&](const Item& f) { read_admin(f, cfg.admin); }},
        {"ledger", [&](const Item& f) { read_ledger(f, cfg.ledger); }},
    });
    if (errors_.empty()) documented_defaults(cfg, root);
    if (!errors_.empty()) throw ConfigError(errors_);
    return cfg;
}

void Loader::documented_defaults(Config& cfg, const YAML::Node& root) {
    const auto has = [&](const char* section, const char* key) {
        if (!root.IsMap() || !root[section]) return false;
        const YAML::Node sec = root[section];
        return key == nullptr || (sec.IsMap() && static_cast<bool>(std::as_const(sec)[key]));
    };
    const auto from_env = [&](const std::string& key, const std::string& text) -> std::optional<std::string> {
        try {
            return expand_env(text, env_);
        } catch (const std::invalid_argument& e) {
            error(-1, key, std::string(e.what()) + " (the default " + text + ")");
            return std::nullopt;
        }
    };
    if (!has("upstream", "base_url")) {
        const std::string text = "${RELAYMETER_UPSTREAM:-" + UpstreamConfig{}.base_url + "}";
        if (const auto url = from_env("upstream.base_url", text)) {
            UpstreamConfig parsed = cfg.upstream;
            const std::string err = parse_upstream_url(*url, parsed);
            if (!err.empty()) {
                error(-1, "upstream.base_url", err + " (from RELAYMETER_UPSTREAM, the default " + text + ")");
            } else {
                parsed.base_url = *url;
                cfg.upstream = std::move(parsed);
            }
        }
    }
    if (!has("upstream", "api_key")) {
        if (const auto key = from_env("upstream.api_key", "${RELAYMETER_UPSTREAM_KEY:-}")) cfg.upstream.api_key = *key;
    }
    if (!has("pricing", nullptr)) {
        cfg.pricing = {{"gpt-4.1", {8.00, 32.00, std::nullopt}},
                       {"claude-sonnet-4.5", {15.00, 75.00, std::nullopt}},
                       {"gemini-2.5-flash", {2.50, 10.00, std::nullopt}},
                       {"deepseek-v3.2", {0.42, 1.68, std::nullopt}}};
    }
}

} // namespace

// ---------------------------------------------------------------------------

ConfigError::ConfigError(std::vector<std::string> errors)
    : std::runtime_error(join(errors, "\n")), errors_(std::move(errors)) {}

std::optional<std::string> process_env(const std::string& name) {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
}

std::string expand_env(const std::string& value, EnvLookup env) {
    std::string out;
    out.reserve(value.size());
    std::size_t i = 0;
    while (i < value.size()) {
        const char c = value[i];
        if (c != '$') {
            out += c;
            ++i;
            continue;
        }
        // "$${" is a literal "${".
        if (value.compare(i, 3, "$${") == 0) {
            out += "${";
            i += 3;
            continue;
        }
        if (i + 1 >= value.size() || value[i + 1] != '{') {
            out += c;
            ++i;
            continue;
        }
        const std::size_t start = i + 2;
        std::size_t j = start;
        while (j < value.size() && (is_alpha(value[j]) || is_digit(value[j]) || value[j] == '_')) ++j;
        const std::string name = value.substr(start, j - start);
        if (name.empty() || is_digit(name[0])) {
            throw std::invalid_argument("malformed ${...}: expected a variable name after '${' in " +
                                        shown(value));
        }
        if (j >= value.size()) {
            throw std::invalid_argument("malformed ${" + name + ": missing '}'");
        }
        std::optional<std::string> fallback;
        if (value[j] == '}') {
            i = j + 1;
        } else if (value.compare(j, 2, ":-") == 0) {
            const std::size_t close = value.find('}', j + 2);
            if (close == std::string::npos) {
                throw std::invalid_argument("malformed ${" + name + ":-...: missing '}'");
            }
            fallback = value.substr(j + 2, close - (j + 2));
            i = close + 1;
        } else {
            throw std::invalid_argument("malformed ${" + name + "...}: expected '}' or ':-default}' after the name");
        }
        const std::optional<std::string> set = env(name);
        if (fallback) {
            // Like the shell: the default applies when unset or empty.
            out += (set && !set->empty()) ? *set : *fallback;
        } else if (set) {
            out += *set;
        } else {
            throw std::invalid_argument("environment variable " + name +
                                        " is not set (write ${" + name +
                                        ":-default} to give a default)");
        }
    }
    return out;
}

bool parse_listen(const std::string& text, std::string& host, std::uint16_t& port) {
    std::string h;
    std::optional<std::string_view> port_text;
    if (!split_host_port(text, h, port_text) || !port_text) return false;
    const auto p = parse_port(*port_text);
    if (!p) return false;
    host = std::move(h);
    port = *p;
    return true;
}

std::string parse_upstream_url(const std::string& url, UpstreamConfig& out) {
    const auto fail = [&](const std::string& display, const std::string& why) {
        return "malformed URL " + shown(display) + ": " + why;
    };
    const auto scheme_end = url.find("://");
    if (scheme_end == std::string::npos) {
        return fail(url, "expected http://HOST[:PORT][/PATH] or https://...");
    }
    const std::string scheme = lower(std::string_view(url).substr(0, scheme_end));
    if (scheme != "http" && scheme != "https") {
        return fail(url, "scheme must be http or https, got " + shown(scheme));
    }
    const std::string_view rest = std::string_view(url).substr(scheme_end + 3);
    const auto slash = rest.find('/');
    const std::string_view authority = rest.substr(0, slash);
    const std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
    if (const auto at = authority.rfind('@'); at != std::string_view::npos) {
        // Never echo credentials.
        const std::string redacted = url.substr(0, scheme_end + 3) + "***@" +
                                     std::string(authority.substr(at + 1)) + std::string(path);
        return fail(redacted, "user info is not allowed (put the key in upstream.api_key)");
    }
    if (url.find_first_of("?#") != std::string::npos) {
        return fail(url, "a query string or fragment is not allowed");
    }
    if (authority.empty()) return fail(url, "missing host");
    std::string host;
    std::optional<std::string_view> port_text;
    if (!split_host_port(authority, host, port_text)) {
        return fail(url, "malformed host (expected a name, an IPv4 address or [IPv6])");
    }
    std::uint16_t port = scheme == "https" ? 443 : 80;
    if (port_text) {
        const auto p = parse_port(*port_text);
        if (!p || *p == 0) return fail(url, "port must be 1-65535");
        port = *p;
    }
    const bool path_ok = std::all_of(path.begin(), path.end(), [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u > 0x20 && u != 0x7f;
    });
    if (!path_ok) return fail(url, "the path must not contain spaces or control characters");
    std::string_view base = path;
    while (!base.empty() && base.back() == '/') base.remove_suffix(1);

    out.tls = scheme == "https";
    out.host = std::move(host);
    out.port = port;
    out.base_path = std::string(base);
    return {};
}

std::string parse_webhook_url(const std::string& url, WebhookConfig& out) {
    UpstreamConfig parsed;
    std::string err = parse_upstream_url(url, parsed);
    if (!err.empty()) {
        // parse_upstream_url's advice names upstream.api_key; a webhook has no such key.
        const auto advice = err.find(" (put the key in upstream.api_key)");
        if (advice != std::string::npos) err.erase(advice);
        return err;
    }
    const auto scheme_end = url.find("://");
    const auto slash = url.find('/', scheme_end + 3);
    out.tls = parsed.tls;
    out.host = parsed.host;
    out.port = parsed.port;
    out.path = slash == std::string::npos ? "/" : url.substr(slash);
    return {};
}

Config load_string(const std::string& yaml_text, const std::string& source_name, EnvLookup env) {
    return Loader(source_name, env).load(yaml_text);
}

Config load_file(const std::string& path, EnvLookup env) {
    std::string text;
    std::string reason;
    if (!read_text_file(path, text, reason)) {
        throw ConfigError({path + ": cannot read: " + reason});
    }
    return load_string(text, path, env);
}

// Each real document consumes at least one byte, so more documents than
// bytes means the parser makes no progress.
std::optional<int> yaml_load_all_stall_line(const std::string& text) {
    struct Starts final : YAML::EventHandler {
        YAML::Mark last;
        void OnDocumentStart(const YAML::Mark& m) override { last = m; }
        void OnDocumentEnd() override {}
        void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
        void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
        void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t, const std::string&) override {}
        void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
        void OnSequenceEnd() override {}
        void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {}
        void OnMapEnd() override {}
    } starts;
    std::istringstream in(text);
    YAML::Parser parser(in);
    std::size_t documents = 0;
    try {
        while (parser.HandleNextDocument(starts)) {
            if (++documents > text.size() + 1) return starts.last.line;
        }
    } catch (const YAML::Exception&) {
        // LoadAll throws the same, and the caller reports that.
    }
    return std::nullopt;
}

} // namespace relaymeter::config
