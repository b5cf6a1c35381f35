// Serializers: Prometheus text exposition 0.0.4, /summary JSON, text table.
// They know nothing of HTTP.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "relaymeter/metrics/engine.hpp"

namespace relaymeter::metrics {

struct ExpositionOptions {
    std::vector<std::pair<std::string, std::string>> const_labels; // metrics.labels
    std::string version;                                            // relaymeter_build_info
};

// Escape a label value: backslash, double quote and newline.
std::string escape_label_value(const std::string& v);

std::string render_prometheus(const Snapshot& snap, const ExpositionOptions& opts);
// Fields in the contract's order.
nlohmann::ordered_json render_summary(const Snapshot& snap);
std::string render_summary_table(const Snapshot& snap);

// process_* metrics read from /proc/self (Linux); appended by render_prometheus.
std::string render_process_metrics(const ExpositionOptions& opts, std::chrono::system_clock::time_point started_at);

} // namespace relaymeter::metrics
