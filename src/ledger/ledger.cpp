// The ledger's writer: per-thread buffers filled by the recording threads, one
// writer thread that writes them to the file, rotates it, retries failures.
#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <spdlog/spdlog.h>

#include "ledger/internal.hpp"
#include "relaymeter/ledger/ledger.hpp"
#include "relaymeter/util/per_thread.hpp"

namespace relaymeter::ledger {

namespace {

using Clock = std::chrono::steady_clock;

std::atomic<std::uint64_t> g_next_ledger_id{1};

// Lets one message through per period; counts the ones held back.
class RateLimit {
public:
    explicit RateLimit(std::chrono::milliseconds period) : period_(period.count()) {}
    // True when the caller may log now; `suppressed` is how many were held back since.
    bool allow(std::uint64_t& suppressed) {
        const std::int64_t now =
            std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now().time_since_epoch()).count();
        std::int64_t next = next_.load(std::memory_order_relaxed);
        if (now < next || !next_.compare_exchange_strong(next, now + period_)) {
            held_.fetch_add(1, std::memory_order_relaxed);
            return false;
        }
        suppressed = held_.exchange(0, std::memory_order_relaxed);
        return true;
    }

private:
    const std::int64_t period_;
    std::atomic<std::int64_t> next_{0};
    std::atomic<std::uint64_t> held_{0};
};

std::string since_note(std::uint64_t suppressed) {
    return suppressed == 0 ? std::string() : " (" + std::to_string(suppressed) + " similar messages held back)";
}

std::uint64_t count_lines(std::string_view s) {
    return static_cast<std::uint64_t>(std::count(s.begin(), s.end(), '\n'));
}

} // namespace

// One recording thread's lines, not yet taken by the writer.
struct Buffer {
    explicit Buffer(std::thread::id o) : owner(o) {}
    const std::thread::id owner;
    std::mutex mu;               // the owner appends, the writer takes: contended once per flush at most
    std::condition_variable cv;  // the owner waits here when the buffer is full
    std::string data;            // guarded by mu
    std::uint64_t records = 0;   // guarded by mu: appended since start
    bool wake_sent = false;      // guarded by mu: the writer was asked to come early
    bool waiting = false;        // guarded by mu: the owner waits for room
    std::string spare;           // the writer's own: swapped with data when taken
};

struct Ledger::Impl {
    explicit Impl(Options o) : opt(std::move(o)), id(g_next_ledger_id.fetch_add(1)) {}

    const Options opt;
    const std::uint64_t id;

    // Buffers, one per recording thread; never freed before the ledger.
    std::mutex reg_mu;
    std::vector<std::unique_ptr<Buffer>> buffers;
    std::atomic<std::size_t> nbuffers{0};
    std::atomic<bool> closed{false};

    // The writer's wake-ups and flush requests.
    std::mutex mu;
    std::condition_variable cv;      // the writer sleeps here
    std::condition_variable done_cv; // flush() waits here
    bool stop = false;
    bool wake = false;
    bool failing = false;             // the last cycle failed: retry after a backoff
    std::uint64_t requested = 0;      // flush generations asked
    std::uint64_t done = 0;           // flush generations completed
    Clock::time_point give_up_at{};   // close(): retry failed writes until then
    bool lost = false;                // close() gave up with data unwritten

    // Writer-thread state (and the constructor's, before the thread starts).
    int fd = -1;
    std::uint64_t size = 0;       // bytes in the current file
    bool need_newline = false;    // the file ends with a torn line: start on a new line
    bool mid_line = false;        // the last write ended inside a line (a failed write): no rotation now
    std::string pending;          // taken from the buffers, not yet written
    std::size_t pending_off = 0;  // bytes of pending already written

    std::atomic<std::uint64_t> flushes{0}, write_errors{0}, rotations{0}, waits{0};

    // What is written and what the writer still holds change together, under
    // one lock, so that stats() never counts a byte in both or in neither.
    mutable std::mutex count_mu;
    std::uint64_t bytes_written = 0; // guarded by count_mu
    std::uint64_t pending_bytes = 0; // guarded by count_mu: pending.size() - pending_off
    void count_pending(std::uint64_t just_written = 0) {
        const std::lock_guard cl(count_mu);
        bytes_written += just_written;
        pending_bytes = pending.size() - pending_off;
    }

    RateLimit write_log{std::chrono::seconds(10)};
    RateLimit full_log{std::chrono::seconds(10)};
    RateLimit closed_log{std::chrono::seconds(10)};

    std::thread writer;

    // ---- recording threads -------------------------------------------------

    Buffer& local_buffer();
    std::size_t limit() const {
        // Half the bound is for the thread buffers, split between the threads
        // that record; the other half is what the writer may hold.
        const std::size_t n = std::max<std::size_t>(1, nbuffers.load(std::memory_order_relaxed));
        return static_cast<std::size_t>(opt.buffer_bytes / 2 / n);
    }
    static std::size_t threshold(std::size_t lim) { return std::min<std::size_t>(lim / 2, 1u << 20); }
    void wake_writer() {
        {
            const std::lock_guard lk(mu);
            wake = true;
        }
        cv.notify_one();
    }
    void wait_for_room(Buffer& b, std::unique_lock<std::mutex>& lk);

    // ---- the writer ----------------------------------------------------------

    bool open_file(std::string& error);
    void run();
    bool take();
    bool write_pending();
    bool rotate();
    void log_write_error(const char* what, int err);
};

Buffer& Ledger::Impl::local_buffer() {
    return util::per_thread(id, reg_mu, buffers, [this](std::size_t n) { nbuffers.store(n, std::memory_order_relaxed); });
}

void Ledger::Impl::wait_for_room(Buffer& b, std::unique_lock<std::mutex>& lk) {
    waits.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t held = 0;
    if (full_log.allow(held)) {
        spdlog::warn("ledger: the write buffer is full ({} bytes for this thread, ledger.buffer_bytes {}): a request "
                     "thread waits for the writer{}{}",
                     b.data.size(), opt.buffer_bytes,
                     write_errors.load(std::memory_order_relaxed) != 0 ? " (writes to the ledger have failed)" : "",
                     since_note(held));
    }
    b.waiting = true;
    b.wake_sent = true;
    lk.unlock();
    wake_writer();
    lk.lock();
    b.cv.wait(lk, [&] { return b.data.empty() || b.data.size() < limit(); });
    b.waiting = false;
}

// ---- the writer --------------------------------------------------------------

void Ledger::Impl::log_write_error(const char* what, int err) {
    write_errors.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t held = 0;
    if (write_log.allow(held)) {
        spdlog::error("ledger: {} {}: {}; {} bytes kept in memory and retried (bound ledger.buffer_bytes {}){}", what,
                      opt.path, std::strerror(err), pending.size() - pending_off, opt.buffer_bytes, since_note(held));
    }
}

bool Ledger::Impl::open_file(std::string& error) {
    // O_RDWR: the last byte is read to find a torn line.
    const int f = ::open(opt.path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (f < 0) {
        error = std::strerror(errno);
        return false;
    }
    struct stat st {};
    if (::fstat(f, &st) != 0 || !S_ISREG(st.st_mode)) {
        error = S_ISREG(st.st_mode) ? std::strerror(errno) : "not a regular file";
        ::close(f);
        return false;
    }
    // One writer per ledger: a second relaymeter on the same file is refused
    // (the lock goes with the process, SIGKILL included).
    if (::flock(f, LOCK_EX | LOCK_NB) != 0) {
        error = errno == EWOULDBLOCK ? "in use by another process (another relaymeter on the same ledger?)"
                                     : std::strerror(errno);
        ::close(f);
        return false;
    }
    fd = f;
    size = static_cast<std::uint64_t>(st.st_size);
    mid_line = false;
    if (size > 0) {
        char last = '\n';
        if (::pread(fd, &last, 1, static_cast<off_t>(size - 1)) == 1 && last != '\n') need_newline = true;
    }
    return true;
}

bool Ledger::Impl::take() {
    bool took = false;
    const std::lock_guard rl(reg_mu);
    for (const auto& b : buffers) {
        {
            const std::lock_guard bl(b->mu);
            if (b->data.empty()) continue;
            b->data.swap(b->spare); // the owner keeps appending into the spare's capacity
            b->wake_sent = false;
            if (b->waiting) b->cv.notify_all();
        }
        pending.append(b->spare);
        b->spare.clear();
        took = true;
    }
    count_pending();
    return took;
}

bool Ledger::Impl::rotate() {
    if (opt.fsync && ::fdatasync(fd) != 0) log_write_error("cannot sync", errno);
    auto indices = rotated_indices(opt.path);
    if (opt.keep > 0) {
        // PATH.keep and beyond would be past `keep` after the shift: drop them.
        while (!indices.empty() && indices.back() >= opt.keep) {
            const std::string old = opt.path + "." + std::to_string(indices.back());
            if (::unlink(old.c_str()) != 0 && errno != ENOENT) {
                log_write_error("cannot remove the oldest rotated file of", errno);
                return false;
            }
            spdlog::info("ledger: removed {} (ledger.keep {})", old, opt.keep);
            indices.pop_back();
        }
    }
    // Shift from the highest down so that nothing is overwritten.
    for (auto it = indices.rbegin(); it != indices.rend(); ++it) {
        const std::string from = opt.path + "." + std::to_string(*it);
        const std::string to = opt.path + "." + std::to_string(*it + 1);
        if (::rename(from.c_str(), to.c_str()) != 0) {
            log_write_error("cannot rotate (rename) the rotated files of", errno);
            return false;
        }
    }
    const std::string first = opt.path + ".1";
    if (::rename(opt.path.c_str(), first.c_str()) != 0) {
        log_write_error("cannot rotate (rename)", errno);
        return false;
    }
    ::close(fd);
    fd = -1;
    size = 0;
    need_newline = false;
    rotations.fetch_add(1, std::memory_order_relaxed);
    std::string error;
    if (!open_file(error)) {
        write_errors.fetch_add(1, std::memory_order_relaxed);
        spdlog::error("ledger: rotated {} to {}, but cannot create a new {}: {} (retried)", opt.path, first, opt.path,
                      error);
    } else {
        spdlog::info("ledger: rotated {} to {} (ledger.max_bytes {})", opt.path, first, opt.max_bytes);
    }
    if (opt.fsync) {
        std::filesystem::path dir = std::filesystem::path(opt.path).parent_path();
        if (dir.empty()) dir = ".";
        const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            ::fsync(dfd);
            ::close(dfd);
        }
    }
    return true;
}

bool Ledger::Impl::write_pending() {
    if (pending_off == pending.size()) return true;
    if (need_newline && pending_off == 0 && fd >= 0) {
        pending.insert(pending.begin(), '\n'); // the torn fragment stays a line of its own
        need_newline = false;
        count_pending();
    }
    bool may_rotate = true;
    while (pending_off < pending.size()) {
        if (fd < 0) {
            std::string error;
            if (!open_file(error)) {
                write_errors.fetch_add(1, std::memory_order_relaxed);
                std::uint64_t held = 0;
                if (write_log.allow(held))
                    spdlog::error("ledger: cannot open {}: {}; {} bytes kept in memory and retried{}", opt.path, error,
                                  pending.size() - pending_off, since_note(held));
                return false;
            }
            if (need_newline && pending_off < pending.size()) {
                pending.insert(pending.begin() + static_cast<std::ptrdiff_t>(pending_off), '\n');
                need_newline = false;
                count_pending();
            }
        }
        const char* p = pending.data() + pending_off;
        std::size_t n = pending.size() - pending_off;
        if (may_rotate && !mid_line && size + n > opt.max_bytes) {
            // Fill the file up to max_bytes with whole lines, then rotate.
            const std::size_t room = opt.max_bytes > size ? static_cast<std::size_t>(opt.max_bytes - size) : 0;
            const void* nl = room > 0 ? ::memrchr(p, '\n', std::min(room, n)) : nullptr;
            if (nl == nullptr && size > 0) {
                may_rotate = rotate(); // on failure: keep writing to the current file
                continue;
            }
            if (nl == nullptr) nl = std::memchr(p, '\n', n); // one line longer than max_bytes: a file of its own
            if (nl != nullptr) n = static_cast<std::size_t>(static_cast<const char*>(nl) - p) + 1;
        }
        const ssize_t w = ::write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            log_write_error("cannot write to", w < 0 ? errno : EIO);
            return false;
        }
        pending_off += static_cast<std::size_t>(w);
        size += static_cast<std::uint64_t>(w);
        count_pending(static_cast<std::uint64_t>(w));
        mid_line = pending[pending_off - 1] != '\n';
    }
    pending.clear();
    pending_off = 0;
    count_pending();
    if (opt.fsync && fd >= 0 && ::fdatasync(fd) != 0) log_write_error("cannot sync", errno);
    flushes.fetch_add(1, std::memory_order_relaxed);
    return true;
}

void Ledger::Impl::run() {
    constexpr auto kMinBackoff = std::chrono::milliseconds(50);
    constexpr auto kMaxBackoff = std::chrono::seconds(2);
    std::unique_lock lk(mu);
    auto next = Clock::now() + opt.flush_interval;
    std::chrono::milliseconds backoff = kMinBackoff;
    for (;;) {
        cv.wait_until(lk, next, [&] { return !failing && (stop || wake); });
        const bool stopping = stop;
        const std::uint64_t gen = requested;
        wake = false;
        lk.unlock();
        // Old data first; new data is taken only once it is written (the bound).
        bool ok = write_pending();
        bool took = false;
        if (ok) {
            took = take();
            ok = write_pending();
        }
        lk.lock();
        const auto now = Clock::now();
        if (ok) {
            if (failing) spdlog::info("ledger: writing to {} again", opt.path);
            failing = false;
            backoff = kMinBackoff;
            done = gen;
            done_cv.notify_all();
            next = now + opt.flush_interval;
            if (stopping && !took) break;
        } else {
            failing = true;
            next = now + backoff;
            backoff = std::min<std::chrono::milliseconds>(backoff * 2, kMaxBackoff);
            if (stopping && now >= give_up_at) {
                lost = true;
                break;
            }
        }
    }
}

// ---- Ledger --------------------------------------------------------------------

Ledger::Ledger(Options options) : impl_(std::make_unique<Impl>(std::move(options))) {
    Impl& d = *impl_;
    if (d.opt.path.empty()) throw LedgerError("ledger.path is empty");
    std::string error;
    if (!d.open_file(error)) throw LedgerError("cannot open " + d.opt.path + " for appending: " + error);
    d.writer = std::thread([&d] { d.run(); });
}

Ledger::~Ledger() { close(); }

void Ledger::append(const metrics::Record& rec, const metrics::Pricing& pricing) {
    Impl& d = *impl_;
    if (d.closed.load(std::memory_order_relaxed)) {
        std::uint64_t held = 0;
        if (d.closed_log.allow(held))
            spdlog::error("ledger: a record (request {}) arrived after the ledger was closed and is not written{}",
                          rec.request_id, since_note(held));
        return;
    }
    Buffer& b = d.local_buffer();
    std::unique_lock lk(b.mu);
    const std::size_t lim = d.limit();
    if (!b.data.empty() && b.data.size() >= lim) d.wait_for_room(b, lk);
    format_line(b.data, rec, pricing);
    ++b.records;
    if (!b.wake_sent && b.data.size() >= Impl::threshold(lim)) {
        b.wake_sent = true;
        lk.unlock();
        d.wake_writer();
    }
}

bool Ledger::flush(std::chrono::milliseconds timeout) {
    Impl& d = *impl_;
    std::unique_lock lk(d.mu);
    if (d.stop) {
        const std::lock_guard cl(d.count_mu);
        return !d.lost && d.pending_bytes == 0;
    }
    const std::uint64_t gen = ++d.requested;
    d.wake = true;
    d.cv.notify_one();
    return d.done_cv.wait_for(lk, timeout, [&] { return d.done >= gen; });
}

bool Ledger::close(std::chrono::milliseconds give_up_after) {
    Impl& d = *impl_;
    if (!d.writer.joinable()) return !d.lost;
    {
        const std::lock_guard lk(d.mu);
        d.stop = true;
        d.give_up_at = Clock::now() + give_up_after;
    }
    d.cv.notify_one();
    d.writer.join();
    d.closed.store(true, std::memory_order_relaxed);
    if (d.lost) {
        std::uint64_t lines = count_lines(std::string_view(d.pending).substr(d.pending_off));
        std::uint64_t bytes = d.pending.size() - d.pending_off;
        const std::lock_guard rl(d.reg_mu);
        for (const auto& b : d.buffers) {
            const std::lock_guard bl(b->mu);
            lines += count_lines(b->data);
            bytes += b->data.size();
        }
        spdlog::critical("ledger: gave up writing to {} after {} ms of failures: {} records ({} bytes) are not in "
                         "the ledger",
                         d.opt.path, give_up_after.count(), lines, bytes);
    }
    if (d.fd >= 0) {
        if (d.opt.fsync) ::fdatasync(d.fd);
        ::close(d.fd);
        d.fd = -1;
    }
    return !d.lost;
}

Stats Ledger::stats() const {
    Impl& d = *impl_;
    Stats s;
    {
        // take() moves buffers into pending under reg_mu: reading the writer's
        // counts under it too means no record is missed between the two, and
        // count_mu keeps written and still held in step: in one snapshot,
        // buffered_bytes + bytes_written is every byte of the `records` lines
        // (plus a '\n' after a torn last line found at start).
        const std::lock_guard rl(d.reg_mu);
        for (const auto& b : d.buffers) {
            const std::lock_guard bl(b->mu);
            s.records += b->records;
            s.buffered_bytes += b->data.size();
            if (b->waiting) ++s.waiting_threads;
        }
        const std::lock_guard cl(d.count_mu);
        s.buffered_bytes += d.pending_bytes;
        s.bytes_written = d.bytes_written;
    }
    s.flushes = d.flushes.load();
    s.write_errors = d.write_errors.load();
    s.rotations = d.rotations.load();
    // Read after the buffers: a thread counts its wait before it is seen
    // waiting, so a snapshot never shows a waiting thread and zero waits.
    s.backpressure_waits = d.waits.load();
    return s;
}

const Options& Ledger::options() const { return impl_->opt; }

} // namespace relaymeter::ledger
