// The ledger's line format: hand-formatted on the way out (no DOM per
// request), read back by a small parser of flat JSON objects.
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>

#include "relaymeter/ledger/ledger.hpp"

namespace relaymeter::ledger {

namespace {

using std::chrono::system_clock;

// Howard Hinnant's civil-from-days / days-from-civil (proleptic Gregorian).
struct Civil {
    std::int64_t y;
    unsigned m, d;
};

Civil civil_from_days(std::int64_t z) {
    z += 719468;
    const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const auto doe = static_cast<unsigned>(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    const unsigned d = doy - (153 * mp + 2) / 5 + 1;
    const unsigned m = mp < 10 ? mp + 3 : mp - 9;
    return {static_cast<std::int64_t>(yoe) + era * 400 + (m <= 2 ? 1 : 0), m, d};
}

std::int64_t days_from_civil(std::int64_t y, unsigned m, unsigned d) {
    y -= m <= 2 ? 1 : 0;
    const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
    const auto yoe = static_cast<unsigned>(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + static_cast<std::int64_t>(doe) - 719468;
}

std::int64_t floor_div(std::int64_t a, std::int64_t b) {
    std::int64_t q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
    return q;
}

void put_digits(char* p, unsigned v, int n) {
    for (int i = n - 1; i >= 0; --i) {
        p[i] = static_cast<char>('0' + v % 10);
        v /= 10;
    }
}

// Writes into memory known to be large enough (see line_bound): no
// capacity check per piece.
struct Raw {
    char* p;
    void put(char c) { *p++ = c; }
    void put(std::string_view s) {
        if (s.empty()) return; // memcpy from a null data() is undefined even for 0 bytes
        std::memcpy(p, s.data(), s.size());
        p += s.size();
    }
    template <std::size_t N>
    void lit(const char (&s)[N]) {
        std::memcpy(p, s, N - 1);
        p += N - 1;
    }
    void put_uint(std::uint64_t v) { p = std::to_chars(p, p + 20, v).ptr; }
    void put_int(std::int64_t v) { p = std::to_chars(p, p + 21, v).ptr; }
    // Shortest text that reads back as the same double; non-finite values
    // (never produced by the engine) are written as 0 to keep the line valid JSON.
    void put_double(double v) {
        if (!std::isfinite(v)) v = 0;
        p = std::to_chars(p, p + 32, v).ptr;
    }
    // A JSON string: '"', '\\' and control characters escaped; other bytes as they are.
    void put_string(std::string_view s);
    void put_time(system_clock::time_point tp);
};

// Most bytes format_line writes for these strings (each byte escapes to at
// most 6; numbers and keys take less than 400).
std::size_t line_bound(const metrics::Record& rec) {
    return 512 + 6 * (rec.request_id.size() + rec.model.size() + rec.key.size());
}

void Raw::put_string(std::string_view s) {
    put('"');
    std::size_t start = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
        const auto c = static_cast<unsigned char>(s[i]);
        if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
        put(s.substr(start, i - start));
        start = i + 1;
        switch (c) {
        case '"': lit("\\\""); break;
        case '\\': lit("\\\\"); break;
        case '\n': lit("\\n"); break;
        case '\r': lit("\\r"); break;
        case '\t': lit("\\t"); break;
        default: {
            static constexpr char hex[] = "0123456789abcdef";
            const char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            put(std::string_view(esc, 6));
        }
        }
    }
    put(s.substr(start));
    put('"');
}

void Raw::put_time(system_clock::time_point tp) {
    // "YYYY-MM-DDTHH:MM:SS" is the same for every record of a second: kept per thread.
    thread_local std::int64_t cached_second = std::numeric_limits<std::int64_t>::min();
    thread_local char cached[19];
    const std::int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(tp.time_since_epoch()).count();
    const std::int64_t second = floor_div(ms, 1000);
    if (second != cached_second) {
        const std::int64_t days = floor_div(second, 86400);
        std::int64_t rest = second - days * 86400;
        const Civil c = civil_from_days(days);
        char buf[19] = {'0', '0', '0', '0', '-', '0', '0', '-', '0', '0', 'T', '0', '0', ':', '0', '0', ':', '0', '0'};
        const std::int64_t year = c.y < 0 ? 0 : (c.y > 9999 ? 9999 : c.y);
        put_digits(buf, static_cast<unsigned>(year), 4);
        put_digits(buf + 5, c.m, 2);
        put_digits(buf + 8, c.d, 2);
        put_digits(buf + 11, static_cast<unsigned>(rest / 3600), 2);
        rest %= 3600;
        put_digits(buf + 14, static_cast<unsigned>(rest / 60), 2);
        put_digits(buf + 17, static_cast<unsigned>(rest % 60), 2);
        std::memcpy(cached, buf, sizeof buf);
        cached_second = second;
    }
    std::memcpy(p, cached, sizeof cached);
    p += sizeof cached;
    p[0] = '.';
    put_digits(p + 1, static_cast<unsigned>(ms - second * 1000), 3);
    p[4] = 'Z';
    p += 5;
}

void write_line(Raw& w, const metrics::Record& rec, const metrics::Pricing& pricing) {
    w.lit("{\"finished_at\":\"");
    w.put_time(rec.finished_at == system_clock::time_point{} ? system_clock::now() : rec.finished_at);
    w.lit("\",\"request_id\":");
    w.put_string(rec.request_id);
    w.lit(",\"model\":");
    w.put_string(rec.model);
    if (!rec.key.empty()) {
        w.lit(",\"key\":");
        w.put_string(rec.key);
    }
    w.lit(",\"status\":");
    w.put_int(rec.status);
    w.lit(",\"latency_s\":");
    w.put_double(rec.latency_s);
    if (rec.ttft_s >= 0) {
        w.lit(",\"ttft_s\":");
        w.put_double(rec.ttft_s);
    }
    if (rec.streamed) w.lit(",\"streamed\":true");
    else w.lit(",\"streamed\":false");
    w.lit(",\"input_tokens\":");
    w.put_uint(rec.usage.input);
    w.lit(",\"output_tokens\":");
    w.put_uint(rec.usage.output);
    w.lit(",\"cached_input_tokens\":");
    w.put_uint(rec.usage.cached_input);
    w.lit(",\"reasoning_tokens\":");
    w.put_uint(rec.usage.reasoning);
    w.lit(",\"cost_usd\":");
    w.put_double(pricing.cost_usd);
    if (pricing.unpriced) w.lit(",\"unpriced\":true}\n");
    else w.lit(",\"unpriced\":false}\n");
}

// ---- reading -----------------------------------------------------------------

struct Cursor {
    const char* p;
    const char* end;

    void ws() {
        while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) ++p;
    }
    bool eat(char c) {
        ws();
        if (p < end && *p == c) {
            ++p;
            return true;
        }
        return false;
    }
};

void put_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xc0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xe0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    } else {
        out += static_cast<char>(0xf0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
        out += static_cast<char>(0x80 | (cp & 0x3f));
    }
}

bool hex4(const char* p, std::uint32_t& v) {
    v = 0;
    for (int i = 0; i < 4; ++i) {
        const char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= static_cast<std::uint32_t>(c - '0');
        else if (c >= 'a' && c <= 'f') v |= static_cast<std::uint32_t>(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= static_cast<std::uint32_t>(c - 'A' + 10);
        else return false;
    }
    return true;
}

// After the opening quote. `raw` views the bytes when there was no escape
// (then `out` is untouched); else `out` holds the decoded string.
bool read_string(Cursor& c, std::string_view& raw, std::string& out, bool& escaped) {
    const char* start = c.p;
    escaped = false;
    // Fast path: no escapes.
    while (c.p < c.end) {
        const char ch = *c.p;
        if (ch == '"') {
            raw = std::string_view(start, static_cast<std::size_t>(c.p - start));
            ++c.p;
            return true;
        }
        if (ch == '\\') break;
        if (static_cast<unsigned char>(ch) < 0x20) return false;
        ++c.p;
    }
    if (c.p >= c.end) return false;
    escaped = true;
    out.assign(start, static_cast<std::size_t>(c.p - start));
    while (c.p < c.end) {
        const char ch = *c.p++;
        if (ch == '"') return true;
        if (static_cast<unsigned char>(ch) < 0x20) return false;
        if (ch != '\\') {
            out += ch;
            continue;
        }
        if (c.p >= c.end) return false;
        const char e = *c.p++;
        switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
            std::uint32_t cp = 0;
            if (c.end - c.p < 4 || !hex4(c.p, cp)) return false;
            c.p += 4;
            if (cp >= 0xd800 && cp < 0xdc00) {
                std::uint32_t lo = 0;
                if (c.end - c.p < 6 || c.p[0] != '\\' || c.p[1] != 'u' || !hex4(c.p + 2, lo) || lo < 0xdc00 || lo >= 0xe000)
                    return false;
                c.p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return false;
            }
            put_utf8(out, cp);
            break;
        }
        default: return false;
        }
    }
    return false;
}

enum class Kind { string, number, boolean, null };

struct Value {
    Kind kind = Kind::null;
    std::string_view text; // string (decoded) or number text
    bool flag = false;
};

bool read_value(Cursor& c, Value& v, std::string& scratch) {
    c.ws();
    if (c.p >= c.end) return false;
    const char ch = *c.p;
    if (ch == '"') {
        ++c.p;
        std::string_view raw;
        bool escaped = false;
        if (!read_string(c, raw, scratch, escaped)) return false;
        v.kind = Kind::string;
        v.text = escaped ? std::string_view(scratch) : raw;
        return true;
    }
    if (ch == '-' || (ch >= '0' && ch <= '9')) {
        const char* start = c.p;
        while (c.p < c.end && ((*c.p >= '0' && *c.p <= '9') || *c.p == '-' || *c.p == '+' || *c.p == '.' ||
                               *c.p == 'e' || *c.p == 'E'))
            ++c.p;
        v.kind = Kind::number;
        v.text = std::string_view(start, static_cast<std::size_t>(c.p - start));
        return true;
    }
    const auto word = [&](std::string_view w) {
        if (static_cast<std::size_t>(c.end - c.p) < w.size() || std::memcmp(c.p, w.data(), w.size()) != 0) return false;
        c.p += w.size();
        return true;
    };
    if (word("true")) {
        v.kind = Kind::boolean;
        v.flag = true;
        return true;
    }
    if (word("false")) {
        v.kind = Kind::boolean;
        v.flag = false;
        return true;
    }
    if (word("null")) {
        v.kind = Kind::null;
        return true;
    }
    return false; // nested objects and arrays are not part of the format
}

bool to_uint(std::string_view s, std::uint64_t& out) {
    if (s.empty() || s[0] == '-' || s[0] == '+') return false;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc() && r.ptr == s.data() + s.size();
}

bool to_double(std::string_view s, double& out) {
    const auto r = std::from_chars(s.data(), s.data() + s.size(), out);
    return r.ec == std::errc() && r.ptr == s.data() + s.size() && std::isfinite(out);
}

bool fail(std::string* why, const char* what) {
    if (why != nullptr) *why = what;
    return false;
}

bool fail(std::string* why, std::string_view key, const char* what) {
    if (why != nullptr) {
        why->assign(key);
        *why += ": ";
        *why += what;
    }
    return false;
}

} // namespace

void format_time(std::string& out, system_clock::time_point tp) {
    char buf[24];
    Raw w{buf};
    w.put_time(tp);
    out.append(buf, sizeof buf);
}

bool parse_time(std::string_view s, system_clock::time_point& out) {
    // YYYY-MM-DDTHH:MM:SS[.f+]Z
    if (s.size() < 20) return false;
    const auto num = [&](std::size_t pos, std::size_t n, unsigned& v) {
        v = 0;
        for (std::size_t i = pos; i < pos + n; ++i) {
            if (s[i] < '0' || s[i] > '9') return false;
            v = v * 10 + static_cast<unsigned>(s[i] - '0');
        }
        return true;
    };
    unsigned y = 0, mo = 0, d = 0, h = 0, mi = 0, se = 0;
    if (!num(0, 4, y) || s[4] != '-' || !num(5, 2, mo) || s[7] != '-' || !num(8, 2, d) ||
        (s[10] != 'T' && s[10] != 't') || !num(11, 2, h) || s[13] != ':' || !num(14, 2, mi) || s[16] != ':' ||
        !num(17, 2, se))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || se > 60) return false;
    std::size_t i = 19;
    unsigned ms = 0;
    if (s[i] == '.') {
        ++i;
        const std::size_t start = i;
        while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
            if (i - start < 3) ms = ms * 10 + static_cast<unsigned>(s[i] - '0');
            ++i;
        }
        if (i == start) return false;
        for (std::size_t k = i - start; k < 3; ++k) ms *= 10;
    }
    if (i + 1 != s.size() || (s[i] != 'Z' && s[i] != 'z')) return false;
    const std::int64_t days = days_from_civil(y, mo, d);
    const std::int64_t total_ms = ((days * 24 + h) * 60 + mi) * 60000 + static_cast<std::int64_t>(se) * 1000 + ms;
    out = system_clock::time_point(std::chrono::duration_cast<system_clock::duration>(std::chrono::milliseconds(total_ms)));
    return true;
}

void format_line(std::string& out, const metrics::Record& rec, const metrics::Pricing& pricing) {
    // Into a stack buffer, then one append; long names (rare) through the heap.
    const std::size_t bound = line_bound(rec);
    char small[2048];
    std::unique_ptr<char[]> big;
    char* const buf = bound <= sizeof small ? small : (big = std::make_unique<char[]>(bound)).get();
    Raw w{buf};
    write_line(w, rec, pricing);
    out.append(buf, static_cast<std::size_t>(w.p - buf));
}

bool parse_line(std::string_view line, Entry& e, std::string* why) {
    metrics::Record& r = e.record;
    r.model.clear();
    r.key.clear();
    r.request_id = {};
    r.status = 0;
    r.latency_s = 0;
    r.ttft_s = -1;
    r.streamed = false;
    r.usage = {};
    r.finished_at = {};
    r.prices.reset();
    e.request_id.clear();
    metrics::Pricing pricing;
    bool has_time = false, has_model = false, has_status = false;

    Cursor c{line.data(), line.data() + line.size()};
    if (!c.eat('{')) return fail(why, "not a JSON object");
    std::string key_scratch;
    std::string value_scratch;
    Value v;
    if (!c.eat('}')) {
        for (;;) {
            if (!c.eat('"')) return fail(why, "expected a key");
            std::string_view key;
            bool escaped = false;
            if (!read_string(c, key, key_scratch, escaped)) return fail(why, "malformed key");
            if (escaped) key = key_scratch;
            if (!c.eat(':')) return fail(why, key, "expected ':'");
            if (!read_value(c, v, value_scratch)) return fail(why, key, "malformed value");

            const auto want = [&](Kind k) { return v.kind == k; };
            const auto count = [&](std::uint64_t& dest) {
                if (!want(Kind::number) || !to_uint(v.text, dest)) return fail(why, key, "expected a count");
                return true;
            };
            const auto seconds = [&](double& dest) {
                if (!want(Kind::number) || !to_double(v.text, dest)) return fail(why, key, "expected a number");
                return true;
            };
            const auto flag = [&](bool& dest) {
                if (!want(Kind::boolean)) return fail(why, key, "expected true or false");
                dest = v.flag;
                return true;
            };
            if (key == "finished_at") {
                if (!want(Kind::string) || !parse_time(v.text, r.finished_at))
                    return fail(why, key, "expected an RFC 3339 UTC time");
                has_time = true;
            } else if (key == "request_id") {
                if (want(Kind::string)) e.request_id.assign(v.text);
                else if (!want(Kind::null)) return fail(why, key, "expected a string");
            } else if (key == "model") {
                if (!want(Kind::string)) return fail(why, key, "expected a string");
                r.model.assign(v.text);
                has_model = true;
            } else if (key == "key") {
                if (want(Kind::string)) r.key.assign(v.text);
                else if (!want(Kind::null)) return fail(why, key, "expected a string");
            } else if (key == "status") {
                std::uint64_t s = 0;
                if (!want(Kind::number) || !to_uint(v.text, s) || s > 999) return fail(why, key, "expected an HTTP status");
                r.status = static_cast<int>(s);
                has_status = true;
            } else if (key == "latency_s") {
                if (!seconds(r.latency_s)) return false;
                if (r.latency_s < 0) return fail(why, key, "must not be negative");
            } else if (key == "ttft_s") {
                if (!seconds(r.ttft_s)) return false;
            } else if (key == "streamed") {
                if (!flag(r.streamed)) return false;
            } else if (key == "input_tokens") {
                if (!count(r.usage.input)) return false;
            } else if (key == "output_tokens") {
                if (!count(r.usage.output)) return false;
            } else if (key == "cached_input_tokens") {
                if (!count(r.usage.cached_input)) return false;
            } else if (key == "reasoning_tokens") {
                if (!count(r.usage.reasoning)) return false;
            } else if (key == "cost_usd") {
                if (!seconds(pricing.cost_usd)) return false;
                if (pricing.cost_usd < 0) return fail(why, key, "must not be negative");
            } else if (key == "unpriced") {
                if (!flag(pricing.unpriced)) return false;
            } // other keys: written by a later version, ignored

            if (c.eat(',')) continue;
            if (c.eat('}')) break;
            return fail(why, key, "expected ',' or '}' after the value");
        }
    }
    c.ws();
    if (c.p != c.end) return fail(why, "text after the object");
    if (!has_time) return fail(why, "finished_at: missing");
    if (!has_model) return fail(why, "model: missing");
    if (!has_status) return fail(why, "status: missing");
    if (r.model.empty()) r.model = "none";
    r.usage.present = r.usage.input != 0 || r.usage.output != 0 || r.usage.cached_input != 0 || r.usage.reasoning != 0;
    r.pricing = pricing;
    r.request_id = e.request_id;
    return true;
}

} // namespace relaymeter::ledger
