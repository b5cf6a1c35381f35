// process_* metrics in the Prometheus client conventions, read from /proc/self.
#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "relaymeter/metrics/exposition.hpp"
#include "text_format.hpp"

namespace relaymeter::metrics {

namespace {

std::optional<std::string> read_small_file(const char* path) {
    std::FILE* f = std::fopen(path, "re");
    if (f == nullptr) return std::nullopt;
    std::string data;
    char buf[4096];
    std::size_t n = 0;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) data.append(buf, n);
    std::fclose(f);
    return data;
}

struct ProcStat {
    double cpu_seconds = 0;
    double start_time_seconds = 0;
    double virtual_bytes = 0;
    double resident_bytes = 0;
};

// Boot time (unix seconds) from /proc/stat's "btime" line.
std::optional<double> boot_time() {
    const auto stat = read_small_file("/proc/stat");
    if (!stat) return std::nullopt;
    const auto pos = stat->find("\nbtime ");
    if (pos == std::string::npos) return std::nullopt;
    return std::strtod(stat->c_str() + pos + 7, nullptr);
}

std::optional<ProcStat> read_proc_stat() {
    const auto stat = read_small_file("/proc/self/stat");
    if (!stat) return std::nullopt;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    const auto close = stat->rfind(')');
    if (close == std::string::npos) return std::nullopt;
    std::vector<std::string_view> fields; // fields[0] is field 3 (state) of proc(5)
    std::string_view rest(*stat);
    rest.remove_prefix(close + 1);
    while (!rest.empty()) {
        const auto start = rest.find_first_not_of(" \n");
        if (start == std::string_view::npos) break;
        rest.remove_prefix(start);
        const auto end = rest.find_first_of(" \n");
        fields.push_back(rest.substr(0, end));
        if (end == std::string_view::npos) break;
        rest.remove_prefix(end);
    }
    auto field = [&](std::size_t number) -> double { // proc(5) numbering, from 1
        const std::string value(fields[number - 3]);
        return std::strtod(value.c_str(), nullptr);
    };
    if (fields.size() < 24 - 2) return std::nullopt;

    const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
    const double page = static_cast<double>(sysconf(_SC_PAGESIZE));
    ProcStat ps;
    ps.cpu_seconds = (field(14) + field(15)) / ticks; // utime + stime
    ps.virtual_bytes = field(23);
    ps.resident_bytes = field(24) * page;
    if (const auto bt = boot_time()) ps.start_time_seconds = *bt + field(22) / ticks;
    return ps;
}

std::optional<std::uint64_t> open_fds() {
    DIR* dir = opendir("/proc/self/fd");
    if (dir == nullptr) return std::nullopt;
    std::uint64_t n = 0;
    while (const dirent* e = readdir(dir)) {
        if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) ++n;
    }
    closedir(dir);
    return n > 0 ? n - 1 : 0; // not counting the descriptor of the listing itself
}

} // namespace

std::string render_process_metrics(const ExpositionOptions& opts, std::chrono::system_clock::time_point started_at) {
    using text::append_family;
    using text::append_sample;
    const std::string cl = text::const_label_block(opts);
    std::string out;
    out.reserve(1024 + 8 * cl.size());

    const auto ps = read_proc_stat();
    if (ps) {
        append_family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.");
        append_sample(out, "process_cpu_seconds_total", cl, {}, ps->cpu_seconds);
        append_family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
        append_sample(out, "process_resident_memory_bytes", cl, {}, ps->resident_bytes);
        append_family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
        append_sample(out, "process_virtual_memory_bytes", cl, {}, ps->virtual_bytes);
    }

    double start = ps ? ps->start_time_seconds : 0;
    if (start <= 0) start = std::chrono::duration<double>(started_at.time_since_epoch()).count();
    append_family(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.");
    append_sample(out, "process_start_time_seconds", cl, {}, start);

    if (const auto fds = open_fds()) {
        append_family(out, "process_open_fds", "gauge", "Number of open file descriptors.");
        append_sample(out, "process_open_fds", cl, {}, *fds);
    }
    rlimit lim{};
    if (getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY) {
        append_family(out, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
        append_sample(out, "process_max_fds", cl, {}, static_cast<std::uint64_t>(lim.rlim_cur));
    }
    return out;
}

} // namespace relaymeter::metrics
