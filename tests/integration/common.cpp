#include "integration/common.hpp"

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <unistd.h>
#include <sstream>

#include <sys/wait.h>

namespace relaymeter::testsupport {

std::string daemon_yaml(const std::string& upstream_url, const std::string& extra_upstream,
                        const std::string& extra_sections) {
    std::string y;
    y += "server:\n  listen: \"127.0.0.1:0\"\n  threads: 2\n  max_request_body_bytes: 1048576\n";
    y += "  header_timeout_s: 5\n  idle_timeout_s: 30\n  drain_timeout_s: 5\n";
    y += "upstream:\n  base_url: \"" + upstream_url + "\"\n  connect_timeout_s: 2\n  request_timeout_s: 5\n";
    y += extra_upstream;
    y += "pricing:\n"
         "  gpt-4.1:           { input: 8.00,  output: 32.00 }\n"
         "  claude-sonnet-4.5: { input: 15.00, output: 75.00 }\n"
         "  gemini-2.5-flash:  { input: 2.50,  output: 10.00, cached_input: 0.625 }\n"
         "  deepseek-v3.2:     { input: 0.42,  output: 1.68 }\n";
    y += "log:\n  level: info\n";
    y += extra_sections;
    return y;
}

std::string replace(std::string text, const std::string& from, const std::string& to) {
    const auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

std::string chunk(const std::string& data) {
    char hex[20];
    std::snprintf(hex, sizeof hex, "%zx\r\n", data.size());
    return hex + data + "\r\n";
}

nlohmann::json get_json(std::uint16_t port, const std::string& target) {
    HttpClient c(port);
    auto r = c.get(target);
    REQUIRE(r.status == 200);
    return nlohmann::json::parse(r.body);
}

nlohmann::json wait_total(std::uint16_t port, std::uint64_t n, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    HttpClient c(port);
    nlohmann::json s;
    for (;;) {
        auto r = c.get("/summary");
        REQUIRE(r.status == 200);
        s = nlohmann::json::parse(r.body);
        if (s["overall"]["total_requests"].get<std::uint64_t>() >= n) return s;
        if (std::chrono::steady_clock::now() > deadline) {
            FAIL("timed out waiting for " << n << " metered requests; summary: " << s.dump());
        }
    }
}

nlohmann::json wait_idle(std::uint16_t port, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    HttpClient c(port);
    for (;;) {
        auto s = nlohmann::json::parse(c.get("/summary").body);
        if (s["in_flight"] == 0) return s;
        if (std::chrono::steady_clock::now() > deadline) FAIL("requests still in flight: " << s.dump());
    }
}

const nlohmann::json& model_entry(const nlohmann::json& summary, const std::string& model) {
    for (const auto& m : summary["models"]) {
        if (m["model"] == model) return m;
    }
    FAIL("model " << model << " not in summary: " << summary.dump());
    static nlohmann::json none;
    return none;
}

double metric_value(const std::string& exposition, const std::string& series) {
    std::istringstream in(exposition);
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
    }
    return std::nan("");
}

CommandResult run_command(const std::string& command) {
    CommandResult r;
    FILE* f = ::popen(command.c_str(), "r");
    if (!f) return r;
    char buf[4096];
    std::size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) r.output.append(buf, n);
    int st = ::pclose(f);
    r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r;
}

std::string promtool_check_metrics(const std::string& exposition) {
    if (std::system("command -v promtool >/dev/null 2>&1") != 0) return "promtool is not installed (apt-get install prometheus)";
    char path[] = "/tmp/relaymeter-metrics-XXXXXX";
    const int fd = mkstemp(path);
    if (fd < 0) return "mkstemp failed";
    ::close(fd);
    std::ofstream(path) << exposition;
    auto res = run_command("promtool check metrics < " + std::string(path) + " 2>&1");
    std::remove(path);
    if (res.status != 0 && res.output.empty()) res.output = "promtool exited with " + std::to_string(res.status);
    return res.output;
}

} // namespace relaymeter::testsupport
