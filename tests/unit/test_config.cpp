// Unit tests of the config module: the committed default file, every error
// kind (file, line and key in the message), ${VAR} expansion, the CLI.

#include <catch2/catch.hpp>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <unistd.h>

#include "relaymeter/config/cli.hpp"
#include "relaymeter/config/config.hpp"

#ifndef RELAYMETER_SOURCE_DIR
#define RELAYMETER_SOURCE_DIR ".."
#endif

using namespace relaymeter::config;
using Catch::Matchers::Contains;

namespace {

std::map<std::string, std::string>& fake_env_vars() {
    static std::map<std::string, std::string> vars;
    return vars;
}

std::optional<std::string> fake_env(const std::string& name) {
    const auto& vars = fake_env_vars();
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
}

// Sets the fake environment for one test.
struct FakeEnv {
    explicit FakeEnv(std::map<std::string, std::string> vars) { fake_env_vars() = std::move(vars); }
    ~FakeEnv() { fake_env_vars().clear(); }
    FakeEnv(const FakeEnv&) = delete;
    FakeEnv& operator=(const FakeEnv&) = delete;
};

Config load(const std::string& yaml) { return load_string(yaml, "test.yaml", fake_env); }

// The ConfigError text for `yaml`, or "" when it loads.
std::string errors_of(const std::string& yaml) {
    try {
        load(yaml);
    } catch (const ConfigError& e) {
        return e.what();
    }
    return {};
}

std::vector<std::string> error_list(const std::string& yaml) {
    try {
        load(yaml);
    } catch (const ConfigError& e) {
        return e.errors();
    }
    return {};
}

// A scratch directory removed at the end of the test.
struct TempDir {
    TempDir() {
        static std::atomic<int> counter{0};
        path_ = std::filesystem::temp_directory_path() /
                ("relaymeter_config_test_" + std::to_string(::getpid()) + "_" +
                 std::to_string(counter++));
        std::filesystem::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;

    std::string write(const std::string& name, const std::string& text) const {
        const auto p = path_ / name;
        std::ofstream(p) << text;
        return p.string();
    }
    std::string path(const std::string& name) const { return (path_ / name).string(); }

private:
    std::filesystem::path path_;
};

const std::string default_config_path = std::string(RELAYMETER_SOURCE_DIR) + "/config/relaymeter.yaml";

} // namespace

// ---------------------------------------------------------------------------
// The committed default file

TEST_CASE("config: committed default file loads with every documented default", "[config]") {
    FakeEnv env({});
    const Config c = load_file(default_config_path, fake_env);
    CHECK(c.source == default_config_path);

    CHECK(c.server.listen == "127.0.0.1:8080");
    CHECK(c.server.listen_host == "127.0.0.1");
    CHECK(c.server.listen_port == 8080);
    CHECK(c.server.threads == 0);
    CHECK(c.server.max_request_body_bytes == 33554432u);
    CHECK(c.server.max_header_bytes == 65536u);
    CHECK(c.server.header_timeout_s == 10);
    CHECK(c.server.idle_timeout_s == 75);
    CHECK(c.server.drain_timeout_s == 30);
    CHECK(c.server.protected_mode);

    CHECK(c.upstream.base_url == "https://api.openai.com/v1");
    CHECK(c.upstream.tls);
    CHECK(c.upstream.host == "api.openai.com");
    CHECK(c.upstream.port == 443);
    CHECK(c.upstream.base_path == "/v1");
    CHECK(c.upstream.api_key.empty());
    CHECK(c.upstream.connect_timeout_s == 5);
    CHECK(c.upstream.request_timeout_s == 60);
    CHECK(c.upstream.max_connections == 512);
    CHECK(c.upstream.tls_options.verify);
    CHECK(c.upstream.tls_options.ca_file.empty());

    REQUIRE(c.pricing.size() == 4);
    CHECK(c.pricing.at("gpt-4.1").input == 8.00);
    CHECK(c.pricing.at("gpt-4.1").output == 32.00);
    CHECK_FALSE(c.pricing.at("gpt-4.1").cached_input.has_value());
    CHECK(c.pricing.at("claude-sonnet-4.5").input == 15.00);
    CHECK(c.pricing.at("claude-sonnet-4.5").output == 75.00);
    CHECK(c.pricing.at("gemini-2.5-flash").input == 2.50);
    CHECK(c.pricing.at("gemini-2.5-flash").output == 10.00);
    CHECK(c.pricing.at("deepseek-v3.2").input == 0.42);
    CHECK(c.pricing.at("deepseek-v3.2").output == 1.68);

    CHECK(c.metrics.max_models == 64);
    CHECK(c.metrics.labels.empty());
    CHECK(c.streaming.inject_include_usage);
    CHECK(c.streaming.idle_timeout_s == 120);
    CHECK(c.streaming.total_timeout_s == 3600);
    CHECK(c.alerts.latency_p95_ms == 2000);
    CHECK(c.alerts.error_rate_percent == 5.0);
    CHECK(c.alerts.cost_per_hour_usd == 100.0);
    CHECK(c.alerts.window_s == 300);
    CHECK(c.alerts.min_requests == 20);
    CHECK(c.alerts.interval_s == 15);
    CHECK(c.log.level == "info");

    CHECK_FALSE(c.auth.enabled);
    CHECK(c.auth.keys.empty());
    CHECK(c.admin.token.empty());
    CHECK_FALSE(c.ledger.enabled);
}

TEST_CASE("config: committed default file follows the environment", "[config]") {
    FakeEnv env({{"RELAYMETER_UPSTREAM", "http://relay.example:8081/api/v1/"},
                 {"RELAYMETER_UPSTREAM_KEY", "sk-test"}});
    const Config c = load_file(default_config_path, fake_env);
    CHECK(c.upstream.base_url == "http://relay.example:8081/api/v1/");
    CHECK_FALSE(c.upstream.tls);
    CHECK(c.upstream.host == "relay.example");
    CHECK(c.upstream.port == 8081);
    CHECK(c.upstream.base_path == "/api/v1");
    CHECK(c.upstream.api_key == "sk-test");
}

TEST_CASE("config: the optional sections of the default file load when uncommented", "[config]") {
    FakeEnv env({{"TEAM_A_KEY", "ka"}, {"RELAYMETER_ADMIN_TOKEN", "adm"}});
    const Config c = load(
        "ledger: { path: /var/lib/relaymeter/ledger.jsonl }\n"
        "auth:   { keys: [ { name: team-a, key: \"${TEAM_A_KEY}\" } ] }\n"
        "admin:  { token: \"${RELAYMETER_ADMIN_TOKEN}\" }\n");
    CHECK(c.ledger.enabled);
    CHECK(c.ledger.path == "/var/lib/relaymeter/ledger.jsonl");
    CHECK(c.auth.enabled);
    REQUIRE(c.auth.keys.size() == 1);
    CHECK(c.auth.keys[0].name == "team-a");
    CHECK(c.auth.keys[0].key == "ka");
    CHECK(c.admin.token == "adm");
}

TEST_CASE("config: empty file and comment-only file give all defaults", "[config]") {
    FakeEnv env({});
    for (const char* text : {"", "\n\n", "# nothing here\n   # still nothing\n", "---\n"}) {
        const Config c = load(text);
        const Config d;
        CHECK(c.source == "test.yaml");
        CHECK(c.server.listen == d.server.listen);
        CHECK(c.server.listen_port == 8080);
        CHECK(c.upstream.host == "api.openai.com");
        CHECK(c.upstream.base_url == "https://api.openai.com/v1");
        CHECK(c.upstream.api_key.empty());
        REQUIRE(c.pricing.size() == 4);
        CHECK(c.pricing.at("gpt-4.1").input == 8.00);
        CHECK(c.pricing.at("gpt-4.1").output == 32.00);
        CHECK(c.pricing.at("claude-sonnet-4.5").output == 75.00);
        CHECK(c.pricing.at("gemini-2.5-flash").input == 2.50);
        CHECK(c.pricing.at("deepseek-v3.2").output == 1.68);
        CHECK(c.log.level == "info");
        CHECK_FALSE(c.auth.enabled);
        CHECK_FALSE(c.ledger.enabled);
    }
}

TEST_CASE("config: without upstream keys or pricing, the documented defaults apply", "[config]") {
    SECTION("RELAYMETER_UPSTREAM and RELAYMETER_UPSTREAM_KEY give the upstream") {
        FakeEnv env({{"RELAYMETER_UPSTREAM", "http://127.0.0.1:9001/relay"}, {"RELAYMETER_UPSTREAM_KEY", "sk-env"}});
        const Config c = load("server:\n  listen: 127.0.0.1:0\n");
        CHECK(c.upstream.base_url == "http://127.0.0.1:9001/relay");
        CHECK(c.upstream.host == "127.0.0.1");
        CHECK(c.upstream.port == 9001);
        CHECK_FALSE(c.upstream.tls);
        CHECK(c.upstream.api_key == "sk-env");
        CHECK(c.pricing.size() == 4);
    }
    SECTION("keys the file sets win over the environment") {
        FakeEnv env({{"RELAYMETER_UPSTREAM", "http://127.0.0.1:9001"}, {"RELAYMETER_UPSTREAM_KEY", "sk-env"}});
        const Config c = load("upstream:\n  base_url: http://127.0.0.1:9002\n  api_key: sk-file\npricing: {}\n");
        CHECK(c.upstream.port == 9002);
        CHECK(c.upstream.api_key == "sk-file");
        CHECK(c.pricing.empty());
    }
    SECTION("a bad RELAYMETER_UPSTREAM is a clear error") {
        FakeEnv env(std::map<std::string, std::string>{{"RELAYMETER_UPSTREAM", "ftp://example"}});
        const std::string e = errors_of("server: {}\n");
        CHECK_THAT(e, Catch::Contains("upstream.base_url") && Catch::Contains("RELAYMETER_UPSTREAM"));
    }
}

TEST_CASE("config: an empty section keeps its defaults", "[config]") {
    FakeEnv env({});
    const Config c = load("server:\nupstream: {}\nmetrics:\n  labels:\n");
    CHECK(c.server.listen_port == 8080);
    CHECK(c.upstream.port == 443);
    CHECK(c.metrics.labels.empty());
}

TEST_CASE("config: values of every type are read", "[config]") {
    FakeEnv env({});
    const Config c = load(
        "server:\n"
        "  listen: \"[::1]:9000\"\n"
        "  threads: 4\n"
        "  max_request_body_bytes: 1048576\n"
        "  max_header_bytes: 8192\n"
        "  header_timeout_s: 2.5\n"
        "  idle_timeout_s: 1\n"
        "  drain_timeout_s: 0.5\n"
        "  protected_mode: false\n"
        "upstream:\n"
        "  base_url: http://[::1]:8081\n"
        "  api_key: sk-123\n"
        "  connect_timeout_s: 1\n"
        "  request_timeout_s: 2\n"
        "  max_connections: 8\n"
        "  tls: { verify: false, ca_file: /etc/ssl/ca.pem }\n"
        "pricing:\n"
        "  m1: { input: 1, output: 2, cached_input: 0.5 }\n"
        "  free: { input: 0, output: 0 }\n"
        "metrics:\n"
        "  max_models: 3\n"
        "  labels: { monitor: holysheep, region: eu, n: 5 }\n"
        "streaming: { inject_include_usage: false, idle_timeout_s: 3, total_timeout_s: 0 }\n"
        "alerts: { latency_p95_ms: 100, error_rate_percent: 0, cost_per_hour_usd: 0, window_s: 60,"
        " min_requests: 0, interval_s: 1 }\n"
        "log: { level: debug }\n");
    CHECK(c.server.listen == "[::1]:9000");
    CHECK(c.server.listen_host == "::1");
    CHECK(c.server.listen_port == 9000);
    CHECK(c.server.threads == 4);
    CHECK(c.server.max_request_body_bytes == 1048576u);
    CHECK(c.server.max_header_bytes == 8192u);
    CHECK(c.server.header_timeout_s == 2.5);
    CHECK(c.server.drain_timeout_s == 0.5);
    CHECK_FALSE(c.server.protected_mode);
    CHECK_FALSE(c.upstream.tls);
    CHECK(c.upstream.host == "::1");
    CHECK(c.upstream.port == 8081);
    CHECK(c.upstream.base_path.empty());
    CHECK(c.upstream.api_key == "sk-123");
    CHECK(c.upstream.max_connections == 8);
    CHECK_FALSE(c.upstream.tls_options.verify);
    CHECK(c.upstream.tls_options.ca_file == "/etc/ssl/ca.pem");
    REQUIRE(c.pricing.size() == 2);
    REQUIRE(c.pricing.at("m1").cached_input.has_value());
    CHECK(*c.pricing.at("m1").cached_input == 0.5);
    CHECK(c.pricing.at("free").input == 0);
    CHECK(c.metrics.max_models == 3);
    REQUIRE(c.metrics.labels.size() == 3);
    CHECK(c.metrics.labels[0] == std::pair<std::string, std::string>("monitor", "holysheep"));
    CHECK(c.metrics.labels[1] == std::pair<std::string, std::string>("region", "eu"));
    CHECK(c.metrics.labels[2] == std::pair<std::string, std::string>("n", "5"));
    CHECK_FALSE(c.streaming.inject_include_usage);
    CHECK(c.streaming.total_timeout_s == 0);
    CHECK(c.alerts.min_requests == 0);
    CHECK(c.log.level == "debug");
}

// ---------------------------------------------------------------------------
// Errors: file, line, key

TEST_CASE("config: unknown keys at every level are errors with the accepted keys", "[config]") {
    FakeEnv env({});
    SECTION("top level") {
        const auto e = errors_of("server: {}\nserverr: {}\n");
        CHECK_THAT(e, Contains("test.yaml:2: serverr: unknown key"));
        CHECK_THAT(e, Contains("did you mean 'server'?"));
        CHECK_THAT(e, Contains("accepted: server, upstream, pricing"));
    }
    SECTION("in a section") {
        const auto e = errors_of("server:\n  threads: 2\n  listn: \"127.0.0.1:1\"\n");
        CHECK_THAT(e, Contains("test.yaml:3: server.listn: unknown key"));
        CHECK_THAT(e, Contains("listen"));
    }
    SECTION("nested") {
        const auto e = errors_of("upstream:\n  tls:\n    verify: true\n    cafile: x\n");
        CHECK_THAT(e, Contains("test.yaml:4: upstream.tls.cafile: unknown key"));
        CHECK_THAT(e, Contains("verify, ca_file"));
    }
    SECTION("in a price") {
        const auto e = errors_of("pricing:\n  m: { input: 1, output: 2, cache: 1 }\n");
        CHECK_THAT(e, Contains("test.yaml:2: pricing.m.cache: unknown key"));
    }
}

TEST_CASE("config: duplicate keys are errors", "[config]") {
    FakeEnv env({});
    const auto e = errors_of("server:\n  threads: 1\n  threads: 2\n");
    CHECK_THAT(e, Contains("test.yaml:3: server.threads: duplicate key (first at line 2)"));
}

TEST_CASE("config: wrong types are errors", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("server:\n  threads: many\n"),
               Contains("test.yaml:2: server.threads: expected an integer, got 'many'"));
    CHECK_THAT(errors_of("server:\n  threads: 1.5\n"),
               Contains("test.yaml:2: server.threads: expected an integer"));
    CHECK_THAT(errors_of("server:\n  threads: \"4\"\n"),
               Contains("test.yaml:2: server.threads: expected an integer, got the string '4'"));
    CHECK_THAT(errors_of("server:\n  header_timeout_s: soon\n"),
               Contains("test.yaml:2: server.header_timeout_s: expected a number, got 'soon'"));
    CHECK_THAT(errors_of("server:\n  header_timeout_s: [1]\n"),
               Contains("test.yaml:2: server.header_timeout_s: expected a number, got a list"));
    CHECK_THAT(errors_of("server:\n  header_timeout_s:\n"),
               Contains("test.yaml:2: server.header_timeout_s: expected a number, got no value"));
    CHECK_THAT(errors_of("server:\n  listen: { host: x }\n"),
               Contains("test.yaml:2: server.listen: expected a string, got a map"));
    CHECK_THAT(errors_of("server:\n  protected_mode: yes\n"),
               Contains("test.yaml:2: server.protected_mode: expected true or false, got 'yes'"));
    CHECK_THAT(errors_of("server:\n  protected_mode: 1\n"),
               Contains("test.yaml:2: server.protected_mode: expected true or false"));
    CHECK_THAT(errors_of("upstream:\n  tls: true\n"),
               Contains("test.yaml:2: upstream.tls: expected a map with keys verify, ca_file"));
    CHECK_THAT(errors_of("server: 5\n"), Contains("test.yaml:1: server: expected a map"));
    CHECK_THAT(errors_of("pricing: [a, b]\n"), Contains("test.yaml:1: pricing: expected a map"));
    CHECK_THAT(errors_of("metrics:\n  labels: [a]\n"), Contains("test.yaml:2: metrics.labels: expected a map"));
    CHECK_THAT(errors_of("log:\n  level: [info]\n"), Contains("test.yaml:2: log.level: expected a string"));
}

TEST_CASE("config: out-of-range numbers are errors", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("server:\n  threads: -1\n"),
               Contains("test.yaml:2: server.threads: must not be negative"));
    CHECK_THAT(errors_of("server:\n  header_timeout_s: 0\n"),
               Contains("test.yaml:2: server.header_timeout_s: must be greater than 0"));
    CHECK_THAT(errors_of("server:\n  idle_timeout_s: -3\n"),
               Contains("test.yaml:2: server.idle_timeout_s: must not be negative"));
    CHECK_THAT(errors_of("upstream:\n  connect_timeout_s: 0\n"),
               Contains("test.yaml:2: upstream.connect_timeout_s: must be greater than 0"));
    CHECK_THAT(errors_of("upstream:\n  max_connections: 0\n"),
               Contains("test.yaml:2: upstream.max_connections: must be at least 1"));
    // yaml-cpp 0.7's LoadAll never returns on a top-level ',': an error, not a hang.
    CHECK_THAT(errors_of(","), Contains("test.yaml:1: malformed YAML: unexpected ','"));
    CHECK_THAT(errors_of("{server: {threads: 1}},"), Contains("malformed YAML: unexpected ','"));
    CHECK_THAT(errors_of("metrics:\n  max_models: 0\n"),
               Contains("test.yaml:2: metrics.max_models: must be at least 1"));
    CHECK_THAT(errors_of("server:\n  max_request_body_bytes: 0\n"),
               Contains("test.yaml:2: server.max_request_body_bytes: must be at least 1"));
    CHECK_THAT(errors_of("server:\n  max_header_bytes: 99999999999\n"),
               Contains("test.yaml:2: server.max_header_bytes: must be at most 1073741824"));
    CHECK_THAT(errors_of("server:\n  max_request_body_bytes: 99999999999999999999999\n"),
               Contains("test.yaml:2: server.max_request_body_bytes: must be at most"));
    CHECK_THAT(errors_of("alerts:\n  error_rate_percent: 150\n"),
               Contains("test.yaml:2: alerts.error_rate_percent: must be at most 100"));
    CHECK_THAT(errors_of("streaming:\n  total_timeout_s: -1\n"),
               Contains("test.yaml:2: streaming.total_timeout_s: must not be negative"));
    CHECK(errors_of("streaming:\n  total_timeout_s: 0\nserver:\n  threads: 0\n").empty());
    // Durations: at most a year (1e10 s overflowed the clock: every deadline
    // had passed already, and each request timed out at once).
    for (const std::string key : {"server:\n  header_timeout_s", "server:\n  idle_timeout_s",
                                  "server:\n  drain_timeout_s", "upstream:\n  connect_timeout_s",
                                  "upstream:\n  request_timeout_s", "streaming:\n  idle_timeout_s",
                                  "streaming:\n  total_timeout_s", "alerts:\n  interval_s", "alerts:\n  for_s"}) {
        INFO(key);
        const std::string dotted = key.substr(0, key.find(':')) + "." + key.substr(key.find("\n  ") + 3);
        CHECK_THAT(errors_of(key + ": 1e10\n"), Contains("test.yaml:2: " + dotted + ": must be at most 31536000"));
        CHECK(errors_of(key + ": 31536000\n").empty());
    }
    CHECK_THAT(errors_of("alerts:\n  webhooks:\n    - { url: \"http://h/x\", timeout_s: 1e10 }\n"),
               Contains("timeout_s: must be at most 31536000"));
}

TEST_CASE("config: pricing is validated", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("pricing:\n  gpt-4.1: { input: -1, output: 2 }\n"),
               Contains("test.yaml:2: pricing.gpt-4.1.input: must not be negative"));
    CHECK_THAT(errors_of("pricing:\n  m:\n    input: 1\n    output: .inf\n"),
               Contains("test.yaml:4: pricing.m.output: must be a finite number"));
    CHECK_THAT(errors_of("pricing:\n  m: { input: .nan, output: 1 }\n"),
               Contains("test.yaml:2: pricing.m.input: must be a finite number"));
    CHECK_THAT(errors_of("pricing:\n  m: { input: 1, output: 2, cached_input: -0.1 }\n"),
               Contains("test.yaml:2: pricing.m.cached_input: must not be negative"));
    CHECK_THAT(errors_of("pricing:\n  m: { input: \"1\", output: 2 }\n"),
               Contains("test.yaml:2: pricing.m.input: expected a number, got the string '1'"));
    CHECK_THAT(errors_of("pricing:\n  m: 3\n"), Contains("test.yaml:2: pricing.m: expected a map"));

    const auto missing = errors_of("pricing:\n  a: { input: 1, output: 1 }\n  m: { output: 2 }\n  n: {}\n");
    CHECK_THAT(missing, Contains("test.yaml:3: pricing.m.input: required"));
    CHECK_THAT(missing, Contains("test.yaml:4: pricing.n.input: required"));
    CHECK_THAT(missing, Contains("test.yaml:4: pricing.n.output: required"));
}

TEST_CASE("config: malformed YAML reports its line", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("server:\n  threads: [1\n  listen: x\n"), Contains("test.yaml:"));
    CHECK_THAT(errors_of("server:\n  threads: [1\n  listen: x\n"), Contains("malformed YAML"));
    CHECK_THAT(errors_of("server:\n  threads: 1\n bad: 2\n"), Contains("test.yaml:3: malformed YAML"));
    CHECK_THAT(errors_of("server: *nowhere\n"), Contains("test.yaml:1: malformed YAML"));
}

TEST_CASE("config: a top level that is not a map is an error", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("just a string\n"), Contains("test.yaml:1: the top level must be a map"));
    CHECK_THAT(errors_of("- a\n- b\n"), Contains("test.yaml:1: the top level must be a map"));
    CHECK_THAT(errors_of("a: 1\n--- \nb: 2\n"), Contains("expected one YAML document"));
}

TEST_CASE("config: a missing or unreadable file is an error", "[config]") {
    TempDir dir;
    const std::string missing = dir.path("nope.yaml");
    try {
        load_file(missing, fake_env);
        FAIL("no error");
    } catch (const ConfigError& e) {
        REQUIRE(e.errors().size() == 1);
        CHECK(e.errors()[0] == missing + ": cannot read: No such file or directory");
    }
    try {
        load_file(dir.path(""), fake_env);
        FAIL("no error");
    } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Contains(": cannot read: is a directory"));
    }
}

TEST_CASE("config: load_file reports errors under the path it was given", "[config]") {
    FakeEnv env({});
    TempDir dir;
    const std::string path = dir.write("relaymeter.yaml", "server:\n  threads: x\n");
    try {
        load_file(path, fake_env);
        FAIL("no error");
    } catch (const ConfigError& e) {
        CHECK_THAT(e.what(), Contains(path + ":2: server.threads: expected an integer"));
    }
}

TEST_CASE("config: upstream URL is validated", "[config]") {
    FakeEnv env({});
    const auto bad = [](const std::string& url) {
        return errors_of("upstream:\n  base_url: \"" + url + "\"\n");
    };
    CHECK_THAT(bad("ftp://x/v1"), Contains("test.yaml:2: upstream.base_url: malformed URL 'ftp://x/v1'"));
    CHECK_THAT(bad("api.openai.com/v1"), Contains("test.yaml:2: upstream.base_url: malformed URL"));
    CHECK_THAT(bad("https:///v1"), Contains("missing host"));
    CHECK_THAT(bad("https://h:0/"), Contains("port must be 1-65535"));
    CHECK_THAT(bad("https://h:70000/"), Contains("port must be 1-65535"));
    CHECK_THAT(bad("https://h:abc/"), Contains("port must be 1-65535"));
    CHECK_THAT(bad("https://h:/"), Contains("port must be 1-65535"));
    CHECK_THAT(bad("https://h/v1?x=1"), Contains("query string or fragment"));
    CHECK_THAT(bad("https://h/v1#top"), Contains("query string or fragment"));
    CHECK_THAT(bad("https://::1/v1"), Contains("malformed host"));
    CHECK_THAT(bad("https://[zz]/v1"), Contains("malformed host"));
    CHECK_THAT(bad("https://h/a b"), Contains("spaces"));
    const auto userinfo = bad("https://user:secret@h/v1");
    CHECK_THAT(userinfo, Contains("user info is not allowed"));
    CHECK(userinfo.find("secret") == std::string::npos);
}

TEST_CASE("config: parse_upstream_url fills scheme, host, port and base path", "[config]") {
    struct Case {
        std::string url;
        bool tls;
        std::string host;
        std::uint16_t port;
        std::string base_path;
    };
    const Case cases[] = {
        {"https://api.openai.com/v1", true, "api.openai.com", 443, "/v1"},
        {"https://api.openai.com/v1/", true, "api.openai.com", 443, "/v1"},
        {"HTTPS://relay.example", true, "relay.example", 443, ""},
        {"https://relay.example/", true, "relay.example", 443, ""},
        {"http://127.0.0.1:8081/api/v1", false, "127.0.0.1", 8081, "/api/v1"},
        {"http://localhost", false, "localhost", 80, ""},
        {"http://[::1]:9/v1", false, "::1", 9, "/v1"},
        {"https://[2001:db8::1]/x//", true, "2001:db8::1", 443, "/x"},
    };
    for (const Case& c : cases) {
        INFO(c.url);
        UpstreamConfig u;
        REQUIRE(parse_upstream_url(c.url, u).empty());
        CHECK(u.tls == c.tls);
        CHECK(u.host == c.host);
        CHECK(u.port == c.port);
        CHECK(u.base_path == c.base_path);
    }
    UpstreamConfig untouched;
    CHECK_FALSE(parse_upstream_url("gopher://x", untouched).empty());
    CHECK(untouched.host == "api.openai.com");
}

TEST_CASE("config: parse_listen accepts host:port and [v6]:port only", "[config]") {
    std::string host;
    std::uint16_t port = 1;
    CHECK(parse_listen("127.0.0.1:8080", host, port));
    CHECK(host == "127.0.0.1");
    CHECK(port == 8080);
    CHECK(parse_listen("0.0.0.0:0", host, port));
    CHECK(host == "0.0.0.0");
    CHECK(port == 0);
    CHECK(parse_listen("[::1]:8080", host, port));
    CHECK(host == "::1");
    CHECK(port == 8080);
    CHECK(parse_listen("localhost:80", host, port));
    CHECK(host == "localhost");
    CHECK(port == 80);
    CHECK(parse_listen("[::]:65535", host, port));
    CHECK(port == 65535);

    for (const char* bad : {"8080", ":80", "host:", "host:99999", "host:abc", "", "[::1]", "[::1]8080",
                            "::1:8080", "host:80:81", "ho st:80", "[]:80", "host:-1", "host:+80"}) {
        INFO(bad);
        host = "unchanged";
        CHECK_FALSE(parse_listen(bad, host, port));
        CHECK(host == "unchanged");
    }
}

TEST_CASE("config: a malformed listen address is an error", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("server:\n  listen: \"8080\"\n"),
               Contains("test.yaml:2: server.listen: malformed address '8080'"));
    CHECK_THAT(errors_of("server:\n  listen: \"host:99999\"\n"),
               Contains("test.yaml:2: server.listen: malformed address 'host:99999'"));
}

TEST_CASE("config: log level must be a known one", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("log:\n  level: verbose\n"),
               Contains("test.yaml:2: log.level: unknown level 'verbose'; accepted: trace, debug, info, warn, error, critical, off"));
    for (const char* level : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
        CHECK(load(std::string("log: { level: ") + level + " }").log.level == level);
    }
}

TEST_CASE("config: metrics label names are validated", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("metrics:\n  labels:\n    9lives: x\n"),
               Contains("test.yaml:3: metrics.labels.9lives: label name must match"));
    CHECK_THAT(errors_of("metrics:\n  labels:\n    a-b: x\n"),
               Contains("test.yaml:3: metrics.labels.a-b: label name must match"));
    CHECK_THAT(errors_of("metrics:\n  labels:\n    __x: y\n"),
               Contains("test.yaml:3: metrics.labels.__x: label names starting with '__' are reserved"));
    for (const char* reserved : {"model", "code", "type", "le", "version", "key"}) {
        INFO(reserved);
        CHECK_THAT(errors_of(std::string("metrics:\n  labels:\n    ") + reserved + ": x\n"),
                   Contains(std::string("test.yaml:3: metrics.labels.") + reserved + ": label name '" +
                            reserved + "' is used by relaymeter"));
    }
    CHECK_THAT(errors_of("metrics:\n  labels:\n    a: [1]\n"),
               Contains("test.yaml:3: metrics.labels.a: expected a string, got a list"));
    CHECK(load("metrics: { labels: { _ok: 1, Ok_2: x } }").metrics.labels.size() == 2);
}

TEST_CASE("config: auth keys are validated", "[config]") {
    FakeEnv env({});
    SECTION("a list of name and key") {
        const Config c = load("auth:\n  keys:\n    - { name: a, key: ka }\n    - name: b\n      key: kb\n");
        CHECK(c.auth.enabled);
        REQUIRE(c.auth.keys.size() == 2);
        CHECK(c.auth.keys[1].name == "b");
        CHECK(c.auth.keys[1].key == "kb");
    }
    SECTION("missing and empty fields") {
        const auto e = errors_of(
            "auth:\n  keys:\n    - { name: a }\n    - { key: kb }\n    - { name: \"\", key: kc }\n"
            "    - { name: d, key: \"\", extra: 1 }\n");
        CHECK_THAT(e, Contains("test.yaml:3: auth.keys[0].key: required"));
        CHECK_THAT(e, Contains("test.yaml:4: auth.keys[1].name: required"));
        CHECK_THAT(e, Contains("test.yaml:5: auth.keys[2].name: must not be empty"));
        CHECK_THAT(e, Contains("test.yaml:6: auth.keys[3].key: must not be empty"));
        CHECK_THAT(e, Contains("test.yaml:6: auth.keys[3].extra: unknown key"));
    }
    SECTION("duplicate names and keys, without showing the key") {
        const auto e = errors_of(
            "auth:\n  keys:\n    - { name: a, key: secret-1 }\n    - { name: a, key: k2 }\n"
            "    - { name: c, key: secret-1 }\n");
        CHECK_THAT(e, Contains("test.yaml:4: auth.keys[1]: duplicate name 'a' (first at test.yaml:3)"));
        CHECK_THAT(e, Contains("test.yaml:5: auth.keys[2]: key of 'c' is the same as the key at test.yaml:3"));
        CHECK(e.find("secret-1") == std::string::npos);
    }
    SECTION("wrong shapes") {
        CHECK_THAT(errors_of("auth:\n  keys: abc\n"), Contains("test.yaml:2: auth.keys: expected a list"));
        CHECK_THAT(errors_of("auth:\n  keys: []\n"), Contains("test.yaml:2: auth.keys: must not be empty"));
        CHECK_THAT(errors_of("auth:\n  keys:\n    - abc\n"),
                   Contains("test.yaml:3: auth.keys[0]: expected a map with keys name, key"));
        CHECK_THAT(errors_of("auth: {}\n"), Contains("test.yaml:1: auth: give keys or keys_file"));
        CHECK_THAT(errors_of("auth:\n  keys_file: \"\"\n"),
                   Contains("test.yaml:2: auth.keys_file: must not be empty"));
    }
}

TEST_CASE("config: auth keys_file is loaded and its own lines are checked", "[config]") {
    TempDir dir;
    SECTION("good file") {
        const std::string kf = dir.write("keys.txt",
                                         "# team keys\n\nteam-a:sk-a\n  team-b : sk:b:with:colons  \r\n");
        FakeEnv env({{"KF", kf}});
        const Config c = load("auth:\n  keys_file: ${KF}\n  keys: [ { name: inline, key: ki } ]\n");
        CHECK(c.auth.enabled);
        CHECK(c.auth.keys_file == kf);
        REQUIRE(c.auth.keys.size() == 3);
        CHECK(c.auth.keys[0].name == "inline");
        CHECK(c.auth.keys[1].name == "team-a");
        CHECK(c.auth.keys[1].key == "sk-a");
        CHECK(c.auth.keys[2].name == "team-b");
        CHECK(c.auth.keys[2].key == "sk:b:with:colons");
    }
    SECTION("bad lines report the keys file and its line") {
        const std::string kf = dir.write("keys.txt",
                                         "a:k1\nnocolon\n:k3\nd:\na:k5\ne:k1\ninline:k7\n");
        FakeEnv env({{"KF", kf}});
        const auto e = errors_of("auth:\n  keys: [ { name: inline, key: ki } ]\n  keys_file: ${KF}\n");
        CHECK_THAT(e, Contains(kf + ":2: auth.keys_file: expected NAME:KEY"));
        CHECK_THAT(e, Contains(kf + ":3: auth.keys_file: name must not be empty"));
        CHECK_THAT(e, Contains(kf + ":4: auth.keys_file: key of 'd' must not be empty"));
        CHECK_THAT(e, Contains(kf + ":5: auth.keys_file: duplicate name 'a' (first at " + kf + ":1)"));
        CHECK_THAT(e, Contains(kf + ":6: auth.keys_file: key of 'e' is the same as the key at " + kf + ":1"));
        CHECK_THAT(e, Contains(kf + ":7: auth.keys_file: duplicate name 'inline' (first at test.yaml:2)"));
        CHECK(e.find("k1") == std::string::npos);
    }
    SECTION("missing file") {
        const std::string kf = dir.path("absent.txt");
        FakeEnv env({{"KF", kf}});
        CHECK_THAT(errors_of("auth:\n  keys_file: ${KF}\n"),
                   Contains("test.yaml:2: auth.keys_file: cannot read '" + kf + "': No such file or directory"));
    }
    SECTION("file without keys") {
        const std::string kf = dir.write("empty.txt", "# none yet\n");
        FakeEnv env({{"KF", kf}});
        CHECK_THAT(errors_of("auth:\n  keys_file: ${KF}\n"), Contains("test.yaml:2: auth.keys_file: "));
        CHECK_THAT(errors_of("auth:\n  keys_file: ${KF}\n"), Contains("holds no keys"));
    }
}

TEST_CASE("config: admin and ledger sections", "[config]") {
    FakeEnv env({});
    const Config c = load("admin:\n  token: t0k\nledger:\n  path: ./ledger.jsonl\n");
    CHECK(c.admin.token == "t0k");
    CHECK(c.ledger.enabled);
    CHECK(c.ledger.path == "./ledger.jsonl");
    CHECK_THAT(errors_of("ledger:\n  path: \"\"\n"), Contains("test.yaml:2: ledger.path: must not be empty"));
    CHECK_THAT(errors_of("ledger: {}\n"), Contains("test.yaml:1: ledger.path: required"));
    CHECK_THAT(errors_of("ledger:\n"), Contains("test.yaml:1: ledger.path: required"));
    CHECK_THAT(errors_of("ledger:\n  path: [a]\n"), Contains("test.yaml:2: ledger.path: expected a string"));
    CHECK_THAT(errors_of("admin:\n  token: { a: b }\n"), Contains("test.yaml:2: admin.token: expected a string"));
    CHECK_THAT(errors_of("admin:\n  tokn: x\n"), Contains("test.yaml:2: admin.tokn: unknown key"));
}

// ---------------------------------------------------------------------------
// ${VAR} expansion

TEST_CASE("config: expand_env substitutes variables and defaults", "[config]") {
    FakeEnv env({{"A", "alpha"}, {"B", "beta"}, {"EMPTY", ""}});
    CHECK(expand_env("${A}", fake_env) == "alpha");
    CHECK(expand_env("x-${A}-y", fake_env) == "x-alpha-y");
    CHECK(expand_env("${A}${B}", fake_env) == "alphabeta");
    CHECK(expand_env("${A}/${B}/${UNSET:-gamma}", fake_env) == "alpha/beta/gamma");
    CHECK(expand_env("${UNSET:-d}", fake_env) == "d");
    CHECK(expand_env("${UNSET:-}", fake_env) == "");
    CHECK(expand_env("${UNSET:-https://x:8/v1}", fake_env) == "https://x:8/v1");
    CHECK(expand_env("${A:-d}", fake_env) == "alpha");
    CHECK(expand_env("${EMPTY:-d}", fake_env) == "d");
    CHECK(expand_env("${EMPTY}", fake_env) == "");
    CHECK(expand_env("no vars", fake_env) == "no vars");
    CHECK(expand_env("$A and $ alone and $", fake_env) == "$A and $ alone and $");
    CHECK(expand_env("$${A}", fake_env) == "${A}");
    CHECK(expand_env("", fake_env) == "");
}

TEST_CASE("config: expand_env errors name the variable or the broken syntax", "[config]") {
    FakeEnv env({});
    try {
        expand_env("pre-${MISSING_VAR}-post", fake_env);
        FAIL("no error");
    } catch (const std::invalid_argument& e) {
        CHECK_THAT(e.what(), Contains("MISSING_VAR is not set"));
    }
    CHECK_THROWS_AS(expand_env("${", fake_env), std::invalid_argument);
    CHECK_THROWS_AS(expand_env("${A", fake_env), std::invalid_argument);
    CHECK_THROWS_AS(expand_env("${}", fake_env), std::invalid_argument);
    CHECK_THROWS_AS(expand_env("${1A}", fake_env), std::invalid_argument);
    CHECK_THROWS_AS(expand_env("${A-x}", fake_env), std::invalid_argument);
    CHECK_THROWS_AS(expand_env("${A:x}", fake_env), std::invalid_argument);
    CHECK_THROWS_AS(expand_env("${A:-x", fake_env), std::invalid_argument);
    CHECK_THROWS_WITH(expand_env("${A B}", fake_env), Contains("malformed ${A"));
}

TEST_CASE("config: every string value is expanded", "[config]") {
    FakeEnv env({{"HOST", "relay.example"}, {"PORT", "9001"}, {"KEY", "sk-env"}, {"T", "4"},
                 {"MON", "holysheep"}, {"LVL", "warn"}, {"ADM", "tok"}, {"DIR", "/data"}});
    const Config c = load(
        "server:\n"
        "  listen: \"127.0.0.1:${PORT}\"\n"
        "  threads: ${T}\n"
        "  protected_mode: \"${PM:-false}\"\n"
        "upstream:\n"
        "  base_url: \"https://${HOST}:${PORT}/v1\"\n"
        "  api_key: \"${KEY}\"\n"
        "  tls: { ca_file: \"${DIR}/ca.pem\" }\n"
        "pricing:\n"
        "  m: { input: \"${PRICE_IN:-1.5}\", output: 2 }\n"
        "metrics:\n"
        "  labels: { monitor: \"${MON}\", literal: \"cost $5\" }\n"
        "log: { level: \"${LVL}\" }\n"
        "admin: { token: \"${ADM}\" }\n"
        "ledger: { path: \"${DIR}/ledger.jsonl\" }\n");
    CHECK(c.server.listen == "127.0.0.1:9001");
    CHECK(c.server.listen_port == 9001);
    CHECK(c.server.threads == 4);
    CHECK_FALSE(c.server.protected_mode);
    CHECK(c.upstream.base_url == "https://relay.example:9001/v1");
    CHECK(c.upstream.host == "relay.example");
    CHECK(c.upstream.port == 9001);
    CHECK(c.upstream.api_key == "sk-env");
    CHECK(c.upstream.tls_options.ca_file == "/data/ca.pem");
    CHECK(c.pricing.at("m").input == 1.5);
    REQUIRE(c.metrics.labels.size() == 2);
    CHECK(c.metrics.labels[0].second == "holysheep");
    CHECK(c.metrics.labels[1].second == "cost $5");
    CHECK(c.log.level == "warn");
    CHECK(c.admin.token == "tok");
    CHECK(c.ledger.path == "/data/ledger.jsonl");
}

TEST_CASE("config: unset variable and broken syntax are errors with line and key", "[config]") {
    FakeEnv env({});
    CHECK_THAT(errors_of("upstream:\n  api_key: \"${UPSTREAM_SECRET}\"\n"),
               Contains("test.yaml:2: upstream.api_key: environment variable UPSTREAM_SECRET is not set"));
    CHECK_THAT(errors_of("auth:\n  keys:\n    - { name: a, key: \"${TEAM_A_KEY}\" }\n"),
               Contains("test.yaml:3: auth.keys[0].key: environment variable TEAM_A_KEY is not set"));
    CHECK_THAT(errors_of("server:\n  threads: ${THREADS}\n"),
               Contains("test.yaml:2: server.threads: environment variable THREADS is not set"));
    CHECK_THAT(errors_of("upstream:\n  base_url: \"https://${HOST\"\n"),
               Contains("test.yaml:2: upstream.base_url: malformed ${HOST"));
    CHECK_THAT(errors_of("server:\n  threads: \"${T:-x}\"\n"),
               Contains("test.yaml:2: server.threads: expected an integer, got 'x'"));
}

TEST_CASE("config: every error in a file is reported at once", "[config]") {
    FakeEnv env({});
    const auto errors = error_list(
        "server:\n"
        "  threads: -2\n"
        "  listen: nowhere\n"
        "  bogus: 1\n"
        "upstream:\n"
        "  base_url: \"ftp://x\"\n"
        "  api_key: \"${NOPE}\"\n"
        "pricing:\n"
        "  gpt-4.1: { input: -8, output: 32 }\n"
        "log: { level: loud }\n"
        "extra: 1\n");
    REQUIRE(errors.size() == 8);
    CHECK_THAT(errors[0], Contains("test.yaml:2: server.threads:"));
    CHECK_THAT(errors[1], Contains("test.yaml:3: server.listen:"));
    CHECK_THAT(errors[2], Contains("test.yaml:4: server.bogus:"));
    CHECK_THAT(errors[3], Contains("test.yaml:6: upstream.base_url:"));
    CHECK_THAT(errors[4], Contains("test.yaml:7: upstream.api_key:"));
    CHECK_THAT(errors[5], Contains("test.yaml:9: pricing.gpt-4.1.input: must not be negative"));
    CHECK_THAT(errors[6], Contains("test.yaml:10: log.level:"));
    CHECK_THAT(errors[7], Contains("test.yaml:11: extra: unknown key"));

    try {
        load("server: { threads: -2, bogus: 1 }\n");
        FAIL("no error");
    } catch (const ConfigError& e) {
        CHECK(std::string(e.what()) == e.errors()[0] + "\n" + e.errors()[1]);
    }
}

TEST_CASE("config: process_env reads the real environment", "[config]") {
    ::setenv("RELAYMETER_CONFIG_TEST_VAR", "value-1", 1);
    CHECK(process_env("RELAYMETER_CONFIG_TEST_VAR") == std::optional<std::string>("value-1"));
    CHECK(expand_env("<${RELAYMETER_CONFIG_TEST_VAR}>") == "<value-1>");
    ::unsetenv("RELAYMETER_CONFIG_TEST_VAR");
    CHECK_FALSE(process_env("RELAYMETER_CONFIG_TEST_VAR").has_value());
}

// ---------------------------------------------------------------------------
// Command line

namespace {
CliOptions cli(std::vector<const char*> args) {
    args.insert(args.begin(), "relaymeter");
    return parse_cli(static_cast<int>(args.size()), args.data());
}
} // namespace

TEST_CASE("config: parse_cli reads every flag", "[config][cli]") {
    const CliOptions none = cli({});
    CHECK(none.config_path == "config/relaymeter.yaml");
    CHECK_FALSE(none.listen);
    CHECK_FALSE(none.upstream);
    CHECK_FALSE(none.check_config);
    CHECK_FALSE(none.version);
    CHECK_FALSE(none.help);

    const CliOptions all = cli({"--config", "/etc/rm.yaml", "--listen", "0.0.0.0:9", "--upstream=http://u:1/v1"});
    CHECK(all.config_path == "/etc/rm.yaml");
    CHECK(all.listen == std::optional<std::string>("0.0.0.0:9"));
    CHECK(all.upstream == std::optional<std::string>("http://u:1/v1"));

    CHECK(cli({"--check-config", "x.yaml"}).check_config == std::optional<std::string>("x.yaml"));
    CHECK(cli({"--version"}).version);
    CHECK(cli({"--help"}).help);
    CHECK(cli({"-h"}).help);
}

TEST_CASE("config: parse_cli rejects bad arguments with a helpful message", "[config][cli]") {
    CHECK_THROWS_WITH(cli({"--bogus"}), Contains("bogus") && Contains("--help"));
    CHECK_THROWS_WITH(cli({"--config"}), Contains("config") && Contains("--help"));
    CHECK_THROWS_AS(cli({"--listen"}), std::invalid_argument);
    CHECK_THROWS_AS(cli({"stray"}), std::invalid_argument);
    CHECK_THROWS_AS(cli({"--conf", "x"}), std::invalid_argument); // no prefix guessing
    CHECK_THROWS_AS(cli({"--config", "a", "--config", "b"}), std::invalid_argument);
    CHECK_THROWS_WITH(cli({"--config="}), Contains("--config") && Contains("--help"));
    CHECK_THROWS_WITH(cli({"--config", ""}), Contains("--config: the value must not be empty"));
    CHECK_THROWS_WITH(cli({"--listen", ""}), Contains("--listen: the value must not be empty"));
}

TEST_CASE("config: cli_help lists every flag", "[config][cli]") {
    const std::string help = cli_help();
    for (const char* flag : {"--config", "--listen", "--upstream", "--check-config", "--version", "--help"}) {
        CHECK_THAT(help, Contains(flag));
    }
    CHECK_THAT(help, Contains("Usage: relaymeter"));
}

TEST_CASE("config: apply_overrides replaces listen and upstream", "[config][cli]") {
    Config c;
    apply_overrides(c, cli({}));
    CHECK(c.server.listen == "127.0.0.1:8080");
    CHECK(c.upstream.base_url == "https://api.openai.com/v1");

    c.upstream.api_key = "keep-me";
    apply_overrides(c, cli({"--listen", "[::1]:0", "--upstream", "http://127.0.0.1:9999/base/"}));
    CHECK(c.server.listen == "[::1]:0");
    CHECK(c.server.listen_host == "::1");
    CHECK(c.server.listen_port == 0);
    CHECK(c.upstream.base_url == "http://127.0.0.1:9999/base/");
    CHECK_FALSE(c.upstream.tls);
    CHECK(c.upstream.host == "127.0.0.1");
    CHECK(c.upstream.port == 9999);
    CHECK(c.upstream.base_path == "/base");
    CHECK(c.upstream.api_key == "keep-me");
}

TEST_CASE("config: apply_overrides names the flag of a malformed value", "[config][cli]") {
    Config c;
    try {
        apply_overrides(c, cli({"--listen", "x", "--upstream", "ftp://h"}));
        FAIL("no error");
    } catch (const ConfigError& e) {
        REQUIRE(e.errors().size() == 2);
        CHECK_THAT(e.errors()[0], Contains("--listen: malformed address 'x'"));
        CHECK_THAT(e.errors()[1], Contains("--upstream: malformed URL 'ftp://h'"));
    }
    CHECK(c.server.listen == "127.0.0.1:8080");
    CHECK(c.upstream.host == "api.openai.com");
}
