// The request ledger: one JSON line per finished request, appended to a file
// off the request path, and replayed into the engine at start so that the
// figures survive a restart. No networking headers here.
//
// Line format (one object per line, '\n'-terminated, fields in this order;
// "key" only when auth is on, "ttft_s" only when the request had one):
//   {"finished_at":"2026-11-27T14:00:00.123Z","request_id":"…","model":"gpt-4.1",
//    "key":"team-a","status":200,"latency_s":1.2345,"ttft_s":0.2,"streamed":true,
//    "input_tokens":1000,"output_tokens":250,"cached_input_tokens":400,
//    "reasoning_tokens":30,"cost_usd":0.0123,"unpriced":false}
// finished_at is RFC 3339 UTC with milliseconds (truncated, so the hour and
// minute of a record never change); latency_s, ttft_s and cost_usd are written
// in the shortest form that reads back as the same double.
//
// Writing: Ledger::append (the engine's sink, on the recording thread)
// formats the line into that thread's own buffer (a mutex per thread, only
// ever contended by the writer taking the buffer); a writer thread writes
// every buffer to the file every flush_interval, or sooner when a buffer
// passes a size threshold. The buffers are bounded: past the bound the
// recording thread waits for the writer (backpressure, with a rate-limited
// warning). A failed write (disk full, EIO) is retried from where it stopped,
// with a rate-limited error log, and the data stays in memory within the bound.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "relaymeter/metrics/record.hpp"

namespace relaymeter::metrics {
struct ExpositionOptions;
}

namespace relaymeter::ledger {

struct Options {
    std::string path;
    std::chrono::milliseconds flush_interval{1000};
    std::uint64_t max_bytes = 256ull << 20; // a file is rotated before it would pass this (a line is never split)
    unsigned keep = 0;                      // rotated files kept (PATH.1 … PATH.keep); 0 = all
    bool fsync = false;                     // fdatasync after every flush (and fsync the directory on rotation)
    std::uint64_t buffer_bytes = 16ull << 20; // bound on formatted lines held in memory, not yet written
};

class LedgerError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// ---- the line format -------------------------------------------------------

// Appends the line (with its '\n') for `rec` priced as `pricing`. A record
// without finished_at is stamped with the current time.
void format_line(std::string& out, const metrics::Record& rec, const metrics::Pricing& pricing);

// "YYYY-MM-DDTHH:MM:SS.mmmZ" (milliseconds truncated).
void format_time(std::string& out, std::chrono::system_clock::time_point tp);
// Reads "YYYY-MM-DDTHH:MM:SS[.fraction]Z" (UTC only; the fraction is truncated to ms).
bool parse_time(std::string_view text, std::chrono::system_clock::time_point& out);

// One parsed line. record.request_id views this Entry's request_id and
// record.pricing is set (costs are not recomputed). Reuse one Entry across
// lines to avoid allocations.
struct Entry {
    metrics::Record record;
    std::string request_id;
};

// Parses one line (without its '\n'). On failure returns false and, when
// `why` is given, says what is wrong. Unknown keys are ignored; finished_at,
// model and status are required.
bool parse_line(std::string_view line, Entry& out, std::string* why = nullptr);

// ---- replay ----------------------------------------------------------------

// The ledger's files that exist, oldest first: PATH.N … PATH.1, then PATH.
std::vector<std::string> files_oldest_first(const std::string& path);

struct ReplayStats {
    std::uint64_t records = 0;    // lines read back and handed to `each`
    std::uint64_t bad_lines = 0;  // lines skipped (torn last lines included)
    std::uint64_t torn_lines = 0; // files whose last line had no '\n' (a crash mid-write)
    std::uint64_t files = 0;
    std::uint64_t bytes = 0;
    double seconds = 0;
    static constexpr std::size_t kMaxWarnings = 20;
    std::vector<std::string> warnings; // "FILE:LINE: what" for the first kMaxWarnings bad lines
};

// Reads the ledger's files oldest first and calls `each` with every good
// record (valid during the call only). Bad lines are skipped and counted.
// Throws LedgerError when a file exists but cannot be read.
ReplayStats replay(const std::string& path, const std::function<void(const metrics::Record&)>& each);

// ---- the writer ------------------------------------------------------------

struct Stats {
    std::uint64_t records = 0;            // appended
    std::uint64_t bytes_written = 0;
    std::uint64_t flushes = 0;            // writer cycles that wrote something
    std::uint64_t write_errors = 0;       // failed write()/open()/rename() calls
    std::uint64_t rotations = 0;
    std::uint64_t backpressure_waits = 0; // appends that had to wait for the writer
    std::uint64_t buffered_bytes = 0;     // in memory, not yet written (thread buffers and the writer's)
    std::uint64_t waiting_threads = 0;    // recording threads waiting for the writer right now
};

// relaymeter_ledger_* for /metrics: the writer's counters and what it
// holds in memory, with the constant labels.
std::string render_prometheus(const Stats& stats, const metrics::ExpositionOptions& opts);

class Ledger {
public:
    // Opens (creates) options.path for appending, takes an exclusive flock on
    // it, and starts the writer thread. Throws LedgerError when the file
    // cannot be opened or created, or another process holds it. If the file
    // ends with a torn line, the first write starts on a new line.
    explicit Ledger(Options options);
    ~Ledger(); // close()
    Ledger(const Ledger&) = delete;
    Ledger& operator=(const Ledger&) = delete;

    // The engine's sink: formats the record into the calling thread's buffer.
    // Thread-safe; blocks only when the buffers are full (backpressure).
    void append(const metrics::Record& rec, const metrics::Pricing& pricing);

    // Writes everything appended before the call; true once it is in the file
    // (and synced with fsync on), false if that did not happen within timeout.
    bool flush(std::chrono::milliseconds timeout = std::chrono::seconds(30));

    // Writes what is left, stops the writer and closes the file. Call it once
    // the recording threads are done. When writes keep failing it gives up
    // after `give_up_after`, logs how much was lost and returns false.
    bool close(std::chrono::milliseconds give_up_after = std::chrono::seconds(10));

    Stats stats() const;
    const Options& options() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

} // namespace relaymeter::ledger
