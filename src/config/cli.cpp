// Command line parsing (Boost.Program_options) and overrides of the file.

#include "relaymeter/config/cli.hpp"

#include <boost/program_options.hpp>

#include <sstream>
#include <stdexcept>
#include <vector>

#include "relaymeter/config/config.hpp"

namespace relaymeter::config {

namespace po = boost::program_options;

namespace {

po::options_description make_options() {
    po::options_description opts("Options");
    // clang-format off
    opts.add_options()
        ("config", po::value<std::string>()->value_name("PATH"),
         "configuration file (default: config/relaymeter.yaml, relative to the working directory)")
        ("listen", po::value<std::string>()->value_name("HOST:PORT"),
         "listen address, overrides server.listen (e.g. 127.0.0.1:8080, [::1]:8080)")
        ("upstream", po::value<std::string>()->value_name("URL"),
         "upstream base URL, overrides upstream.base_url (e.g. https://api.openai.com/v1)")
        ("check-config", po::value<std::string>()->value_name("PATH"),
         "validate a configuration file, print 'ok' or the errors, exit 0 or 2")
        ("version", "print the version and exit")
        ("help,h", "print this help and exit");
    // clang-format on
    return opts;
}

} // namespace

CliOptions parse_cli(int argc, const char* const* argv) {
    const po::options_description opts = make_options();
    po::variables_map vm;
    try {
        // No positional options: a stray argument is an error.
        po::store(po::command_line_parser(argc, argv)
                      .options(opts)
                      .positional(po::positional_options_description())
                      .style(po::command_line_style::unix_style &
                             ~po::command_line_style::allow_guessing)
                      .run(),
                  vm);
        po::notify(vm);
    } catch (const po::error& e) {
        throw std::invalid_argument(std::string(e.what()) + " (see --help)");
    }

    CliOptions cli;
    const auto non_empty = [&](const char* name) -> std::optional<std::string> {
        if (vm.count(name) == 0) return std::nullopt;
        std::string v = vm[name].as<std::string>();
        if (v.empty()) {
            throw std::invalid_argument(std::string("--") + name + ": the value must not be empty (see --help)");
        }
        return v;
    };
    if (auto v = non_empty("config")) cli.config_path = *v;
    cli.listen = non_empty("listen");
    cli.upstream = non_empty("upstream");
    cli.check_config = non_empty("check-config");
    cli.version = vm.count("version") != 0;
    cli.help = vm.count("help") != 0;
    return cli;
}

std::string cli_help() {
    std::ostringstream os;
    os << "Usage: relaymeter [--config PATH] [--listen HOST:PORT] [--upstream URL]\n"
          "       relaymeter --check-config PATH\n"
          "       relaymeter --version | --help\n"
          "\n"
          "A metering reverse proxy for OpenAI-compatible APIs: forwards /v1/ requests\n"
          "to the upstream and serves /metrics, /summary and /healthz on the same listener.\n"
          "\n"
       << make_options()
       << "\n"
          "Exit status: 0 on success, 2 on a bad configuration or bad arguments.\n";
    return os.str();
}

void apply_overrides(Config& cfg, const CliOptions& cli) {
    std::vector<std::string> errors;
    if (cli.listen) {
        std::string host;
        std::uint16_t port = 0;
        if (parse_listen(*cli.listen, host, port)) {
            cfg.server.listen = *cli.listen;
            cfg.server.listen_host = host;
            cfg.server.listen_port = port;
        } else {
            errors.push_back("--listen: malformed address '" + *cli.listen +
                             "' (expected HOST:PORT or [IPv6]:PORT, port 0-65535)");
        }
    }
    if (cli.upstream) {
        UpstreamConfig parsed = cfg.upstream;
        const std::string err = parse_upstream_url(*cli.upstream, parsed);
        if (err.empty()) {
            parsed.base_url = *cli.upstream;
            cfg.upstream = std::move(parsed);
        } else {
            errors.push_back("--upstream: " + err);
        }
    }
    if (!errors.empty()) throw ConfigError(std::move(errors));
}

} // namespace relaymeter::config
