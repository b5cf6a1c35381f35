// fake_upstream: the OpenAI-compatible fake as a standalone program, for the
// benchmark and the demo. Prints "listening on HOST:PORT" once bound.
#include "fake_upstream.hpp"

#include <boost/program_options.hpp>

#include <csignal>
#include <cstdio>
#include <iostream>
#include <pthread.h>
#include <string>
#include <vector>

namespace po = boost::program_options;
using namespace relaymeter::fake;

namespace {

// "HOST:PORT" or "[V6]:PORT".
bool split_listen(const std::string& s, std::string& host, std::uint16_t& port) {
    auto colon = s.rfind(':');
    if (colon == std::string::npos || colon + 1 == s.size()) return false;
    host = s.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty()) return false;
    try {
        std::size_t used = 0;
        unsigned long p = std::stoul(s.substr(colon + 1), &used);
        if (used != s.size() - colon - 1 || p > 65535) return false;
        port = static_cast<std::uint16_t>(p);
    } catch (const std::exception&) {
        return false;
    }
    return true;
}

std::chrono::microseconds from_ms(double ms) {
    return std::chrono::microseconds(static_cast<std::int64_t>(ms * 1000.0));
}

} // namespace

int main(int argc, char** argv) {
    std::string listen = "127.0.0.1:0";
    unsigned threads = 1;
    std::string cert;
    std::string key;
    double latency_ms = 0;
    std::vector<std::string> model_latency;
    unsigned chunks = 5;
    double chunk_interval_ms = 0;
    double error_rate = 0;
    int error_status = 500;
    std::uint64_t prompt_tokens = 12;
    std::uint64_t completion_tokens = 34;
    std::uint64_t cached_tokens = 0;
    std::uint64_t reasoning_tokens = 0;

    po::options_description desc("fake_upstream: an OpenAI-compatible fake upstream\nOptions");
    desc.add_options()
        ("help,h", "show this help")
        ("listen", po::value(&listen)->default_value(listen), "HOST:PORT to bind (port 0: any free port)")
        ("threads", po::value(&threads)->default_value(threads), "io threads")
        ("tls-cert", po::value(&cert), "PEM certificate (chain): serve HTTPS")
        ("tls-key", po::value(&key), "PEM private key")
        ("latency-ms", po::value(&latency_ms)->default_value(latency_ms), "delay before each response head")
        ("model-latency", po::value(&model_latency)->composing(),
         "MODEL=MS: this model's delay instead of --latency-ms (repeatable)")
        ("chunks", po::value(&chunks)->default_value(chunks), "content chunks per stream")
        ("chunk-interval-ms", po::value(&chunk_interval_ms)->default_value(chunk_interval_ms),
         "delay between stream chunks")
        ("error-rate", po::value(&error_rate)->default_value(error_rate),
         "fraction of requests answered with --error-status (deterministic: every 1/rate-th)")
        ("error-status", po::value(&error_status)->default_value(error_status), "status of the error responses")
        ("prompt-tokens", po::value(&prompt_tokens)->default_value(prompt_tokens), "usage: prompt/input tokens")
        ("completion-tokens", po::value(&completion_tokens)->default_value(completion_tokens),
         "usage: completion/output tokens")
        ("cached-tokens", po::value(&cached_tokens)->default_value(cached_tokens), "usage: cached prompt tokens")
        ("reasoning-tokens", po::value(&reasoning_tokens)->default_value(reasoning_tokens),
         "usage: reasoning tokens")
        ("openai-headers", "plain answers carry the ~20 header fields api.openai.com sends, not x-request-id alone")
        ("openai-headers-for-sdk", "the same, only for requests whose User-Agent starts with OpenAI/ (an SDK's)");

    po::variables_map vm;
    try {
        po::store(po::parse_command_line(argc, argv, desc), vm);
        po::notify(vm);
    } catch (const std::exception& e) {
        std::cerr << "fake_upstream: " << e.what() << "\n" << desc << "\n";
        return 2;
    }
    if (vm.count("help")) {
        std::cout << desc << "\n";
        return 0;
    }

    Options options;
    if (!split_listen(listen, options.host, options.port)) {
        std::cerr << "fake_upstream: bad --listen '" << listen << "' (want HOST:PORT)\n";
        return 2;
    }
    if (cert.empty() != key.empty()) {
        std::cerr << "fake_upstream: --tls-cert and --tls-key go together\n";
        return 2;
    }
    if (error_rate < 0 || error_rate > 1 || error_status < 100 || error_status > 999) {
        std::cerr << "fake_upstream: --error-rate must be in [0,1] and --error-status a status code\n";
        return 2;
    }
    options.threads = threads == 0 ? 1 : threads;
    options.cert_file = cert;
    options.key_file = key;
    options.record_requests = false; // a benchmark must not keep every body

    OpenAIOptions ai;
    ai.prompt_tokens = prompt_tokens;
    ai.completion_tokens = completion_tokens;
    ai.cached_tokens = cached_tokens;
    ai.reasoning_tokens = reasoning_tokens;
    ai.openai_headers = vm.count("openai-headers") > 0;
    ai.openai_headers_for_sdk = vm.count("openai-headers-for-sdk") > 0;
    ai.latency = from_ms(latency_ms);
    for (const auto& item : model_latency) {
        const auto eq = item.rfind('=');
        double ms = -1;
        try {
            if (eq != std::string::npos && eq > 0) ms = std::stod(item.substr(eq + 1));
        } catch (const std::exception&) {
        }
        if (ms < 0) {
            std::cerr << "fake_upstream: bad --model-latency '" << item << "' (want MODEL=MS)\n";
            return 2;
        }
        ai.model_latency[item.substr(0, eq)] = from_ms(ms);
    }
    ai.stream_chunks = chunks;
    ai.chunk_interval = from_ms(chunk_interval_ms);
    ai.error_rate = error_rate;
    ai.error_status = error_status;

    // Block the stop signals before any thread starts, so that every thread
    // inherits the mask and only sigwait below receives them.
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGINT);
    sigaddset(&stop_signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
    std::signal(SIGPIPE, SIG_IGN);

    try {
        FakeUpstream fake(options, openai_handler(ai));
        std::string host = options.host.find(':') != std::string::npos ? "[" + options.host + "]" : options.host;
        std::cout << "listening on " << host << ":" << fake.port() << std::endl; // endl flushes
        int sig = 0;
        sigwait(&stop_signals, &sig);
        fake.stop();
        std::cout << "stopped (signal " << sig << "), " << fake.request_count() << " requests, "
                  << fake.connections_accepted() << " connections" << std::endl;
    } catch (const std::exception& e) {
        std::cerr << "fake_upstream: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
