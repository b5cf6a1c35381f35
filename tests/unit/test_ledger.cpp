// Unit tests of the request ledger: line format, replay (torn and corrupt
// lines, rotation order), the writer (flushes, rotation, backpressure, failed
// writes), the config section. Hidden benchmarks: [.ledger-bench].
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "relaymeter/config/config.hpp"
#include "relaymeter/ledger/ledger.hpp"
#include "relaymeter/metrics/engine.hpp"
#include "unit/fixtures.hpp"

using namespace relaymeter;
using namespace relaymeter::testfixtures;
using Catch::Matchers::Contains;
using std::chrono::system_clock;

namespace {

struct TempDir {
    std::string path;
    TempDir() {
        char tmpl[] = "/tmp/relaymeter-ledger-XXXXXX";
        REQUIRE(::mkdtemp(tmpl) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    std::string file(const std::string& name) const { return path + "/" + name; }
};

std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void append_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    out << text;
}

std::vector<std::string> lines_of(const std::string& text) {
    std::vector<std::string> out;
    std::size_t start = 0;
    for (std::size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1)
        out.push_back(text.substr(start, nl - start));
    return out;
}

system_clock::time_point at_ms(std::int64_t unix_ms) {
    return system_clock::time_point(std::chrono::milliseconds(unix_ms));
}

// A record with every field set; request_id views `id`.
metrics::Record full_record(const std::string& id, int i = 0) {
    metrics::Record r = make_record("gpt-4.1", 200, 0.1 + i * 1e-3, make_usage(1000 + i, 250, 400, 30));
    r.key = "team-a";
    r.request_id = id;
    r.ttft_s = 0.0123456789;
    r.streamed = true;
    r.finished_at = at_ms(1795788000123 + i);
    return r;
}

std::string line_for(const metrics::Record& r, metrics::Pricing p) {
    std::string out;
    ledger::format_line(out, r, p);
    return out;
}

struct Replayed {
    ledger::ReplayStats stats;
    std::vector<std::string> ids;
    std::vector<std::string> models;
};

Replayed replay_all(const std::string& path) {
    Replayed r;
    r.stats = ledger::replay(path, [&](const metrics::Record& rec) {
        r.ids.emplace_back(rec.request_id);
        r.models.push_back(rec.model);
    });
    return r;
}

ledger::Options options_for(const std::string& path) {
    ledger::Options o;
    o.path = path;
    o.flush_interval = std::chrono::hours(1); // tests flush explicitly unless they test the interval
    return o;
}

// Appends records with ids "<prefix><i>" for i in [from, to).
void append_ids(ledger::Ledger& l, const std::string& prefix, int from, int to) {
    for (int i = from; i < to; ++i) {
        const std::string id = prefix + std::to_string(i);
        l.append(full_record(id), {0.5, false}); // same length for ids of the same length
    }
}

} // namespace

TEST_CASE("ledger: a line reads back as exactly the record it was written from", "[ledger]") {
    const std::string id = "req-1"; // outlives r, whose request_id views it
    metrics::Record r = full_record(id);
    r.latency_s = 1.0 / 3.0;
    const metrics::Pricing p{0.1 + 0.2, false};
    const std::string line = line_for(r, p);
    REQUIRE(line.back() == '\n');
    REQUIRE(std::count(line.begin(), line.end(), '\n') == 1);
    CHECK(line.rfind(R"({"finished_at":"2026-11-27T14:00:00.123Z","request_id":"req-1","model":"gpt-4.1","key":"team-a","status":200,)", 0) == 0);

    // Valid JSON for any reader.
    const auto j = nlohmann::json::parse(line);
    CHECK(j["cost_usd"].get<double>() == 0.1 + 0.2);
    CHECK(j["latency_s"].get<double>() == 1.0 / 3.0);
    CHECK(j["streamed"] == true);
    CHECK(j["unpriced"] == false);

    ledger::Entry e;
    std::string why;
    REQUIRE(ledger::parse_line(std::string_view(line).substr(0, line.size() - 1), e, &why));
    const metrics::Record& b = e.record;
    CHECK(b.request_id == "req-1");
    CHECK(b.model == "gpt-4.1");
    CHECK(b.key == "team-a");
    CHECK(b.status == 200);
    CHECK(b.latency_s == r.latency_s); // exact: the shortest round-trip form
    CHECK(b.ttft_s == r.ttft_s);
    CHECK(b.streamed);
    CHECK(b.usage.input == 1000);
    CHECK(b.usage.output == 250);
    CHECK(b.usage.cached_input == 400);
    CHECK(b.usage.reasoning == 30);
    CHECK(b.finished_at == r.finished_at);
    REQUIRE(b.pricing.has_value());
    CHECK(b.pricing->cost_usd == p.cost_usd);
    CHECK_FALSE(b.pricing->unpriced);
    CHECK(b.prices == nullptr);

    // Auth off (no key), no TTFT, unpriced, an error status.
    metrics::Record plain = make_record("mystery", 502, 2.5);
    plain.finished_at = at_ms(1000);
    const std::string l2 = line_for(plain, {0, true});
    CHECK(l2.find("\"key\"") == std::string::npos);
    CHECK(l2.find("\"ttft_s\"") == std::string::npos);
    REQUIRE(ledger::parse_line(std::string_view(l2).substr(0, l2.size() - 1), e, &why));
    CHECK(e.record.key.empty());
    CHECK(e.record.ttft_s < 0);
    CHECK(e.record.status == 502);
    CHECK(e.record.request_id.empty());
    CHECK(e.record.pricing->unpriced);
    CHECK(e.record.finished_at == at_ms(1000));
}

TEST_CASE("ledger: strings are escaped and read back", "[ledger]") {
    const std::string nasty = std::string("a\"b\\c\nd\te\x01\x1f\x7f", 13) + "\xc3\xa9/";
    metrics::Record r = full_record(nasty);
    r.model = nasty;
    r.key = nasty;
    const std::string line = line_for(r, {1, false});
    CHECK(std::count(line.begin(), line.end(), '\n') == 1); // no raw newline inside
    for (char c : line.substr(0, line.size() - 1)) CHECK(static_cast<unsigned char>(c) >= 0x20);
    const auto j = nlohmann::json::parse(line);
    CHECK(j["model"].get<std::string>() == nasty);
    ledger::Entry e;
    REQUIRE(ledger::parse_line(std::string_view(line).substr(0, line.size() - 1), e));
    CHECK(e.record.model == nasty);
    CHECK(e.record.key == nasty);
    CHECK(e.request_id == nasty);

    // Escapes that relaymeter does not write but JSON allows.
    REQUIRE(ledger::parse_line(R"({"finished_at":"2026-01-01T00:00:00Z","model":"x\/y\u00e9\ud83d\ude00","status":200})", e));
    CHECK(e.record.model == "x/y\xc3\xa9\xf0\x9f\x98\x80");
}

TEST_CASE("ledger: finished_at is RFC 3339 UTC with milliseconds, truncated", "[ledger]") {
    using namespace std::chrono;
    const auto day = sys_days{year{2026} / 11 / 27};
    std::string s;
    ledger::format_time(s, day + hours(14) + minutes(59) + seconds(59) + microseconds(999999));
    CHECK(s == "2026-11-27T14:59:59.999Z"); // truncated: the minute and hour never change
    s.clear();
    ledger::format_time(s, sys_days{year{2024} / 2 / 29});
    CHECK(s == "2024-02-29T00:00:00.000Z");
    s.clear();
    ledger::format_time(s, system_clock::time_point{});
    CHECK(s == "1970-01-01T00:00:00.000Z");

    system_clock::time_point tp;
    REQUIRE(ledger::parse_time("2026-11-27T14:59:59.999Z", tp));
    CHECK(tp == day + hours(14) + minutes(59) + seconds(59) + milliseconds(999));
    REQUIRE(ledger::parse_time("2026-11-27T14:00:00Z", tp));
    CHECK(tp == day + hours(14));
    REQUIRE(ledger::parse_time("2026-11-27T14:00:00.5Z", tp));
    CHECK(tp == day + hours(14) + milliseconds(500));
    REQUIRE(ledger::parse_time("2026-11-27T14:00:00.123456Z", tp));
    CHECK(tp == day + hours(14) + milliseconds(123));
    for (const char* bad : {"", "2026-11-27", "2026-11-27T14:00:00", "2026-11-27T14:00:00+01:00", "2026-13-01T00:00:00Z",
                            "2026-11-27T24:00:00Z", "2026-11-27T14:00:00.Z", "x026-11-27T14:00:00Z"}) {
        INFO(bad);
        CHECK_FALSE(ledger::parse_time(bad, tp));
    }
    // Every millisecond of a few days round-trips (spot check over a year boundary).
    for (std::int64_t ms = 1798761599000 - 5000; ms < 1798761599000 + 5000; ms += 7) {
        s.clear();
        ledger::format_time(s, at_ms(ms));
        REQUIRE(ledger::parse_time(s, tp));
        REQUIRE(tp == at_ms(ms));
    }
}

TEST_CASE("ledger: malformed lines are refused with a reason", "[ledger]") {
    ledger::Entry e;
    std::string why;
    const std::string good = R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200})";
    REQUIRE(ledger::parse_line(good, e, &why));
    CHECK(ledger::parse_line(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200,"future_field":[1]})", e, &why) == false);
    for (const std::string& bad : {
             std::string(""), std::string("{"), std::string("not json"), std::string("{}"), std::string("[1]"),
             good.substr(0, good.size() - 1),                 // torn: no closing brace
             good.substr(0, 30),                              // torn mid-string
             good + "x",                                      // trailing garbage
             std::string(R"({"finished_at":"yesterday","model":"m","status":200})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","status":200})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m"})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":-1})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200,"input_tokens":1.5})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200,"cost_usd":"1"})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200,"cost_usd":-1})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200,"streamed":1})"),
             std::string(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m\u12","status":200})"),
             std::string("{\"finished_at\":\"2026-01-01T00:00:00.000Z\",\"model\":\"a\nb\",\"status\":200}"),
             std::string(4096, '\0'),
         }) {
        INFO(bad);
        why.clear();
        CHECK_FALSE(ledger::parse_line(bad, e, &why));
        CHECK_FALSE(why.empty());
    }
    // Unknown scalar keys (a later version's) are ignored.
    CHECK(ledger::parse_line(R"({"finished_at":"2026-01-01T00:00:00.000Z","model":"m","status":200,"new":"x","n":1,"z":null})", e, &why));
}

TEST_CASE("ledger: a torn last line is skipped with a warning, and the next write starts on a new line", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    std::string text;
    for (int i = 0; i < 3; ++i) {
        const std::string id = "id" + std::to_string(i); // outlives r, whose request_id views it
        auto r = full_record(id, i);
        ledger::format_line(text, r, {0.25, false});
    }
    const std::string torn = line_for(full_record("torn", 9), {1, false}).substr(0, 57);
    append_text(path, text + torn);

    auto r1 = replay_all(path);
    CHECK(r1.stats.records == 3);
    CHECK(r1.ids == std::vector<std::string>{"id0", "id1", "id2"});
    CHECK(r1.stats.bad_lines == 1);
    CHECK(r1.stats.torn_lines == 1);
    CHECK(r1.stats.files == 1);
    REQUIRE(r1.stats.warnings.size() == 1);
    CHECK_THAT(r1.stats.warnings[0], Contains(path + ":4: torn last line"));

    {
        ledger::Ledger l(options_for(path));
        append_ids(l, "new", 0, 2);
        REQUIRE(l.flush());
        CHECK(l.close());
    }
    const auto lines = lines_of(slurp(path));
    REQUIRE(lines.size() == 6);
    CHECK(lines[3] == torn); // the fragment stays a line of its own
    auto r2 = replay_all(path);
    CHECK(r2.ids == std::vector<std::string>{"id0", "id1", "id2", "new0", "new1"});
    CHECK(r2.stats.bad_lines == 1);
    CHECK(r2.stats.torn_lines == 0);
    REQUIRE(r2.stats.warnings.size() == 1);
    CHECK_THAT(r2.stats.warnings[0], Contains(path + ":4: corrupt line"));
}

TEST_CASE("ledger: corrupt lines in the middle are skipped and counted", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("l.jsonl");
    std::string text;
    ledger::format_line(text, full_record("a"), {1, false});
    text += "garbage\n";
    ledger::format_line(text, full_record("b"), {1, false});
    text += std::string(100, '\0') + "\n\n"; // what a power cut can leave; an empty line is not a record
    ledger::format_line(text, full_record("c"), {1, false});
    append_text(path, text);
    auto r = replay_all(path);
    CHECK(r.ids == std::vector<std::string>{"a", "b", "c"});
    CHECK(r.stats.bad_lines == 2);
    CHECK(r.stats.torn_lines == 0);
    REQUIRE(r.stats.warnings.size() == 2);
    CHECK_THAT(r.stats.warnings[0], Contains(path + ":2: corrupt line skipped"));
    CHECK_THAT(r.stats.warnings[1], Contains(path + ":4: corrupt line skipped"));

    // A missing ledger is an empty one.
    auto none = replay_all(dir.file("absent.jsonl"));
    CHECK(none.stats.records == 0);
    CHECK(none.stats.files == 0);
}

TEST_CASE("ledger: rotation shifts PATH.N and replay reads the files oldest first", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    const std::size_t line_size = line_for(full_record("r0000"), {0.5, false}).size();
    auto o = options_for(path);
    o.max_bytes = line_size * 10 + line_size / 2; // ten lines per file
    {
        ledger::Ledger l(o);
        // Several flushes of different sizes: a file is never passed over max_bytes.
        int next = 1000;
        for (int batch : {3, 25, 1, 7, 14}) {
            append_ids(l, "r", next, next + batch);
            next += batch;
            REQUIRE(l.flush());
        }
        CHECK(l.close());
        CHECK(l.stats().rotations == 4);
    }
    const auto files = ledger::files_oldest_first(path);
    REQUIRE(files == std::vector<std::string>{path + ".4", path + ".3", path + ".2", path + ".1", path});
    for (const auto& f : files) {
        INFO(f);
        CHECK(std::filesystem::file_size(f) <= o.max_bytes);
    }
    auto r = replay_all(path);
    REQUIRE(r.ids.size() == 50);
    for (int i = 0; i < 50; ++i) CHECK(r.ids[static_cast<std::size_t>(i)] == "r" + std::to_string(1000 + i));
    CHECK(r.stats.files == 5);
    CHECK(r.stats.bad_lines == 0);

    // A gap in the numbering (a crash between two renames) loses nothing.
    std::filesystem::rename(path + ".2", path + ".7");
    auto g = replay_all(path);
    CHECK(g.ids.size() == 50);
    CHECK(g.ids.front() == "r1020"); // PATH.7 (the old PATH.2) now counts as the oldest
}

TEST_CASE("ledger: a finite keep drops the oldest rotated files", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    const std::size_t line_size = line_for(full_record("k0000"), {0.5, false}).size();
    auto o = options_for(path);
    o.max_bytes = line_size * 4;
    o.keep = 2;
    {
        ledger::Ledger l(o);
        for (int i = 0; i < 10; ++i) {
            append_ids(l, "k", 1000 + i * 4, 1000 + i * 4 + 4);
            REQUIRE(l.flush());
        }
    }
    const auto files = ledger::files_oldest_first(path);
    CHECK(files == std::vector<std::string>{path + ".2", path + ".1", path});
    auto r = replay_all(path);
    // The last 3 files' worth: the newest 12 records, in order (the 4 of the last flush fill PATH).
    REQUIRE(r.ids.size() == 12);
    for (int i = 0; i < 12; ++i) CHECK(r.ids[static_cast<std::size_t>(i)] == "k" + std::to_string(1028 + i));
}

TEST_CASE("ledger: records from many threads are each written exactly once", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    auto o = options_for(path);
    o.flush_interval = std::chrono::milliseconds(5);
    o.buffer_bytes = 256 << 10;
    constexpr int kThreads = 4, kEach = 5000;
    {
        ledger::Ledger l(o);
        std::vector<std::thread> ts;
        for (int t = 0; t < kThreads; ++t)
            ts.emplace_back([&l, t] { append_ids(l, "t" + std::to_string(t) + "-", 0, kEach); });
        for (auto& t : ts) t.join();
        CHECK(l.close());
        CHECK(l.stats().records == kThreads * kEach);
    }
    auto r = replay_all(path);
    CHECK(r.stats.bad_lines == 0);
    REQUIRE(r.ids.size() == kThreads * kEach);
    std::set<std::string> unique(r.ids.begin(), r.ids.end());
    CHECK(unique.size() == kThreads * kEach);
    // Per thread, the order is kept.
    std::map<std::string, int> last;
    for (const auto& id : r.ids) {
        const auto dash = id.find('-');
        const int n = std::stoi(id.substr(dash + 1));
        const auto [it, fresh] = last.emplace(id.substr(0, dash), n);
        if (!fresh) {
            CHECK(n == it->second + 1);
            it->second = n;
        }
    }
}

TEST_CASE("ledger: the writer writes every flush_interval without being asked", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    auto o = options_for(path);
    o.flush_interval = std::chrono::milliseconds(20);
    ledger::Ledger l(o);
    append_ids(l, "x", 0, 3);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (lines_of(slurp(path)).size() < 3 && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
    CHECK(lines_of(slurp(path)).size() == 3);
    CHECK(l.stats().flushes >= 1);
    CHECK(l.stats().buffered_bytes == 0);
}

TEST_CASE("ledger: a full buffer wakes the writer and makes the recording thread wait for it", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    auto o = options_for(path); // flush_interval 1 h: only the size threshold and the bound make it write
    o.buffer_bytes = 8 << 10;
    constexpr int kRecords = 2000; // ~600 KB through an 8 KiB bound
    ledger::Ledger l(o);
    append_ids(l, "b", 0, kRecords);
    const auto st = l.stats();
    CHECK(st.records == kRecords);
    CHECK(st.buffered_bytes <= o.buffer_bytes);
    // Written along the way in pieces of at most the bound (not at the end,
    // not once the hour is up): ~600 KB in pieces of at most ~4 KiB.
    CHECK(st.flushes > 100);
    REQUIRE(l.close());
    auto r = replay_all(path);
    CHECK(r.ids.size() == kRecords);
    CHECK(r.stats.bad_lines == 0);
}

TEST_CASE("ledger: stats() taken while the writer writes counts every byte once, in buffered or written",
          "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    auto o = options_for(path);
    o.buffer_bytes = 8 << 10; // the writer writes ~4 KiB at a time, thousands of times
    constexpr int kFrom = 100000, kRecords = 40000; // ids of one length: lines of one length
    const std::uint64_t line = line_for(full_record("s" + std::to_string(kFrom)), {0.5, false}).size();
    ledger::Ledger l(o);
    std::atomic<bool> done{false};
    std::uint64_t snapshots = 0, off = 0;
    std::string first_off;
    std::thread watcher([&] {
        while (!done.load(std::memory_order_acquire)) {
            const auto st = l.stats();
            ++snapshots;
            if (st.buffered_bytes + st.bytes_written != st.records * line) {
                if (off++ == 0)
                    first_off = std::to_string(st.buffered_bytes) + " buffered + " + std::to_string(st.bytes_written) +
                                " written, " + std::to_string(st.records) + " records of " + std::to_string(line);
            }
        }
    });
    append_ids(l, "s", kFrom, kFrom + kRecords);
    done.store(true, std::memory_order_release);
    watcher.join();
    REQUIRE(l.close());
    INFO(off << " of " << snapshots << " snapshots wrong; the first: " << first_off);
    CHECK(off == 0);
    CHECK(snapshots > 1000);
    const auto st = l.stats();
    CHECK(st.buffered_bytes == 0);
    CHECK(st.bytes_written == kRecords * line);
    CHECK(std::filesystem::file_size(path) == kRecords * line);
}

TEST_CASE("ledger: failed writes are retried, nothing is lost and memory stays within the bound", "[ledger]") {
    // EFBIG past a file size limit stands in for a full disk.
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    rlimit saved{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
    struct Restore {
        rlimit limit;
        void (*handler)(int);
        ~Restore() {
            ::setrlimit(RLIMIT_FSIZE, &limit);
            std::signal(SIGXFSZ, handler);
        }
    } restore{saved, old_handler};

    auto o = options_for(path);
    o.flush_interval = std::chrono::milliseconds(5);
    o.buffer_bytes = 64 << 10;
    constexpr int kRecords = 1500;
    ledger::Ledger l(o);
    rlimit small = saved;
    small.rlim_cur = 10000; // the file may grow to ~10 KB: a write stops mid-line
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);

    std::atomic<int> appended{0};
    std::thread producer([&] {
        for (int i = 0; i < kRecords; ++i) {
            const std::string id = "f" + std::to_string(i);
            l.append(full_record(id, i), {0.5, false});
            appended.store(i + 1);
        }
    });
    // Writes fail; the producer fills the bound, then waits: it cannot finish while writes fail.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    ledger::Stats st;
    do {
        st = l.stats();
    } while ((st.write_errors == 0 || st.waiting_threads == 0) && std::chrono::steady_clock::now() < deadline);
    CHECK(st.write_errors > 0);
    CHECK(st.waiting_threads == 1);
    CHECK(st.backpressure_waits > 0);
    CHECK(appended.load() < kRecords);
    CHECK(st.buffered_bytes <= o.buffer_bytes + 1024); // the bound, plus at most one line per thread
    CHECK(std::filesystem::file_size(path) <= 10000);

    // The disk has room again: everything arrives, once, with no torn line.
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &saved) == 0);
    producer.join();
    REQUIRE(l.close());
    auto r = replay_all(path);
    CHECK(r.stats.bad_lines == 0);
    REQUIRE(r.ids.size() == kRecords);
    for (int i = 0; i < kRecords; ++i) CHECK(r.ids[static_cast<std::size_t>(i)] == "f" + std::to_string(i));
}

TEST_CASE("ledger: a path that cannot be opened is an error at construction", "[ledger]") {
    TempDir dir;
    auto o = options_for(dir.file("no-such-dir/ledger.jsonl"));
    try {
        ledger::Ledger l(o);
        FAIL("no error");
    } catch (const ledger::LedgerError& e) {
        CHECK_THAT(e.what(), Contains(o.path) && Contains("No such file or directory"));
    }
    o.path = dir.path; // a directory
    CHECK_THROWS_AS(ledger::Ledger(o), ledger::LedgerError);
    {
        o.path = dir.file("taken.jsonl");
        ledger::Ledger first(o);
        try {
            ledger::Ledger second(o);
            FAIL("a second writer on the same file");
        } catch (const ledger::LedgerError& e) {
            CHECK_THAT(e.what(), Contains("in use by another process"));
        }
    }
    ledger::Ledger again(o); // free once the first one is gone
    if (::geteuid() != 0) { // root writes anyway
        const std::string ro = dir.file("ro.jsonl");
        append_text(ro, "");
        std::filesystem::permissions(ro, std::filesystem::perms::owner_read);
        o.path = ro;
        CHECK_THROWS_AS(ledger::Ledger(o), ledger::LedgerError);
    }
}

TEST_CASE("ledger: replay gives the engine the recorded costs, times and keys", "[ledger]") {
    TempDir dir;
    const std::string path = dir.file("ledger.jsonl");
    metrics::EngineOptions eo{64, default_prices(), true, 64};
    metrics::Engine live(eo);
    std::vector<std::string> ids;
    {
        ledger::Ledger l(options_for(path));
        live.set_sink([&l](const metrics::Record& r, const metrics::Pricing& p) { l.append(r, p); });
        const auto hour_ago = system_clock::now() - std::chrono::minutes(70);
        for (int i = 0; i < 300; ++i) {
            const std::string id = "e" + std::to_string(i);
            auto r = make_record(i % 3 == 0 ? "gpt-4.1" : (i % 3 == 1 ? "deepseek-v3.2" : "unknown-model"),
                                 i % 10 == 0 ? 500 : 200, 0.01 * (i % 37 + 1), make_usage(100 + i, 20 + i % 7, i % 5, i % 3));
            r.request_id = id;
            r.key = i % 2 ? "team-a" : "none";
            if (i % 4 == 0) {
                r.streamed = true;
                r.ttft_s = 0.001 * (i % 13 + 1);
            }
            r.finished_at = hour_ago + std::chrono::seconds(i * 13);
            live.record(r);
        }
        REQUIRE(l.close());
    }
    // Prices changed since: replayed costs are the recorded ones.
    auto other = eo;
    other.prices["gpt-4.1"] = {100, 100, std::nullopt};
    metrics::Engine back(other);
    auto st = ledger::replay(path, [&](const metrics::Record& r) { back.record(r); });
    CHECK(st.records == 300);
    const auto a = live.snapshot();
    const auto b = back.snapshot();
    REQUIRE(a.models.size() == b.models.size());
    for (const auto& [name, m] : a.models) {
        INFO(name);
        const auto& n = b.models.at(name);
        CHECK(n.requests == m.requests);
        CHECK(n.errors == m.errors);
        CHECK(n.unpriced == m.unpriced);
        CHECK(n.streamed == m.streamed);
        CHECK(n.input_tokens == m.input_tokens);
        CHECK(n.output_tokens == m.output_tokens);
        CHECK(n.cached_input_tokens == m.cached_input_tokens);
        CHECK(n.reasoning_tokens == m.reasoning_tokens);
        CHECK(n.cost_usd == Approx(m.cost_usd).epsilon(1e-12));
        CHECK(n.status_codes == m.status_codes);
        CHECK(n.latency.quantile(0.5) == m.latency.quantile(0.5));
        CHECK(n.latency.quantile(0.99) == m.latency.quantile(0.99));
        CHECK(n.ttft.count() == m.ttft.count());
    }
    CHECK(b.keys.size() == a.keys.size());
    CHECK(b.keys.at("team-a").requests == a.keys.at("team-a").requests);
    CHECK(b.keys.at("team-a").cost_usd == Approx(a.keys.at("team-a").cost_usd).epsilon(1e-12));
    REQUIRE(b.hourly_cost.size() == a.hourly_cost.size());
    for (const auto& [hour, cost] : a.hourly_cost) CHECK(b.hourly_cost.at(hour) == Approx(cost).epsilon(1e-12));
}

TEST_CASE("ledger config: every key is read and validated with file, line and key", "[ledger][config]") {
    using relaymeter::config::ConfigError;
    const auto errors_of = [](const std::string& yaml) {
        try {
            (void)config::load_string(yaml, "t.yaml");
        } catch (const ConfigError& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    const auto c = config::load_string("ledger:\n  path: /tmp/x.jsonl\n  flush_interval_ms: 250\n  max_bytes: 1048576\n"
                                       "  keep: 3\n  fsync: true\n  buffer_bytes: 1048576\n",
                                       "t.yaml");
    CHECK(c.ledger.enabled);
    CHECK(c.ledger.path == "/tmp/x.jsonl");
    CHECK(c.ledger.flush_interval_ms == 250);
    CHECK(c.ledger.max_bytes == 1048576);
    CHECK(c.ledger.keep == 3);
    CHECK(c.ledger.fsync);
    CHECK(c.ledger.buffer_bytes == 1048576);

    const auto d = config::load_string("ledger: { path: l.jsonl }\n", "t.yaml");
    CHECK(d.ledger.flush_interval_ms == 1000);
    CHECK(d.ledger.max_bytes == 256u << 20);
    CHECK(d.ledger.keep == 0);
    CHECK_FALSE(d.ledger.fsync);
    CHECK(d.ledger.buffer_bytes == 16u << 20);
    CHECK_FALSE(config::load_string("log: { level: info }\n", "t.yaml").ledger.enabled);

    CHECK_THAT(errors_of("ledger:\n  path: l\n  flush_ms: 5\n"), Contains("t.yaml:3: ledger.flush_ms: unknown key"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  flush_interval_ms: -5\n"), Contains("t.yaml:3: ledger.flush_interval_ms: must be at least 1"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  flush_interval_ms: 0\n"), Contains("t.yaml:3: ledger.flush_interval_ms: must be at least 1"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  flush_interval_ms: soon\n"), Contains("t.yaml:3: ledger.flush_interval_ms: expected an integer"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  keep: -1\n"), Contains("t.yaml:3: ledger.keep: must not be negative"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  keep: [1]\n"), Contains("t.yaml:3: ledger.keep: expected an integer"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  max_bytes: -1\n"), Contains("t.yaml:3: ledger.max_bytes: must be at least 4096"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  max_bytes: 1.5\n"), Contains("t.yaml:3: ledger.max_bytes: expected an integer"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  fsync: sometimes\n"), Contains("t.yaml:3: ledger.fsync: expected true or false"));
    CHECK_THAT(errors_of("ledger:\n  path: l\n  buffer_bytes: 10\n"), Contains("t.yaml:3: ledger.buffer_bytes: must be at least 65536"));
    CHECK_THAT(errors_of("ledger:\n  flush_interval_ms: 5\n"), Contains("t.yaml:2: ledger.path: required"));
}

// ---- measurements (hidden: run with `relaymeter_tests "[.ledger-bench]" -s`) ----

TEST_CASE("ledger bench: cost of the sink per record, one and two threads", "[.ledger-bench]") {
    TempDir dir;
    const std::string id = "0123456789abcdef0123456789abcdef"; // a generated request id's length
    const metrics::Pricing price{0.0123456, false};
    using Steady = std::chrono::steady_clock;
    const auto ns_since = [](Steady::time_point t0, double n) {
        return std::chrono::duration<double, std::nano>(Steady::now() - t0).count() / n;
    };

    // 1. Formatting alone.
    {
        auto r = full_record(id);
        std::string out;
        out.reserve(1 << 20);
        constexpr int kN = 1000000;
        const auto t0 = Steady::now();
        for (int i = 0; i < kN; ++i) {
            if (out.size() > (1 << 20) - 512) out.clear();
            r.latency_s = 0.1 + i * 1e-7;
            ledger::format_line(out, r, price);
        }
        WARN("format_line: " << ns_since(t0, kN) << " ns per line (" << line_for(r, price).size() << " bytes)");
    }

    // 2. What the request thread pays: append() in bursts below the writer's
    //    size threshold (the writer does not run during the timed part).
    for (int threads : {1, 2}) {
        auto o = options_for(dir.file("burst" + std::to_string(threads) + ".jsonl"));
        ledger::Ledger l(o);
        constexpr int kBurst = 2500, kBursts = 200; // 2500 lines ~ 800 KB < 1 MiB
        std::vector<double> ns(static_cast<std::size_t>(threads), 0);
        for (int b = 0; b < kBursts; ++b) {
            std::vector<std::thread> ts;
            for (int t = 0; t < threads; ++t) {
                ts.emplace_back([&, t] {
                    auto r = full_record(id);
                    const auto t0 = Steady::now();
                    for (int i = 0; i < kBurst; ++i) {
                        r.latency_s = 0.1 + i * 1e-7;
                        l.append(r, price);
                    }
                    ns[static_cast<std::size_t>(t)] += ns_since(t0, kBurst) / kBursts;
                });
            }
            for (auto& t : ts) t.join();
            REQUIRE(l.flush());
        }
        WARN("append, " << threads << " thread(s) at once: " << ns[0] << " ns per record (thread 0)"
                        << (threads > 1 ? ", " + std::to_string(ns[1]) + " ns (thread 1)" : std::string()));
    }

    // 3. Sustained: threads append as fast as they can, the writer keeps up or
    //    pushes back. CPU of the whole process per record (writer included).
    for (int threads : {1, 2}) {
        auto o = options_for(dir.file("sustained" + std::to_string(threads) + ".jsonl"));
        o.flush_interval = std::chrono::milliseconds(1000);
        ledger::Ledger l(o);
        constexpr int kPerThread = 500000;
        rusage ru0{}, ru1{};
        ::getrusage(RUSAGE_SELF, &ru0);
        const auto t0 = Steady::now();
        std::vector<std::thread> ts;
        for (int t = 0; t < threads; ++t) {
            ts.emplace_back([&] {
                auto r = full_record(id);
                for (int i = 0; i < kPerThread; ++i) {
                    r.latency_s = 0.1 + i * 1e-7;
                    l.append(r, price);
                }
            });
        }
        for (auto& t : ts) t.join();
        REQUIRE(l.close());
        const double wall_s = std::chrono::duration<double>(Steady::now() - t0).count();
        ::getrusage(RUSAGE_SELF, &ru1);
        const auto secs = [](const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; };
        const double cpu = secs(ru1.ru_utime) - secs(ru0.ru_utime) + secs(ru1.ru_stime) - secs(ru0.ru_stime);
        const double n = static_cast<double>(threads) * kPerThread;
        const auto st = l.stats();
        WARN("sustained, " << threads << " thread(s): " << n / wall_s / 1e6 << " M records/s, "
                           << static_cast<double>(st.bytes_written) / wall_s / (1 << 20) << " MiB/s, CPU "
                           << cpu / n * 1e9 << " ns per record (writer included), " << st.flushes << " writes, "
                           << st.backpressure_waits << " backpressure waits");
    }
}

TEST_CASE("ledger bench: replay speed over a million lines", "[.ledger-bench]") {
    TempDir dir;
    const std::string path = dir.file("big.jsonl");
    {
        std::string text;
        for (int i = 0; i < 1000000; ++i) {
            const std::string id = "req-" + std::to_string(i); // outlives r, whose request_id views it
            auto r = full_record(id, i);
            r.model = i % 3 ? "gpt-4.1" : "deepseek-v3.2";
            r.key = i % 2 ? "team-a" : "team-b";
            ledger::format_line(text, r, {0.001 * (i % 100), false});
        }
        append_text(path, text);
    }
    std::uint64_t n = 0;
    auto parse_only = ledger::replay(path, [&](const metrics::Record&) { ++n; });
    REQUIRE(n == 1000000);
    metrics::Engine engine({64, default_prices(), true, 64});
    auto with_engine = ledger::replay(path, [&](const metrics::Record& r) { engine.record(r); });
    REQUIRE(with_engine.records == 1000000);
    WARN("replay of " << parse_only.bytes / (1 << 20) << " MiB, 1M lines: parse only " << parse_only.seconds << " s ("
                      << 1e6 / parse_only.seconds << " lines/s); into the engine " << with_engine.seconds << " s ("
                      << 1e6 / with_engine.seconds << " lines/s)");
}
