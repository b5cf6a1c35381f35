#include "relaymeter/proxy/field.hpp"

#include <array>
#include <cstring>

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/rfc7230.hpp>

namespace relaymeter::proxy {

namespace http = boost::beast::http;

namespace {

// A name's key: its length and, with every byte's 0x20 bit set, the bytes
// that pin it down with the length (all of them up to 16 bytes; the first
// and last 8 of a longer name, whose middle is compared separately). Setting
// the 0x20 bit is how Beast compares names (field_table::equals masks it
// out), so names that Beast takes for the same field get the same key.
struct Key {
    std::uint64_t a = 0, b = 0;
};

constexpr std::uint64_t kLower8 = 0x2020202020202020ull;

inline std::uint64_t load8(const char* p) {
    std::uint64_t v;
    std::memcpy(&v, p, 8);
    return v | kLower8;
}
inline std::uint32_t load4(const char* p) {
    std::uint32_t v;
    std::memcpy(&v, p, 4);
    return v | 0x20202020u;
}
inline std::uint64_t byte(const char* p) { return static_cast<unsigned char>(*p) | 0x20u; }

inline Key key_of(const char* p, std::size_t n) {
    if (n >= 8) return {load8(p), load8(p + n - 8)};
    if (n >= 4) return {load4(p) | (std::uint64_t{load4(p + n - 4)} << 32), 0};
    if (n >= 1) return {byte(p) | byte(p + n / 2) << 8 | byte(p + n - 1) << 16, 0};
    return {};
}

constexpr unsigned kSlotBits = 11; // 2,048 slots for Beast's 352 names

inline unsigned slot_of(const Key& k, std::size_t n) {
    const std::uint64_t h =
        k.a * 0x9E3779B97F4A7C15ull ^ k.b * 0xC2B2AE3D27D4EB4Full ^ (n + 1) * 0x165667B19E3779F9ull;
    return static_cast<unsigned>(h >> (64 - kSlotBits));
}

struct Table {
    struct Entry {
        Key key;
        const char* name = nullptr; // Beast's spelling, for the middle of a name longer than 16
        std::uint16_t len = 0;
        std::uint16_t id = 0;
    };
    std::array<std::uint16_t, 1u << kSlotBits> slot{}; // index into entries + 1; 0: empty
    std::array<Entry, 400> entries{};

    Table() {
        std::size_t used = 0;
        for (unsigned i = 1;; ++i) {
            const auto f = static_cast<http::field>(i);
            const std::string_view name = http::to_string(f);
            if (used == entries.size()) break; // (352 names in Boost 1.74)
            Entry& e = entries[used];
            e.key = key_of(name.data(), name.size());
            e.name = name.data();
            e.len = static_cast<std::uint16_t>(name.size());
            e.id = static_cast<std::uint16_t>(i);
            unsigned s = slot_of(e.key, name.size());
            while (slot[s] != 0) s = (s + 1) & ((1u << kSlotBits) - 1);
            slot[s] = static_cast<std::uint16_t>(++used);
            if (f == http::field::xref) break; // Beast's last name: past it to_string asserts
        }
    }

    http::field find(std::string_view name) const {
        const std::size_t n = name.size();
        if (n == 0 || n > 0xffff) return http::field::unknown;
        const char* p = name.data();
        const Key k = key_of(p, n);
        for (unsigned s = slot_of(k, n);; s = (s + 1) & ((1u << kSlotBits) - 1)) {
            const unsigned i = slot[s];
            if (i == 0) return http::field::unknown;
            const Entry& e = entries[i - 1];
            if (e.len != n || e.key.a != k.a || e.key.b != k.b) continue;
            bool same = true;
            for (std::size_t j = 8; same && j + 8 < n; j += 8) same = load8(p + j) == load8(e.name + j);
            if (same) return static_cast<http::field>(e.id);
        }
    }
};

} // namespace

http::field field_id(std::string_view name) {
    static const Table table;
    return table.find(name);
}

void TransferCodings::add(std::string_view value) {
    ++fields_;
    for (auto const& coding : http::token_list{value}) {
        ++codings_;
        other_ |= !boost::beast::iequals(coding, "chunked");
    }
}

} // namespace relaymeter::proxy
