// Shared helpers of the integration tests: config text, /summary polling.
#pragma once

#include <chrono>
#include <string>

#include <nlohmann/json.hpp>

#include "support/test_client.hpp"

namespace relaymeter::testsupport {

// A config for the daemon under test: listen on 127.0.0.1 port 0, the given
// upstream, the contract's default prices, quiet logs unless asked.
std::string daemon_yaml(const std::string& upstream_url, const std::string& extra_upstream = {},
                        const std::string& extra_sections = {});

// `text` with the first `from` replaced by `to` (fails the test when absent).
std::string replace(std::string text, const std::string& from, const std::string& to);

// `data` as one chunk of a chunked body ("<hex size>\r\n<data>\r\n").
std::string chunk(const std::string& data);

nlohmann::json get_json(std::uint16_t port, const std::string& target);

// Polls /summary (each poll is a real request: no sleeping) until
// overall.total_requests reaches n; returns the summary. Fails the test on timeout.
nlohmann::json wait_total(std::uint16_t port, std::uint64_t n,
                          std::chrono::milliseconds timeout = std::chrono::seconds(10));

// Polls /summary until in_flight is 0 (the gauge drops just after the record
// is counted); returns that summary. Fails the test on timeout.
nlohmann::json wait_idle(std::uint16_t port, std::chrono::milliseconds timeout = std::chrono::seconds(10));

const nlohmann::json& model_entry(const nlohmann::json& summary, const std::string& model);

// The value of one series in Prometheus text ("name{labels}" exactly as rendered
// without the constant labels); NaN when absent.
double metric_value(const std::string& exposition, const std::string& series);

// Runs a shell command, capturing stdout (add 2>&1 for stderr) and the exit status.
struct CommandResult {
    int status = -1;
    std::string output;
};
CommandResult run_command(const std::string& command);

// Runs `promtool check metrics` on an exposition; returns "" when it passes,
// else what promtool printed (or why it could not run).
std::string promtool_check_metrics(const std::string& exposition);

} // namespace relaymeter::testsupport
