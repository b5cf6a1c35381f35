// Reading the ledger back at start: PATH.N … PATH.1, then PATH, line by line.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>

#include <fcntl.h>
#include <unistd.h>

#include "ledger/internal.hpp"
#include "relaymeter/ledger/ledger.hpp"

namespace relaymeter::ledger {

namespace fs = std::filesystem;

namespace {

// "N" of a rotated file name "BASE.N" (N >= 1, digits only), or 0.
std::uint64_t rotation_index(std::string_view name, std::string_view base) {
    if (name.size() <= base.size() + 1 || name.compare(0, base.size(), base) != 0 || name[base.size()] != '.') return 0;
    const std::string_view digits = name.substr(base.size() + 1);
    if (digits.size() > 9 || digits[0] == '0') return 0;
    std::uint64_t n = 0;
    for (const char c : digits) {
        if (c < '0' || c > '9') return 0;
        n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    return n;
}

struct FileCloser {
    int fd;
    ~FileCloser() {
        if (fd >= 0) ::close(fd);
    }
};

} // namespace

std::vector<std::uint64_t> rotated_indices(const std::string& path) {
    const fs::path p(path);
    const std::string base = p.filename().string();
    fs::path dir = p.parent_path();
    if (dir.empty()) dir = ".";
    std::vector<std::uint64_t> out;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        const std::uint64_t n = rotation_index(it->path().filename().string(), base);
        if (n != 0) out.push_back(n);
    }
    std::sort(out.begin(), out.end());
    return out;
}

std::vector<std::string> files_oldest_first(const std::string& path) {
    std::vector<std::string> out;
    const auto indices = rotated_indices(path);
    for (auto it = indices.rbegin(); it != indices.rend(); ++it) out.push_back(path + "." + std::to_string(*it));
    std::error_code ec;
    if (fs::exists(path, ec)) out.push_back(path);
    return out;
}

ReplayStats replay(const std::string& path, const std::function<void(const metrics::Record&)>& each) {
    const auto t0 = std::chrono::steady_clock::now();
    ReplayStats st;
    Entry entry;
    std::string why;
    const auto warn = [&](const std::string& file, std::uint64_t line, const std::string& what) {
        if (st.warnings.size() < ReplayStats::kMaxWarnings)
            st.warnings.push_back(file + ":" + std::to_string(line) + ": " + what);
    };
    constexpr std::size_t kChunk = 4u << 20;
    constexpr std::size_t kMaxLine = 1u << 20; // longer: garbage, skipped without holding it in memory
    // The incomplete tail (at most kMaxLine) is moved to the front, a chunk read behind it.
    const auto buf = std::make_unique<char[]>(kChunk + kMaxLine + 1);
    for (const std::string& file : files_oldest_first(path)) {
        const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT) continue; // rotated away meanwhile
            throw LedgerError("cannot read " + file + ": " + std::strerror(errno));
        }
        const FileCloser closer{fd};
        ++st.files;
        std::uint64_t line_no = 0;
        std::size_t len = 0;     // bytes in buf
        std::size_t start = 0;   // first byte of the current (incomplete) line in buf
        bool oversized = false;  // inside a line longer than kMaxLine, skipping to its end
        for (;;) {
            // Keep the incomplete tail, read more behind it.
            if (start > 0) {
                std::memmove(buf.get(), buf.get() + start, len - start);
                len -= start;
                start = 0;
            }
            ssize_t n;
            do {
                n = ::read(fd, buf.get() + len, kChunk);
            } while (n < 0 && errno == EINTR);
            if (n < 0) throw LedgerError("cannot read " + file + ": " + std::strerror(errno));
            len += static_cast<std::size_t>(n);
            st.bytes += static_cast<std::uint64_t>(n);
            if (n == 0) break;
            const char* data = buf.get();
            for (;;) {
                const void* nl = std::memchr(data + start, '\n', len - start);
                if (nl == nullptr) break;
                const std::size_t end = static_cast<std::size_t>(static_cast<const char*>(nl) - data);
                ++line_no;
                std::string_view line(data + start, end - start);
                start = end + 1;
                if (oversized) {
                    oversized = false;
                    ++st.bad_lines;
                    warn(file, line_no, "corrupt line skipped (longer than 1 MiB)");
                    continue;
                }
                if (line.empty()) continue; // the writer's separator after a torn line, or a blank line
                if (parse_line(line, entry, &why)) {
                    ++st.records;
                    each(entry.record);
                } else {
                    ++st.bad_lines;
                    warn(file, line_no, "corrupt line skipped (" + why + ")");
                }
            }
            if (len - start > kMaxLine) {
                oversized = true;
                start = len;
            }
        }
        if (start < len || oversized) {
            // No '\n' at the end: a line cut short by a crash mid-write.
            ++line_no;
            ++st.bad_lines;
            ++st.torn_lines;
            warn(file, line_no, "torn last line skipped (no newline at the end: the write was cut short)");
        }
    }
    st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return st;
}

} // namespace relaymeter::ledger
