// proxy::field_id against Beast's http::string_to_field: the fast head
// parsers classify field names with it, and the exchange's choices (which
// fields are hop-by-hop, which ones relaymeter sets itself) rely on the ids
// being Beast's, for every name Beast's own parser could have been given.
#include <catch2/catch.hpp>

#include <cctype>
#include <random>
#include <string>
#include <vector>

#include "relaymeter/proxy/field.hpp"

using namespace relaymeter;
namespace http = boost::beast::http;

namespace {

std::vector<std::string> beast_names() {
    std::vector<std::string> names;
    for (unsigned i = 1;; ++i) {
        const auto f = static_cast<http::field>(i);
        names.emplace_back(http::to_string(f));
        if (f == http::field::xref) break;
    }
    return names;
}

} // namespace

TEST_CASE("field_id: every name Beast knows, in any case, gets Beast's id", "[field]") {
    const auto names = beast_names();
    REQUIRE(names.size() == 352);
    std::mt19937 rng(7);
    for (std::size_t i = 0; i < names.size(); ++i) {
        const auto id = static_cast<http::field>(i + 1);
        std::string lower = names[i], upper = names[i], mixed = names[i];
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        for (char& c : mixed) {
            if (rng() % 2) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        }
        for (const std::string& s : {names[i], lower, upper, mixed}) {
            INFO(s);
            CHECK(proxy::field_id(s) == id);
        }
        // A view into a longer buffer reads only its own bytes.
        const std::string longer = names[i] + "x-tail";
        CHECK(proxy::field_id(std::string_view(longer).substr(0, names[i].size())) == id);
    }
    CHECK(proxy::field_id("") == http::field::unknown);
    CHECK(proxy::field_id("x-request-id") == http::field::unknown);
    CHECK(proxy::field_id("X-Stainless-Runtime-Version") == http::field::unknown);
    CHECK(proxy::field_id("proxy-connection") == http::field::proxy_connection);
    CHECK(proxy::field_id("Content-Lengt") == http::field::unknown);
    CHECK(proxy::field_id("Content-Lengths") == http::field::unknown);
}

TEST_CASE("field_id: names near Beast's and random names agree with string_to_field", "[field]") {
    const auto names = beast_names();
    std::mt19937 rng(20261205);
    const auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
    const std::string tchar = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    std::size_t known = 0, total = 0;
    for (int round = 0; round < 300000; ++round) {
        std::string s;
        switch (round % 4) {
        case 0: { // a known name, one byte changed: any byte, or its 0x20 bit flipped
            s = names[pick(names.size())];
            const std::size_t at = pick(s.size());
            s[at] = rng() % 2 ? static_cast<char>(s[at] ^ 0x20) : static_cast<char>(rng() % 256);
            break;
        }
        case 1: { // a known name with a byte inserted or removed, or cut short
            s = names[pick(names.size())];
            const std::size_t at = pick(s.size() + 1);
            if (rng() % 3 == 0) s.insert(at, 1, tchar[pick(tchar.size())]);
            else if (rng() % 2 && at < s.size()) s.erase(at, 1);
            else s.resize(at);
            break;
        }
        case 2: { // random tchar names of every length up to 45
            s.resize(pick(46));
            for (char& c : s) c = tchar[pick(tchar.size())];
            break;
        }
        default: { // a known name in random case with random bytes appended
            s = names[pick(names.size())];
            for (char& c : s) {
                if (rng() % 2) c = static_cast<char>(c ^ (std::isalpha(static_cast<unsigned char>(c)) ? 0x20 : 0));
            }
            for (std::size_t n = pick(3); n > 0; --n) s.push_back(static_cast<char>(rng() % 256));
            break;
        }
        }
        const http::field want = http::string_to_field(s);
        const http::field got = proxy::field_id(s);
        if (got != want) {
            INFO("name (" << s.size() << " bytes): " << s);
            CHECK(got == want);
        }
        known += want != http::field::unknown ? 1 : 0;
        ++total;
    }
    // The mutations reach both outcomes often.
    CHECK(known > total / 10);
    CHECK(known < total * 9 / 10);
}
