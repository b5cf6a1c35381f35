// Unit tests of StreamMeter: SSE parsing, usage metering and the stripping of
// the usage-only chunk, with the stream split at every byte position.
#include <catch2/catch.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "unit/fixtures.hpp"
#include "relaymeter/usage/usage.hpp"

using relaymeter::usage::StreamMeter;
using relaymeter::usage::Usage;

using relaymeter::testfixtures::make_usage;

namespace {

struct Run {
    std::string out;
    Usage usage;
    bool done = false;
    bool content = false;
    std::uint64_t events = 0;
};

// Feeds `input` cut at `cuts` (sorted offsets), then finishes.
Run run(std::string_view input, bool strip, const std::vector<std::size_t>& cuts) {
    StreamMeter m(strip);
    Run r;
    std::size_t from = 0;
    for (std::size_t cut : cuts) {
        m.feed(input.substr(from, cut - from), r.out);
        from = cut;
    }
    m.feed(input.substr(from), r.out);
    m.finish(r.out);
    r.usage = m.usage();
    r.done = m.saw_done();
    r.content = m.saw_content();
    r.events = m.events();
    return r;
}

Run run_whole(std::string_view input, bool strip) { return run(input, strip, {}); }

// Every way of feeding we try: whole, split in two at every position, byte by
// byte, and some random multi-way splits.
std::vector<std::vector<std::size_t>> all_cuts(std::size_t size) {
    std::vector<std::vector<std::size_t>> cuts;
    cuts.push_back({});
    for (std::size_t k = 0; k <= size; ++k) cuts.push_back({k});
    std::vector<std::size_t> every;
    for (std::size_t k = 1; k < size; ++k) every.push_back(k);
    cuts.push_back(every);
    std::mt19937 rng(12345);
    for (int t = 0; t < 100; ++t) {
        std::vector<std::size_t> c;
        std::size_t pos = 0;
        for (;;) {
            pos += 1 + rng() % 40;
            if (pos >= size) break;
            c.push_back(pos);
        }
        cuts.push_back(c);
    }
    return cuts;
}

std::string with_line_ends(std::string s, std::string_view eol) {
    std::string out;
    for (char c : s) {
        if (c == '\n')
            out += eol;
        else
            out += c;
    }
    return out;
}

// Checks every feeding of `input` gives `expected_out` and the given figures.
void check_all_feeds(const std::string& input, bool strip, const std::string& expected_out, const Usage& usage,
                     bool done, bool content, std::uint64_t events) {
    for (const auto& cuts : all_cuts(input.size())) {
        const Run r = run(input, strip, cuts);
        const bool ok = r.out == expected_out && r.usage == usage && r.done == done && r.content == content &&
                        r.events == events;
        if (!ok) {
            INFO("cuts: " << cuts.size() << " first at " << (cuts.empty() ? 0 : cuts[0]));
            CHECK(r.out == expected_out);
            CHECK(r.usage == usage);
            CHECK(r.done == done);
            CHECK(r.content == content);
            CHECK(r.events == events);
            return; // one failure report is enough
        }
    }
    SUCCEED();
}

// A realistic OpenAI chat stream with include_usage, as a list of events.
const std::vector<std::string> kChatEvents = {
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4.1\","
    "\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
    "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4.1\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],"
    "\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4.1\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\" \\\"usage\\\":{} \\n\\\\ data: [DONE]\\r\\n\"},"
    "\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4.1\","
    "\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
    // the usage-only chunk (index 4)
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\"model\":\"gpt-4.1\","
    "\"system_fingerprint\":\"fp_1\",\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,"
    "\"total_tokens\":29,\"prompt_tokens_details\":{\"cached_tokens\":6,\"audio_tokens\":0},"
    "\"completion_tokens_details\":{\"reasoning_tokens\":4,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,"
    "\"rejected_prediction_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
};
constexpr std::size_t kUsageEvent = 4;

std::string join(const std::vector<std::string>& events, std::size_t skip = static_cast<std::size_t>(-1)) {
    std::string s;
    for (std::size_t k = 0; k < events.size(); ++k)
        if (k != skip) s += events[k];
    return s;
}

} // namespace

TEST_CASE("stream: chat stream with include_usage, stripped, every split, \\n", "[stream]") {
    const std::string input = join(kChatEvents);
    const std::string expected = join(kChatEvents, kUsageEvent);
    check_all_feeds(input, true, expected, make_usage(19, 10, 6, 4), true, true, 6);
}

TEST_CASE("stream: chat stream with include_usage, not stripped, every split, \\n", "[stream]") {
    const std::string input = join(kChatEvents);
    check_all_feeds(input, false, input, make_usage(19, 10, 6, 4), true, true, 6);
}

TEST_CASE("stream: chat stream with \\r\\n line ends, every split", "[stream]") {
    const std::string input = with_line_ends(join(kChatEvents), "\r\n");
    const std::string expected = with_line_ends(join(kChatEvents, kUsageEvent), "\r\n");
    REQUIRE(input.size() > expected.size());
    check_all_feeds(input, true, expected, make_usage(19, 10, 6, 4), true, true, 6);
    check_all_feeds(input, false, input, make_usage(19, 10, 6, 4), true, true, 6);
}

TEST_CASE("stream: chat stream with \\r line ends, every split", "[stream]") {
    const std::string input = with_line_ends(join(kChatEvents), "\r");
    const std::string expected = with_line_ends(join(kChatEvents, kUsageEvent), "\r");
    check_all_feeds(input, true, expected, make_usage(19, 10, 6, 4), true, true, 6);
    check_all_feeds(input, false, input, make_usage(19, 10, 6, 4), true, true, 6);
}

TEST_CASE("stream: chat stream with mixed line ends", "[stream]") {
    // Each event with a different terminator; "\r" then "\n" as separate lines
    // would be two line ends, so only well-formed pairs are used.
    std::vector<std::string> events = kChatEvents;
    events[1] = with_line_ends(events[1], "\r\n");
    events[2] = with_line_ends(events[2], "\r");
    events[kUsageEvent] = with_line_ends(events[kUsageEvent], "\r\n");
    events[kUsageEvent].replace(events[kUsageEvent].size() - 2, 2, "\n"); // data line "\r\n", blank line "\n"
    const std::string input = join(events);
    const std::string expected = join(events, kUsageEvent);
    check_all_feeds(input, true, expected, make_usage(19, 10, 6, 4), true, true, 6);
}

TEST_CASE("stream: usage on the last content chunk is counted and not stripped", "[stream]") {
    const std::string input =
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n"
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}\n\n"
        "data: [DONE]\n\n";
    check_all_feeds(input, true, input, make_usage(12, 3), true, true, 3);
    check_all_feeds(input, false, input, make_usage(12, 3), true, true, 3);
}

TEST_CASE("stream: cumulative usage on every chunk, the last wins", "[stream]") {
    const std::string input =
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"b\"}}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\n"
        "data: {\"choices\":[{\"delta\":{}}],\"usage\":null}\n\n";
    const Run r = run_whole(input, true);
    CHECK(r.out == input);
    CHECK(r.usage == make_usage(5, 2));
    CHECK_FALSE(r.done);
    CHECK(r.events == 3);
}

TEST_CASE("stream: legacy completions stream", "[stream]") {
    const std::vector<std::string> events = {
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\"This\","
        "\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\" is\","
        "\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"model\":\"gpt-3.5-turbo-instruct\",\"usage\":null}\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"gpt-3.5-turbo-instruct\","
        "\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    };
    const std::string input = join(events);
    check_all_feeds(input, true, join(events, 2), make_usage(5, 2), true, true, 4);
    check_all_feeds(input, false, input, make_usage(5, 2), true, true, 4);

    // Usage on the last text chunk (older relays): counted, not stripped.
    const std::string last =
        "data: {\"object\":\"text_completion\",\"choices\":[{\"text\":\"x\",\"finish_reason\":\"stop\"}],"
        "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\ndata: [DONE]\n\n";
    check_all_feeds(last, true, last, make_usage(3, 1), true, true, 2);
}

TEST_CASE("stream: Responses API stream with event lines", "[stream]") {
    const std::string input =
        "event: response.created\n"
        "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\","
        "\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n"
        "event: response.output_text.delta\n"
        "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":1,"
        "\"content_index\":0,\"delta\":\"Hi \\\"usage\\\"\"}\n\n"
        "event: response.completed\n"
        "data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\","
        "\"status\":\"completed\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi\"}]}],"
        "\"usage\":{\"input_tokens\":36,\"input_tokens_details\":{\"cached_tokens\":12},\"output_tokens\":87,"
        "\"output_tokens_details\":{\"reasoning_tokens\":64},\"total_tokens\":123}}}\n\n";
    // No "choices": nothing is a usage-only chunk, nothing is stripped.
    check_all_feeds(input, true, input, make_usage(36, 87, 12, 64), false, true, 3);
    check_all_feeds(with_line_ends(input, "\r\n"), false, with_line_ends(input, "\r\n"), make_usage(36, 87, 12, 64),
                    false, true, 3);

    // response.incomplete also carries usage.
    const std::string incomplete =
        "event: response.incomplete\n"
        "data: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"usage\":{\"input_tokens\":5,"
        "\"output_tokens\":100}}}\n\n";
    CHECK(run_whole(incomplete, true).usage == make_usage(5, 100));
}

TEST_CASE("stream: comments, multi-line data, other fields", "[stream]") {
    const std::string usage_event =
        "id: 7\n"
        "data: {\"choices\":[ ],\n"
        ": a comment inside the event\n"
        "data:\"usage\":{\"prompt_tokens\":8,\n"
        "data:  \"completion_tokens\":2}}\n"
        "\n";
    const std::string input =
        ": OPENROUTER PROCESSING\n\n"
        ": keep-alive\n"
        "retry: 1000\n"
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\n"
        "data: \"usage\":null}\n\n" +
        usage_event +
        ":\n\n"
        "data\n\n"     // a data line without colon: one event with empty data
        "data: [DONE]\n\n";
    std::string expected = input;
    expected.erase(expected.find(usage_event), usage_event.size());
    check_all_feeds(input, true, expected, make_usage(8, 2), true, true, 4);
    check_all_feeds(input, false, input, make_usage(8, 2), true, true, 4);
}

TEST_CASE("stream: a held event is released exactly when its blank line arrives", "[stream]") {
    const std::string content = "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}],\"usage\":null}\n";
    const std::string usage_only = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n";

    StreamMeter m(true);
    std::string out;
    m.feed(": ping\n", out); // comment between events: at once
    CHECK(out == ": ping\n");
    out.clear();
    m.feed(content, out); // event not ended yet: held
    CHECK(out.empty());
    CHECK_FALSE(m.saw_content());
    m.feed("\n", out);
    CHECK(out == content + "\n");
    CHECK(m.saw_content());
    out.clear();
    m.feed("\n\n", out); // blank lines between events: at once
    CHECK(out == "\n\n");
    out.clear();
    m.feed(usage_only, out);
    CHECK(out.empty());
    m.feed("\n", out); // usage-only: dropped whole
    CHECK(out.empty());
    CHECK(m.usage() == make_usage(1, 2));
    m.feed("data: [DONE]\n", out);
    CHECK(out.empty());
    m.feed("\n", out);
    CHECK(out == "data: [DONE]\n\n");
    CHECK(m.saw_done());
    CHECK(m.events() == 3);
}

TEST_CASE("stream: with \\r\\n a held event is released at the blank line's \\r", "[stream]") {
    StreamMeter m(true);
    std::string out;
    m.feed("data: {\"choices\":[{\"delta\":{}}]}\r\n\r", out);
    CHECK(out == "data: {\"choices\":[{\"delta\":{}}]}\r\n\r");
    out.clear();
    m.feed("\n", out);
    CHECK(out == "\n");
    out.clear();
    // A stripped event's "\r\n" terminator goes with it, even split.
    m.feed("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3}}\r\n\r", out);
    CHECK(out.empty());
    m.feed("\ndata: [DONE]\r\n\r\n", out);
    CHECK(out == "data: [DONE]\r\n\r\n");
    CHECK(m.usage() == make_usage(3, 0));
}

TEST_CASE("stream: without stripping the output is the input at once", "[stream]") {
    StreamMeter m(false);
    const std::string input = join(kChatEvents);
    std::string out;
    for (std::size_t off = 0; off < input.size(); off += 7) {
        const std::string_view piece = std::string_view(input).substr(off, 7);
        const std::size_t before = out.size();
        m.feed(piece, out);
        CHECK(out.substr(before) == piece);
    }
    m.finish(out);
    CHECK(out == input);
    CHECK(m.usage() == make_usage(19, 10, 6, 4));
}

TEST_CASE("stream: an event over kMaxHeldEvent is forwarded and never stripped", "[stream]") {
    std::string big = "data: {\"choices\":[],\"pad\":\"";
    big += std::string(StreamMeter::kMaxHeldEvent + 100, 'p');
    big += "\",\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":1}}\n\n";
    const std::string input = big + "data: [DONE]\n\n";
    for (std::size_t piece : {std::size_t{4096}, std::size_t{65536}, input.size()}) {
        StreamMeter m(true);
        std::string out;
        std::size_t max_pending = 0; // bytes fed but not yet output
        std::size_t fed = 0;
        for (std::size_t off = 0; off < input.size(); off += piece) {
            const auto chunk = std::string_view(input).substr(off, piece);
            m.feed(chunk, out);
            fed += chunk.size();
            max_pending = std::max(max_pending, fed - out.size());
        }
        m.finish(out);
        CHECK(out == input);
        CHECK(m.usage() == make_usage(11, 1)); // still metered
        CHECK(m.saw_content());
        if (piece < input.size()) CHECK(max_pending <= StreamMeter::kMaxHeldEvent);
    }
}

TEST_CASE("stream: long content lines pass through unchanged", "[stream]") {
    std::string content = "data: {\"choices\":[{\"delta\":{\"content\":\"";
    content += std::string(300000, 'c');
    content += "\"}}],\"usage\":null}\n\n";
    const std::string usage_only = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":300000}}\n\n";
    const std::string input = content + usage_only + "data: [DONE]\n\n";
    StreamMeter m(true);
    std::string out;
    for (std::size_t off = 0; off < input.size(); off += 1000) m.feed(std::string_view(input).substr(off, 1000), out);
    m.finish(out);
    CHECK(out == content + "data: [DONE]\n\n");
    CHECK(m.usage() == make_usage(2, 300000));
}

TEST_CASE("stream: unterminated last event is forwarded and metered", "[stream]") {
    const std::string input =
        "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}";
    check_all_feeds(input, true, input, make_usage(4, 5), false, true, 2);
    const std::string done_only = "data: [DONE]\n";
    check_all_feeds(done_only, true, done_only, Usage{}, true, false, 1);
}

TEST_CASE("stream: not JSON data and odd events", "[stream]") {
    const std::string input =
        "data: hello world\n\n"
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}} trailing\n\n" // not valid JSON: not stripped, not metered
        "data: {\"choices\":[],\"usage\":null}\n\n"                            // no usage: not stripped
        "data: {\"choices\":[{}],\"usage\":[]}\n\n"
        "event: ping\n\n"                                                       // no data: not a data event
        "data:  [DONE] \n\n";
    const Run r = run_whole(input, true);
    CHECK(r.out == input);
    CHECK_FALSE(r.usage.present);
    CHECK(r.done);
    CHECK(r.content);
    CHECK(r.events == 5);
}

TEST_CASE("stream: only the usage-only chunk and [DONE]: no content", "[stream]") {
    const std::string input =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":0}}\n\ndata: [DONE]\n\n";
    check_all_feeds(input, true, "data: [DONE]\n\n", make_usage(1, 0), true, false, 2);
    check_all_feeds(input, false, input, make_usage(1, 0), true, true, 2);
}

TEST_CASE("stream: moves keep state", "[stream]") {
    StreamMeter a(true);
    std::string out;
    a.feed("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9}}\n", out);
    StreamMeter b(std::move(a));
    b.feed("\n", out);
    CHECK(out.empty());
    CHECK(b.usage() == make_usage(9, 0));
    StreamMeter c(false);
    c = std::move(b);
    CHECK(c.events() == 1);
}
