#include "metrics/text_format.hpp"
#include "relaymeter/ledger/ledger.hpp"

namespace relaymeter::ledger {

std::string render_prometheus(const Stats& s, const metrics::ExpositionOptions& opts) {
    using namespace metrics::text;
    const std::string cl = const_label_block(opts);
    std::string out;
    const auto one = [&](std::string_view name, std::string_view type, std::string_view help, std::uint64_t v) {
        append_family(out, name, type, help);
        append_sample(out, name, cl, {}, v);
    };
    one("relaymeter_ledger_records_total", "counter", "Records appended to the ledger.", s.records);
    one("relaymeter_ledger_bytes_written_total", "counter", "Bytes the ledger writer wrote to its file.",
        s.bytes_written);
    one("relaymeter_ledger_write_errors_total", "counter",
        "Failed write, open or rename calls of the ledger writer (what failed stays buffered and is retried).",
        s.write_errors);
    one("relaymeter_ledger_rotations_total", "counter", "Ledger file rotations.", s.rotations);
    one("relaymeter_ledger_backpressure_waits_total", "counter",
        "Appends that waited because the ledger's buffers were full.", s.backpressure_waits);
    one("relaymeter_ledger_buffered_bytes", "gauge", "Bytes appended to the ledger and not yet written.",
        s.buffered_bytes);
    return out;
}

} // namespace relaymeter::ledger
