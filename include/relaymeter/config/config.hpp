// Configuration: plain nested structs grouped by concern, loaded from YAML.
// No networking headers here: this file is included widely.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace relaymeter::config {

struct Price {
    double input = 0.0;                 // USD per 1M input tokens
    double output = 0.0;                // USD per 1M output tokens
    std::optional<double> cached_input; // USD per 1M cached input tokens; absent: input price
};

struct ServerConfig {
    std::string listen = "127.0.0.1:8080"; // as written
    std::string listen_host = "127.0.0.1";  // parsed from listen ("[::1]:80" -> "::1")
    std::uint16_t listen_port = 8080;
    unsigned threads = 0;                   // 0 = one per core
    std::uint64_t max_request_body_bytes = 33554432;
    std::uint32_t max_header_bytes = 65536; // request head larger than this: 431
    double header_timeout_s = 10;
    double idle_timeout_s = 75;
    double drain_timeout_s = 30;
    bool protected_mode = true;
};

struct TlsConfig {
    bool verify = true;
    std::string ca_file; // empty: system trust store
};

struct UpstreamConfig {
    std::string base_url = "https://api.openai.com/v1"; // as written (after ${VAR} expansion)
    // Parsed from base_url:
    bool tls = true;            // scheme https
    std::string host = "api.openai.com";
    std::uint16_t port = 443;
    std::string base_path = "/v1"; // no trailing slash; "" for a bare host
    std::string api_key;           // empty: the client's Authorization is forwarded
    double connect_timeout_s = 5;
    double request_timeout_s = 60;
    unsigned max_connections = 512;
    TlsConfig tls_options;
};

struct MetricsConfig {
    unsigned max_models = 64;
    unsigned max_keys = 64;   // auth on: further client key names are counted as "other"
    std::vector<std::pair<std::string, std::string>> labels; // constant labels, in file order
};

struct StreamingConfig {
    bool inject_include_usage = true;
    double idle_timeout_s = 120;  // longest silence between two chunks
    double total_timeout_s = 3600; // whole stream; 0 = no limit
};

// Per-model thresholds under alerts.models; an absent one is the global value.
struct AlertOverride {
    std::optional<double> latency_p95_ms;
    std::optional<double> error_rate_percent;
};

struct WebhookConfig {
    enum class Format { json, alertmanager };
    std::string url;            // as written (after ${VAR} expansion); may carry a secret: never log it whole
    Format format = Format::json;
    double timeout_s = 5;       // per attempt
    // Parsed from url:
    bool tls = false;
    std::string host;
    std::uint16_t port = 80;
    std::string path = "/";     // as written ("/" when absent)
};

struct AlertsConfig {
    double latency_p95_ms = 2000;
    double error_rate_percent = 5.0;
    double cost_per_hour_usd = 100.0;
    double window_s = 300;      // 60..3600: rate and percentile alerts look at the last window_s
    unsigned min_requests = 20; // fewer requests in the window: no rate or percentile alert
    double interval_s = 15;
    double for_s = 0;           // a condition must hold this long before pending becomes firing
    std::map<std::string, AlertOverride> models;
    std::vector<WebhookConfig> webhooks;
};

struct LogConfig {
    std::string level = "info"; // trace debug info warn error critical off
};

struct AuthKey {
    std::string name;
    std::string key;
};

struct AuthConfig {
    bool enabled = false;
    std::vector<AuthKey> keys;
    std::string keys_file;
};

struct AdminConfig {
    std::string token; // empty: admin endpoints open
};

// The request ledger (src/ledger): off unless the section is present.
struct LedgerConfig {
    bool enabled = false;
    std::string path;
    std::uint64_t flush_interval_ms = 1000;   // the writer writes the buffered lines this often
    std::uint64_t max_bytes = 268435456;      // 256 MiB: rotate to PATH.1 before the file would pass this
    unsigned keep = 0;                        // rotated files kept; 0 = all
    bool fsync = false;                       // fdatasync after every flush
    std::uint64_t buffer_bytes = 16777216;    // 16 MiB: bound on lines held in memory, not yet written
};

struct Config {
    std::string source; // file the config came from ("" for defaults)
    ServerConfig server;
    UpstreamConfig upstream;
    std::map<std::string, Price> pricing;
    MetricsConfig metrics;
    StreamingConfig streaming;
    AlertsConfig alerts;
    LogConfig log;
    AuthConfig auth;
    AdminConfig admin;
    LedgerConfig ledger;
};

// Every problem found in one file, each "FILE:LINE: KEY: what is wrong".
class ConfigError : public std::runtime_error {
public:
    explicit ConfigError(std::vector<std::string> errors);
    const std::vector<std::string>& errors() const noexcept { return errors_; }

private:
    std::vector<std::string> errors_;
};

// Environment lookup, injectable for tests. Returns nullopt when unset.
using EnvLookup = std::optional<std::string> (*)(const std::string& name);
std::optional<std::string> process_env(const std::string& name);

// Load and validate. Throws ConfigError listing every error found.
Config load_file(const std::string& path, EnvLookup env = process_env);
Config load_string(const std::string& yaml_text, const std::string& source_name,
                   EnvLookup env = process_env);

// yaml-cpp 0.7 (jbeder/yaml-cpp#1040, fixed after 0.8.0): a ',' at the top
// level of a document ("{a: 1}," or ",") is never consumed, and
// YAML::LoadAll collects empty documents forever. The (0-based) line of such a
// document, or nothing when LoadAll returns (or throws) on `text`. The loader
// reports it as malformed YAML before calling LoadAll.
std::optional<int> yaml_load_all_stall_line(const std::string& text);

// Expand ${VAR} and ${VAR:-default}. Throws std::invalid_argument naming the
// variable when it is unset and has no default, or when the syntax is broken.
std::string expand_env(const std::string& value, EnvLookup env = process_env);

// "host:port", "[v6]:port". Returns false on a malformed address.
bool parse_listen(const std::string& text, std::string& host, std::uint16_t& port);

// http(s)://host[:port][/path]. Fills the parsed fields of `out`; returns an
// error message, or empty on success.
std::string parse_upstream_url(const std::string& url, UpstreamConfig& out);

// A webhook URL, validated like upstream.base_url (http or https, no user
// info, no query). Fills tls, host, port and path (as written, "/" when
// absent) of `out`; returns an error message, or empty on success.
std::string parse_webhook_url(const std::string& url, WebhookConfig& out);

} // namespace relaymeter::config
