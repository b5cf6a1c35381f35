// Command-line entry point: parse flags, load the config, wire and run.
#pragma once

namespace relaymeter {

int run_daemon(int argc, const char* const* argv);

} // namespace relaymeter
