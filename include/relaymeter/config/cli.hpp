// Command line: --config, --listen, --upstream, --check-config, --version, --help.
#pragma once

#include <optional>
#include <string>

namespace relaymeter::config {

struct CliOptions {
    std::string config_path = "config/relaymeter.yaml";
    std::optional<std::string> listen;   // overrides server.listen
    std::optional<std::string> upstream; // overrides upstream.base_url
    std::optional<std::string> check_config;
    bool version = false;
    bool help = false;
};

// Throws std::invalid_argument with a user-facing message on bad arguments.
CliOptions parse_cli(int argc, const char* const* argv);
std::string cli_help();

// Apply --listen / --upstream to a loaded config. Throws ConfigError when an
// override is malformed (naming the flag).
struct Config;
void apply_overrides(Config& cfg, const CliOptions& cli);

} // namespace relaymeter::config
