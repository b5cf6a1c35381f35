#include "relaymeter/metrics/exposition.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <ctime>

#include <nlohmann/json.hpp>

#include "text_format.hpp"

namespace relaymeter::metrics {

namespace {

using text::append_family;
using text::append_sample;

// The `le` values of kLatencyBuckets, formatted once.
const std::array<std::string, kLatencyBuckets.size()>& bucket_bounds() {
    static const auto bounds = [] {
        std::array<std::string, kLatencyBuckets.size()> b;
        for (std::size_t i = 0; i < b.size(); ++i) text::append_double(b[i], kLatencyBuckets[i]);
        return b;
    }();
    return bounds;
}

void append_histogram(std::string& out, std::string_view name, std::string_view const_labels,
                      std::string_view model, const LatencyHistogram& h) {
    const std::string bucket = std::string(name) + "_bucket";
    const auto& bounds = bucket_bounds();
    const auto& counts = h.buckets();
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < bounds.size(); ++i) {
        cumulative += counts[i];
        append_sample(out, bucket, const_labels, {{"model", model}, {"le", bounds[i]}}, cumulative);
    }
    cumulative += counts[bounds.size()];
    append_sample(out, bucket, const_labels, {{"model", model}, {"le", "+Inf"}}, cumulative);
    append_sample(out, std::string(name) + "_sum", const_labels, {{"model", model}}, h.sum());
    append_sample(out, std::string(name) + "_count", const_labels, {{"model", model}}, h.count());
}

std::int64_t unix_seconds(std::chrono::system_clock::time_point tp) {
    return static_cast<std::int64_t>(std::chrono::duration_cast<std::chrono::seconds>(tp.time_since_epoch()).count());
}

std::string iso8601(std::int64_t unix_s) {
    const auto t = static_cast<std::time_t>(unix_s);
    std::tm tm{};
    gmtime_r(&t, &tm);
    char buf[80]; // room for any int fields, to keep -Wformat-truncation quiet
    std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec);
    return buf;
}

double round_to(double v, double scale) { return std::round(v * scale) / scale; }

double percent(std::uint64_t part, std::uint64_t whole) {
    return whole == 0 ? 0.0 : round_to(100.0 * static_cast<double>(part) / static_cast<double>(whole), 100);
}

double avg_latency_ms(const ModelStats& s) {
    return s.requests == 0 ? 0.0 : round_to(s.latency_sum_s * 1000.0 / static_cast<double>(s.requests), 1000);
}

double quantile_ms(const LatencyHistogram& h, double q) { return round_to(h.quantile(q) * 1000.0, 1000); }

double cost_per_1k(const ModelStats& s) {
    const std::uint64_t tokens = s.input_tokens + s.output_tokens;
    return tokens == 0 ? 0.0 : s.cost_usd / static_cast<double>(tokens) * 1000.0;
}

// One entry of /summary's models (name_field "model") or keys ("key") array.
nlohmann::ordered_json stats_json(std::string_view name_field, const std::string& name, const ModelStats& s,
                                  bool priced) {
    nlohmann::ordered_json codes = nlohmann::ordered_json::object();
    for (const auto& [code, n] : s.status_codes) codes[std::to_string(code)] = n;
    return nlohmann::ordered_json{
        {name_field, name},
        {"total_requests", s.requests},
        {"success_count", s.successes},
        {"error_count", s.errors},
        {"success_rate_percent", percent(s.successes, s.requests)},
        {"error_rate_percent", percent(s.errors, s.requests)},
        {"avg_latency_ms", avg_latency_ms(s)},
        {"p50_latency_ms", quantile_ms(s.latency, 0.50)},
        {"p95_latency_ms", quantile_ms(s.latency, 0.95)},
        {"p99_latency_ms", quantile_ms(s.latency, 0.99)},
        {"input_tokens", s.input_tokens},
        {"output_tokens", s.output_tokens},
        {"cached_input_tokens", s.cached_input_tokens},
        {"reasoning_tokens", s.reasoning_tokens},
        {"total_cost_usd", s.cost_usd},
        {"cost_per_1k_tokens_usd", cost_per_1k(s)},
        {"priced", priced},
        {"unpriced_requests", s.unpriced},
        {"status_codes", std::move(codes)},
        {"streamed_requests", s.streamed},
        {"p50_ttft_ms", quantile_ms(s.ttft, 0.50)},
        {"p95_ttft_ms", quantile_ms(s.ttft, 0.95)},
    };
}

bool is_priced(const Snapshot& snap, const std::string& name, const ModelStats& s) {
    const auto it = snap.priced.find(name);
    return it != snap.priced.end() ? it->second : s.unpriced == 0;
}

std::string shortest(double v) {
    std::string s;
    text::append_double(s, v);
    return s;
}

} // namespace

std::string escape_label_value(const std::string& v) {
    std::string out;
    out.reserve(v.size() + 8);
    text::append_escaped(out, v);
    return out;
}

std::string render_prometheus(const Snapshot& snap, const ExpositionOptions& opts) {
    const std::string cl = text::const_label_block(opts);
    std::string out;
    out.reserve(4096 + snap.models.size() * (4096 + 64 * cl.size()));

    // Families with one series per model; each is emitted (HELP/TYPE at least)
    // even before the first request.
    auto per_model = [&](std::string_view name, std::string_view help, auto value_of) {
        append_family(out, name, "counter", help);
        for (const auto& [model, s] : snap.models) append_sample(out, name, cl, {{"model", model}}, value_of(s));
    };
    // With auth on, the request, error, token and cost counters are kept per
    // (model, key); the per-model figures are their sums.
    auto per_model_key = [&](std::string_view name, std::string_view help, auto value_of, auto key_value_of) {
        if (!snap.by_key) return per_model(name, help, value_of);
        append_family(out, name, "counter", help);
        for (const auto& [model, keys] : snap.model_keys) {
            for (const auto& [key, c] : keys) append_sample(out, name, cl, {{"model", model}, {"key", key}}, key_value_of(c));
        }
    };

    per_model_key("ai_requests_total", "Requests metered (every request under /v1/), by model.",
                  [](const ModelStats& s) { return s.requests; }, [](const KeyCounters& c) { return c.requests; });
    // Same label sets as ai_requests_total (0 included) so the two divide one to one.
    per_model_key("ai_request_errors_total", "Requests answered with a non-2xx status, by model.",
                  [](const ModelStats& s) { return s.errors; }, [](const KeyCounters& c) { return c.errors; });

    append_family(out, "ai_request_status_total", "counter", "Requests by model and HTTP status sent to the client.");
    for (const auto& [model, s] : snap.models) {
        for (const auto& [code, n] : s.status_codes) {
            char buf[16];
            const auto r = std::to_chars(buf, buf + sizeof buf, code);
            append_sample(out, "ai_request_status_total", cl,
                          {{"model", model}, {"code", std::string_view(buf, static_cast<std::size_t>(r.ptr - buf))}}, n);
        }
    }

    per_model_key("ai_request_cost_total", "Cost of requests in USD, from the price table (USD per 1M tokens).",
                  [](const ModelStats& s) { return s.cost_usd; }, [](const KeyCounters& c) { return c.cost_usd; });

    append_family(out, "ai_request_tokens_total", "counter",
                  "Tokens reported by the upstream, by model and type (input includes cached, output includes reasoning).");
    if (snap.by_key) {
        for (const auto& [model, keys] : snap.model_keys) {
            for (const auto& [key, c] : keys) {
                append_sample(out, "ai_request_tokens_total", cl, {{"model", model}, {"key", key}, {"type", "input"}},
                              c.input_tokens);
                append_sample(out, "ai_request_tokens_total", cl, {{"model", model}, {"key", key}, {"type", "output"}},
                              c.output_tokens);
            }
        }
    } else {
        for (const auto& [model, s] : snap.models) {
            append_sample(out, "ai_request_tokens_total", cl, {{"model", model}, {"type", "input"}}, s.input_tokens);
            append_sample(out, "ai_request_tokens_total", cl, {{"model", model}, {"type", "output"}}, s.output_tokens);
        }
    }

    per_model("ai_request_cached_tokens_total", "Cached input tokens (part of the input tokens), by model.",
              [](const ModelStats& s) { return s.cached_input_tokens; });
    per_model("ai_request_reasoning_tokens_total", "Reasoning tokens (part of the output tokens), by model.",
              [](const ModelStats& s) { return s.reasoning_tokens; });
    per_model("ai_request_unpriced_total", "Requests of a model with no price entry (costed at 0), by model.",
              [](const ModelStats& s) { return s.unpriced; });

    append_family(out, "ai_request_latency_seconds", "histogram",
                  "Request latency in seconds, arrival to last byte sent, failed requests included.");
    for (const auto& [model, s] : snap.models) append_histogram(out, "ai_request_latency_seconds", cl, model, s.latency);

    append_family(out, "ai_request_ttft_seconds", "histogram",
                  "Streams: seconds from arrival to the first content chunk sent.");
    for (const auto& [model, s] : snap.models) {
        if (s.ttft.count() > 0) append_histogram(out, "ai_request_ttft_seconds", cl, model, s.ttft);
    }

    append_family(out, "ai_requests_in_flight", "gauge", "Requests being served now.");
    append_sample(out, "ai_requests_in_flight", cl, {}, static_cast<double>(snap.in_flight));

    append_family(out, "relaymeter_build_info", "gauge", "Build information; the value is always 1.");
    append_sample(out, "relaymeter_build_info", cl, {{"version", opts.version.empty() ? "unknown" : opts.version}},
                  std::uint64_t{1});

    out += render_process_metrics(opts, snap.started_at);
    return out;
}

nlohmann::ordered_json render_summary(const Snapshot& snap) {
    nlohmann::ordered_json models = nlohmann::ordered_json::array();
    bool all_priced = true;
    for (const auto& [name, s] : snap.models) { // std::map: sorted by name
        const bool priced = is_priced(snap, name, s);
        all_priced = all_priced && priced;
        models.push_back(stats_json("model", name, s, priced));
    }

    nlohmann::ordered_json hourly = nlohmann::ordered_json::array();
    for (const auto& [hour, cost] : snap.hourly_cost) hourly.push_back({{"hour", iso8601(hour)}, {"cost_usd", cost}});

    const double uptime = std::chrono::duration<double>(snap.generated_at - snap.started_at).count();
    nlohmann::ordered_json out{
        {"started_at", iso8601(unix_seconds(snap.started_at))},
        {"generated_at", iso8601(unix_seconds(snap.generated_at))},
        {"uptime_seconds", std::max(0.0, uptime)},
        {"in_flight", snap.in_flight},
        {"models", std::move(models)},
        {"overall", stats_json("model", "OVERALL", snap.overall(), all_priced)},
        {"hourly_cost_usd", std::move(hourly)},
    };
    if (snap.by_key) { // auth on: the same figures per client key name, sorted by name
        nlohmann::ordered_json keys = nlohmann::ordered_json::array();
        for (const auto& [name, s] : snap.keys) keys.push_back(stats_json("key", name, s, s.unpriced == 0));
        out["keys"] = std::move(keys);
    }
    return out;
}

std::string render_summary_table(const Snapshot& snap) {
    std::size_t name_width = 25;
    for (const auto& [name, s] : snap.models) name_width = std::max(name_width, name.size());
    for (const auto& [name, s] : snap.keys) name_width = std::max(name_width, name.size());
    const int w = static_cast<int>(name_width);

    char line[512];
    std::string out;
    out.reserve(1024 + (snap.models.size() + 4) * (name_width + 96));

    auto row = [&](const std::string& name, const ModelStats& s, bool priced) {
        std::snprintf(line, sizeof line, "%-*s %8llu %8llu %7.2f%% %9.2f %9.2f %12llu ", w, name.c_str(),
                      static_cast<unsigned long long>(s.requests), static_cast<unsigned long long>(s.errors),
                      percent(s.successes, s.requests), avg_latency_ms(s), quantile_ms(s.latency, 0.95),
                      static_cast<unsigned long long>(s.input_tokens + s.output_tokens));
        out += line;
        // Costs unrounded (shortest round-trip text); '*' marks unpriced requests.
        const std::string cost = "$" + shortest(s.cost_usd);
        std::snprintf(line, sizeof line, "%22s%s\n", cost.c_str(), priced ? "" : "*");
        out += line;
    };

    auto header_for = [&](const char* first) {
        std::snprintf(line, sizeof line, "%-*s %8s %8s %8s %9s %9s %12s %22s", w, first, "Reqs", "Errs", "Succ%",
                      "Avgms", "P95ms", "Tokens", "Cost$");
        return std::string(line);
    };
    const std::string header = header_for("Model");
    const std::string rule(header.size(), '=');
    const std::string sep(header.size(), '-');

    const double uptime = std::chrono::duration<double>(snap.generated_at - snap.started_at).count();
    std::snprintf(line, sizeof line, " relaymeter | %s | up %.0f s | in flight %lld\n",
                  iso8601(unix_seconds(snap.generated_at)).c_str(), std::max(0.0, uptime),
                  static_cast<long long>(snap.in_flight));
    out += rule + "\n" + line + rule + "\n" + header + "\n" + sep + "\n";

    bool all_priced = true;
    for (const auto& [name, s] : snap.models) {
        const bool priced = is_priced(snap, name, s);
        all_priced = all_priced && priced;
        row(name, s, priced);
    }
    if (snap.models.empty()) out += "(no requests yet)\n";
    out += sep + "\n";
    row("OVERALL", snap.overall(), all_priced);
    out += rule + "\n";
    if (snap.by_key) { // auth on: the same columns per client key name
        out += header_for("Key") + "\n" + sep + "\n";
        for (const auto& [name, s] : snap.keys) row(name, s, s.unpriced == 0);
        if (snap.keys.empty()) out += "(no requests yet)\n";
        out += rule + "\n";
    }
    if (!all_priced) out += "* some requests were of a model with no price entry and were costed at 0\n";
    return out;
}

} // namespace relaymeter::metrics
