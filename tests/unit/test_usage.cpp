// Unit tests of the usage module's JSON side: parse_usage_object,
// sanitize_model, inspect_request, inject_include_usage, JsonUsageScanner.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "unit/fixtures.hpp"
#include "relaymeter/usage/encoded.hpp"
#include "relaymeter/usage/usage.hpp"

using relaymeter::usage::inject_include_usage;
using relaymeter::usage::inspect_request;
using relaymeter::usage::JsonUsageScanner;
using relaymeter::usage::kMaxModelName;
using relaymeter::usage::parse_usage_object;
using relaymeter::usage::sanitize_model;
using relaymeter::usage::Usage;

using relaymeter::testfixtures::make_usage;

namespace {

// The bytes that differ between `a` and `b`, after removing their longest
// common prefix and then their longest common suffix: {from a, from b}.
std::pair<std::string, std::string> diff_middle(std::string_view a, std::string_view b) {
    std::size_t pre = 0;
    while (pre < a.size() && pre < b.size() && a[pre] == b[pre]) ++pre;
    std::size_t suf = 0;
    while (suf < a.size() - pre && suf < b.size() - pre && a[a.size() - 1 - suf] == b[b.size() - 1 - suf]) ++suf;
    return {std::string(a.substr(pre, a.size() - pre - suf)), std::string(b.substr(pre, b.size() - pre - suf))};
}

// Injects, checks that the result parses, has include_usage true and otherwise
// equals the original document; returns the result.
std::string inject_ok(std::string_view body) {
    std::string out;
    REQUIRE(inject_include_usage(body, out));
    const auto got = nlohmann::json::parse(out);
    CHECK(got["stream_options"]["include_usage"] == true);
    // Apart from stream_options, the document is unchanged.
    auto original = nlohmann::json::parse(body);
    auto got_rest = got;
    if (original.contains("stream_options") && original["stream_options"].is_object()) {
        auto so = original["stream_options"];
        so.erase("include_usage");
        auto got_so = got_rest["stream_options"];
        got_so.erase("include_usage");
        CHECK(so == got_so);
    }
    original.erase("stream_options");
    got_rest.erase("stream_options");
    CHECK(original == got_rest);
    // inspect_request sees the edit.
    CHECK(inspect_request(out).include_usage);
    return out;
}

Usage scan_whole(std::string_view body) {
    JsonUsageScanner s;
    s.feed(body);
    return s.result();
}

// Feeds `body` split at every position (two pieces), then byte by byte, and
// checks every run gives `expected`.
void check_every_split(std::string_view body, const Usage& expected) {
    for (std::size_t k = 0; k <= body.size(); ++k) {
        JsonUsageScanner s;
        s.feed(body.substr(0, k));
        s.feed(body.substr(k));
        if (s.result() != expected) {
            INFO("split at " << k);
            CHECK(s.result() == expected);
        }
    }
    JsonUsageScanner s;
    for (char c : body) s.feed(std::string_view(&c, 1));
    CHECK(s.result() == expected);
    // reset() makes it reusable.
    s.reset();
    s.feed(body);
    CHECK(s.result() == expected);
}

const std::string kChatResponse = R"({
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! \"usage\": {\"prompt_tokens\": 999} \\ How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {
      "cached_tokens": 3,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 2,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default"
}
)";

const std::string kCompletionsResponse =
    R"({"id":"cmpl-uqkvlQyYK7bGYrRHQ0eXlWi7","object":"text_completion","created":1589478378,)"
    R"("model":"gpt-3.5-turbo-instruct","choices":[{"text":"\n\nThis is indeed a test","index":0,)"
    R"("logprobs":null,"finish_reason":"length"}],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}})";

const std::string kResponsesResponse = R"({"id":"resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41",
"object":"response","created_at":1741476777,"status":"completed","error":null,
"model":"o4-mini","output":[{"type":"reasoning","id":"rs_1","summary":[]},
{"type":"message","id":"msg_1","status":"completed","role":"assistant",
"content":[{"type":"output_text","text":"{\"usage\":{\"input_tokens\":1}}","annotations":[]}]}],
"usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":128},
"output_tokens":52,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":380},
"user":null,"metadata":{"usage":{"input_tokens":5}}})";

std::string embeddings_response(std::size_t vectors, std::size_t dims) {
    std::string s = R"({"object":"list","data":[)";
    for (std::size_t v = 0; v < vectors; ++v) {
        if (v) s += ',';
        s += R"({"object":"embedding","index":)" + std::to_string(v) + R"(,"embedding":[)";
        for (std::size_t d = 0; d < dims; ++d) {
            if (d) s += ',';
            s += (d % 3 == 0) ? "-0.0069292834" : "0.0052874745e-1";
        }
        s += "]}";
    }
    s += R"(],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}})";
    return s;
}

} // namespace

// ---------------------------------------------------------------------------
// parse_usage_object

TEST_CASE("usage: parse chat completions usage with details", "[usage]") {
    const std::string u = R"({"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,
        "prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},
        "completion_tokens_details":{"reasoning_tokens":3,"audio_tokens":0}})";
    CHECK(parse_usage_object(u) == make_usage(19, 10, 4, 3));
}

TEST_CASE("usage: parse Responses API usage", "[usage]") {
    const std::string u = R"({"input_tokens":328,"input_tokens_details":{"cached_tokens":128},
        "output_tokens":52,"output_tokens_details":{"reasoning_tokens":12},"total_tokens":380})";
    CHECK(parse_usage_object(u) == make_usage(328, 52, 128, 12));
}

TEST_CASE("usage: parse embeddings usage has no output", "[usage]") {
    CHECK(parse_usage_object(R"({"prompt_tokens":8,"total_tokens":8})") == make_usage(8, 0));
}

TEST_CASE("usage: parse null, non-objects and garbage give present=false", "[usage]") {
    for (const char* text : {"null", "", "   ", "[]", "[1,2]", "42", "\"usage\"", "{", "{\"prompt_tokens\":",
                             "not json", "{\"a\":1}}", "true"}) {
        INFO(text);
        CHECK_FALSE(parse_usage_object(text).present);
    }
}

TEST_CASE("usage: parse an empty or unknown object is present with zero counts", "[usage]") {
    CHECK(parse_usage_object("{}") == make_usage(0, 0));
    CHECK(parse_usage_object(R"( { "foo": 1, "bar": {"baz": [1,2,3]} } )") == make_usage(0, 0));
}

TEST_CASE("usage: parse ignores negative, fractional, huge and non-number counts", "[usage]") {
    CHECK(parse_usage_object(R"({"prompt_tokens":-5,"completion_tokens":7})") == make_usage(0, 7));
    CHECK(parse_usage_object(R"({"prompt_tokens":5.5,"completion_tokens":7})") == make_usage(0, 7));
    CHECK(parse_usage_object(R"({"prompt_tokens":"5","completion_tokens":true})") == make_usage(0, 0));
    CHECK(parse_usage_object(R"({"prompt_tokens":null,"completion_tokens":[1]})") == make_usage(0, 0));
    CHECK(parse_usage_object(R"({"prompt_tokens":{"n":1},"completion_tokens":7})") == make_usage(0, 7));
    CHECK(parse_usage_object(R"({"prompt_tokens":9007199254740993,"completion_tokens":7})") == make_usage(0, 7));
    CHECK(parse_usage_object(R"({"prompt_tokens":18446744073709551615,"completion_tokens":1})") == make_usage(0, 1));
    CHECK(parse_usage_object(R"({"prompt_tokens":1e300,"completion_tokens":1})") == make_usage(0, 1));
    CHECK(parse_usage_object(R"({"prompt_tokens":-0.0,"completion_tokens":1})") == make_usage(0, 1));
    // Largest exact count, and whole numbers written as floats, are fine.
    CHECK(parse_usage_object(R"({"prompt_tokens":9007199254740992,"completion_tokens":12.0})") ==
          make_usage(9007199254740992ULL, 12));
    CHECK(parse_usage_object(R"({"prompt_tokens":1e3,"completion_tokens":0})") == make_usage(1000, 0));
    // Bad details are ignored, good counts kept.
    CHECK(parse_usage_object(R"({"prompt_tokens":10,"completion_tokens":5,
        "prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":-1}})") ==
          make_usage(10, 5));
    CHECK(parse_usage_object(R"({"prompt_tokens":10,"completion_tokens":5,
        "prompt_tokens_details":[{"cached_tokens":3}]})") == make_usage(10, 5));
}

// Found by fuzz/fuzz_usage: a number longer than the 40-byte capture was read
// from its prefix, so 1.000…0e2 (100) counted as 1. A cut-off number is not a count.
TEST_CASE("usage: parse ignores a count longer than its capture", "[usage]") {
    const std::string zeros(40, '0');
    CHECK(parse_usage_object(R"({"prompt_tokens":1.)" + zeros + R"(e2,"completion_tokens":7})") == make_usage(0, 7));
    CHECK(parse_usage_object(R"({"input_tokens":1.)" + zeros + R"(e2,"output_tokens":1.)" + zeros + "}") ==
          make_usage(0, 0));
    CHECK(parse_usage_object(R"({"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":2.)" + zeros +
                             "}}") == make_usage(10, 0));
    // Within the capture, long spellings are still read.
    CHECK(parse_usage_object(R"({"prompt_tokens":1.000000000000000000000000000000000000e2})") == make_usage(100, 0));
}

// Found by fuzz/fuzz_encoded: a zlib or raw deflate stream that ended exactly
// at a chunk boundary took the next chunk for a new stream ("truncated", and
// its bytes inflated) where one chunk gave "corrupt data" (trailing junk).
TEST_CASE("usage: encoded deflate streams reject trailing bytes however the body is split", "[usage][gzip]") {
    using relaymeter::usage::ContentCoding;
    using relaymeter::usage::EncodedBodyMeter;
    const std::string raw("\xfb\x8a\x00\x00" "d\xb7" "ata\xff", 10); // 11 bytes of raw deflate, then junk
    const std::string zlib_wrapped = std::string("\x78\x9c\xab\x56\x2a\x2d\x4e\x4c\x4f\x55\xb2\xaa\x56\x2a\x28\xca"
                                                 "\xcf\x2d\x28\x89\x2f\xc9\xcf\x4e\xcd\x2b\x56\xb2\x32\xae\xad\x05"
                                                 "\x00\xa0\x9d\x0a\xca", 37) + "{}"; // {"usage":{"prompt_tokens":3}}, then junk
    for (const auto& [body, stream_end, decoded] :
         {std::tuple<std::string, std::size_t, std::uint64_t>{raw, 4, 11}, {zlib_wrapped, 37, 29}}) {
        for (std::size_t cut : {std::size_t{0}, stream_end, std::size_t{1}}) {
            EncodedBodyMeter m(ContentCoding::deflate, false);
            if (cut == 1) {
                for (char c : body) m.feed(std::string_view(&c, 1));
            } else {
                m.feed(std::string_view(body).substr(0, cut));
                m.feed(std::string_view(body).substr(cut));
            }
            m.finish();
            INFO("cut " << cut);
            CHECK(m.problem() == "corrupt data");
            CHECK(m.decoded_bytes() == decoded);
        }
    }
}

TEST_CASE("usage: parse falls back to input/output names when prompt/completion are unusable", "[usage]") {
    CHECK(parse_usage_object(R"({"prompt_tokens":"x","input_tokens":5,"output_tokens":6})") == make_usage(5, 6));
    // Both spellings present: the chat one wins.
    CHECK(parse_usage_object(R"({"prompt_tokens":1,"completion_tokens":2,"input_tokens":5,"output_tokens":6})") ==
          make_usage(1, 2));
    // Mixed detail spellings.
    CHECK(parse_usage_object(R"({"input_tokens":10,"output_tokens":9,"prompt_tokens_details":{"cached_tokens":2},
        "output_tokens_details":{"reasoning_tokens":4}})") == make_usage(10, 9, 2, 4));
}

TEST_CASE("usage: parse clamps cached and reasoning to their totals", "[usage]") {
    CHECK(parse_usage_object(R"({"prompt_tokens":10,"completion_tokens":5,
        "prompt_tokens_details":{"cached_tokens":50},"completion_tokens_details":{"reasoning_tokens":9}})") ==
          make_usage(10, 5, 10, 5));
}

TEST_CASE("usage: parse tolerates odd fields, whitespace and duplicates", "[usage]") {
    CHECK(parse_usage_object("\n\t{ \"completion_tokens\" : 3 ,\r\n \"prompt_tokens\":4, \"extra\":[{},[]] }\n") ==
          make_usage(4, 3));
}

// ---------------------------------------------------------------------------
// sanitize_model

TEST_CASE("usage: sanitize_model keeps printable ASCII, replaces the rest", "[usage]") {
    CHECK(sanitize_model("gpt-4.1") == "gpt-4.1");
    CHECK(sanitize_model("") == "none");
    CHECK(sanitize_model("a b~") == "a b~");
    CHECK(sanitize_model(std::string("a\0b", 3)) == "a_b");
    CHECK(sanitize_model("x\ny\tz\x7f") == "x_y_z_");
    CHECK(sanitize_model("caf\xc3\xa9") == "caf__");
    CHECK(sanitize_model("\xff") == "_");
    CHECK(sanitize_model("model\"{label}\\") == "model\"{label}\\"); // escaping is the serializer's job
    const std::string longname(kMaxModelName + 50, 'm');
    CHECK(sanitize_model(longname) == std::string(kMaxModelName, 'm'));
    CHECK(sanitize_model(std::string(kMaxModelName, 'q')).size() == kMaxModelName);
}

// ---------------------------------------------------------------------------
// inspect_request

TEST_CASE("usage: inspect_request finds model, stream and include_usage", "[usage]") {
    const auto info = inspect_request(
        R"({"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}],"stream":true,)"
        R"("stream_options":{"include_usage":true}})");
    CHECK(info.model == "gpt-4.1");
    CHECK(info.is_json_object);
    CHECK(info.stream);
    CHECK(info.include_usage);
}

TEST_CASE("usage: inspect_request model first, last, or after nested decoys", "[usage]") {
    CHECK(inspect_request(R"({"model":"first","messages":[]})").model == "first");
    CHECK(inspect_request(R"({"messages":[{"role":"user","content":"x"}],"model":"last"})").model == "last");
    const auto info = inspect_request(R"({
        "messages": [{"role": "user", "content": "{\"model\": \"decoy-in-string\"}", "model": "decoy-nested"}],
        "metadata": {"model": "decoy-object", "stream": true, "stream_options": {"include_usage": true}},
        "tools": [[{"model": "deep"}]],
        "text": "\"model\":\"decoy-escaped\\\"",
        "model" : "real-model",
        "x": {"model": "after"}
    })");
    CHECK(info.model == "real-model");
    CHECK(info.is_json_object);
    CHECK_FALSE(info.stream);
    CHECK_FALSE(info.include_usage);
}

TEST_CASE("usage: inspect_request decodes string escapes in the model", "[usage]") {
    CHECK(inspect_request(R"({"model":"gpt\u002d4"})").model == "gpt-4");
    CHECK(inspect_request(R"({"model":"a\/b\\c\"d"})").model == "a/b\\c\"d");
    CHECK(inspect_request(R"({"model":"tab\there\nnl"})").model == "tab_here_nl");
    CHECK(inspect_request(R"({"model":"caf\u00e9"})").model == "caf__");
    CHECK(inspect_request(R"({"model":"emoji\ud83d\ude00"})").model == "emoji____");
    CHECK(inspect_request(R"({"model":"nul\u0000x"})").model == "nul_x");
    CHECK(inspect_request(R"({"\u006dodel":"escaped-key"})").model == "escaped-key");
    // Escapes count after decoding: 128 escaped characters fit.
    std::string escaped;
    for (std::size_t k = 0; k < kMaxModelName + 10; ++k) escaped += "\\u0041";
    CHECK(inspect_request(R"({"model":")" + escaped + "\"}").model == std::string(kMaxModelName, 'A'));
}

TEST_CASE("usage: inspect_request non-string or missing model is none", "[usage]") {
    CHECK(inspect_request(R"({"model":42})").model == "none");
    CHECK(inspect_request(R"({"model":null})").model == "none");
    CHECK(inspect_request(R"({"model":{"name":"x"}})").model == "none");
    CHECK(inspect_request(R"({"model":["x"]})").model == "none");
    CHECK(inspect_request(R"({"model":""})").model == "none");
    CHECK(inspect_request(R"({"messages":[]})").model == "none");
    CHECK(inspect_request(R"({})").model == "none");
    CHECK(inspect_request("").model == "none");
    // Duplicate keys: the last wins, as in upstreams' JSON parsers.
    CHECK(inspect_request(R"({"model":"a","model":"b"})").model == "b");
    CHECK(inspect_request(R"({"model":"a","model":7})").model == "none");
}

TEST_CASE("usage: inspect_request control and binary bytes in the model", "[usage]") {
    const std::string body = std::string("{\"model\":\"bad\x01\x7f\xfe") + "name\"}";
    const auto info = inspect_request(body);
    CHECK(info.model == "bad___name");
    const std::string longmodel(1000, 'z');
    CHECK(inspect_request(R"({"model":")" + longmodel + "\"}").model == std::string(kMaxModelName, 'z'));
}

TEST_CASE("usage: inspect_request stream and include_usage variants", "[usage]") {
    CHECK(inspect_request(R"({"stream":true})").stream);
    CHECK_FALSE(inspect_request(R"({"stream":false})").stream);
    CHECK_FALSE(inspect_request(R"({"stream":"true"})").stream);
    CHECK_FALSE(inspect_request(R"({"stream":1})").stream);
    CHECK_FALSE(inspect_request(R"({"stream":null})").stream);
    CHECK(inspect_request("{ \"stream\"\n:\ttrue\r\n}").stream);

    CHECK(inspect_request(R"({"stream_options":{"include_usage":true}})").include_usage);
    CHECK(inspect_request(R"({"stream_options":{"foo":[{"include_usage":false}],"include_usage":true}})").include_usage);
    CHECK_FALSE(inspect_request(R"({"stream_options":{"include_usage":false}})").include_usage);
    CHECK_FALSE(inspect_request(R"({"stream_options":{"include_usage":null}})").include_usage);
    CHECK_FALSE(inspect_request(R"({"stream_options":{"include_usage":"true"}})").include_usage);
    CHECK_FALSE(inspect_request(R"({"stream_options":{}})").include_usage);
    CHECK_FALSE(inspect_request(R"({"stream_options":null})").include_usage);
    CHECK_FALSE(inspect_request(R"({"stream_options":{"x":{"include_usage":true}}})").include_usage);
    CHECK_FALSE(inspect_request(R"({"include_usage":true})").include_usage);
    // The last stream_options wins.
    CHECK_FALSE(inspect_request(R"({"stream_options":{"include_usage":true},"stream_options":null})").include_usage);
}

TEST_CASE("usage: inspect_request is_json_object", "[usage]") {
    CHECK(inspect_request("  {\"a\":1}  \n").is_json_object);
    CHECK(inspect_request("{}").is_json_object);
    CHECK_FALSE(inspect_request("").is_json_object);
    CHECK_FALSE(inspect_request("[1,2]").is_json_object);
    CHECK_FALSE(inspect_request("model=gpt-4").is_json_object);
    CHECK_FALSE(inspect_request(R"({"model":"x")").is_json_object);       // truncated
    CHECK_FALSE(inspect_request(R"({"model":"x"} {"a":1})").is_json_object); // trailing garbage
    CHECK_FALSE(inspect_request(R"({"model" "x"})").is_json_object);
    CHECK_FALSE(inspect_request(R"({"a":1,})").is_json_object);
    CHECK_FALSE(inspect_request(R"({"a":[1,2})").is_json_object);
    // A truncated body still reports what it found.
    CHECK(inspect_request(R"({"model":"x","messages":[)").model == "x");
}

TEST_CASE("usage: inspect_request on a 1 MiB body", "[usage]") {
    // Long strings full of escapes and quotes, deep nesting, decoys, and the
    // fields at the end.
    std::string body = R"({"messages":[)";
    std::string content;
    while (content.size() < (1U << 20)) content += R"(lorem \"model\": \"decoy\" ipsum \\ {[ )";
    for (int m = 0; m < 2; ++m) {
        if (m) body += ',';
        body += R"({"role":"user","content":")" + content + R"(","model":"nested"})";
    }
    body += R"(],"deep":)";
    for (int d = 0; d < 10000; ++d) body += "[{\"a\":";
    body += "1";
    for (int d = 0; d < 10000; ++d) body += "}]";
    body += R"(,"stream":true,"stream_options":{"include_usage":false},"model":"gpt-4.1-mini"})";
    REQUIRE(body.size() > (2U << 20));
    const auto info = inspect_request(body);
    CHECK(info.is_json_object);
    CHECK(info.model == "gpt-4.1-mini");
    CHECK(info.stream);
    CHECK_FALSE(info.include_usage);
}

// ---------------------------------------------------------------------------
// inject_include_usage

TEST_CASE("usage: inject without stream_options appends it after the last member", "[usage]") {
    const std::string body = R"({"model":"gpt-4.1","messages":[{"role":"user","content":"}"}],"stream":true})";
    const auto out = inject_ok(body);
    CHECK(out == R"({"model":"gpt-4.1","messages":[{"role":"user","content":"}"}],"stream":true,"stream_options":{"include_usage":true}})");
    CHECK(diff_middle(body, out) == std::make_pair(std::string(), std::string(R"(,"stream_options":{"include_usage":true})")));
}

TEST_CASE("usage: inject keeps pretty-printed bodies byte for byte", "[usage]") {
    const std::string body = "\n\t{\r\n  \"stream\" :\ttrue ,\n  \"model\": \"x\",\n  \"messages\": [ ]\n}\n\n";
    const auto out = inject_ok(body);
    CHECK(diff_middle(body, out) == std::make_pair(std::string(), std::string(R"(,"stream_options":{"include_usage":true})")));
    CHECK(out.find("[ ],\"stream_options\"") != std::string::npos);
    CHECK(out.substr(out.size() - 4) == "\n}\n\n");
}

TEST_CASE("usage: inject into an empty object", "[usage]") {
    CHECK(inject_ok("{}") == R"({"stream_options":{"include_usage":true}})");
    CHECK(inject_ok(" { \n } ") == " { \n \"stream_options\":{\"include_usage\":true}} ");
}

TEST_CASE("usage: inject into an empty stream_options", "[usage]") {
    const std::string body = R"({"stream":true,"stream_options": {},"model":"m"})";
    const auto out = inject_ok(body);
    CHECK(out == R"({"stream":true,"stream_options": {"include_usage":true},"model":"m"})");
    CHECK(inject_ok(R"({"stream_options":{ }})") == R"({"stream_options":{"include_usage":true }})");
}

TEST_CASE("usage: inject into stream_options with other members", "[usage]") {
    const std::string body = R"({"model":"m","stream_options":{"continuous_usage_stats":false} ,"stream":true})";
    const auto out = inject_ok(body);
    CHECK(out == R"({"model":"m","stream_options":{"include_usage":true,"continuous_usage_stats":false} ,"stream":true})");
    // (The common prefix takes the '"' of the next key, hence the rotation.)
    CHECK(diff_middle(body, out) == std::make_pair(std::string(), std::string(R"(include_usage":true,")")));
}

TEST_CASE("usage: inject replaces include_usage false or null", "[usage]") {
    const std::string body = R"({"stream_options":{"include_usage":false},"stream":true})";
    const auto out = inject_ok(body);
    CHECK(out == R"({"stream_options":{"include_usage":true},"stream":true})");
    CHECK(diff_middle(body, out) == std::make_pair(std::string("fals"), std::string("tru")));

    const std::string spaced = "{ \"stream_options\" : { \"a\" : 1 , \"include_usage\" :\n null } }";
    const auto out2 = inject_ok(spaced);
    CHECK(out2 == "{ \"stream_options\" : { \"a\" : 1 , \"include_usage\" :\n true } }");
}

TEST_CASE("usage: inject with include_usage already true changes nothing", "[usage]") {
    const std::string body = R"({"stream_options":{"include_usage":true},"stream":true})";
    CHECK(inject_ok(body) == body);
}

TEST_CASE("usage: inject replaces a null stream_options", "[usage]") {
    const std::string body = R"({"model":"m", "stream_options" : null ,"stream":true})";
    const auto out = inject_ok(body);
    CHECK(out == R"({"model":"m", "stream_options" : {"include_usage":true} ,"stream":true})");
    CHECK(diff_middle(body, out) == std::make_pair(std::string("null"), std::string(R"({"include_usage":true})")));
}

TEST_CASE("usage: inject ignores nested and quoted stream_options", "[usage]") {
    const std::string body =
        R"({"messages":[{"role":"user","content":"\"stream_options\":{\"include_usage\":false} \\"}],)"
        R"("metadata":{"stream_options":null,"x":{"stream_options":{}}},"model":"m"})";
    const auto out = inject_ok(body);
    CHECK(diff_middle(body, out) == std::make_pair(std::string(), std::string(R"(,"stream_options":{"include_usage":true})")));
    const std::string_view tail = R"("model":"m","stream_options":{"include_usage":true}})";
    CHECK(std::string_view(out).substr(out.size() - tail.size()) == tail);
}

TEST_CASE("usage: inject key order does not matter", "[usage]") {
    const std::string body = R"({"stream_options":{"include_usage":false},"model":"m","messages":[],"stream":true})";
    CHECK(inject_ok(body) == R"({"stream_options":{"include_usage":true},"model":"m","messages":[],"stream":true})");
    const std::string body2 = R"({"stream":true,"messages":[],"model":"m","stream_options":{"include_usage":false}})";
    CHECK(inject_ok(body2) == R"({"stream":true,"messages":[],"model":"m","stream_options":{"include_usage":true}})");
}

TEST_CASE("usage: inject refuses non-objects and bad stream_options", "[usage]") {
    std::string out;
    CHECK_FALSE(inject_include_usage("", out));
    CHECK_FALSE(inject_include_usage("[]", out));
    CHECK_FALSE(inject_include_usage("not json", out));
    CHECK_FALSE(inject_include_usage(R"({"model":"m")", out));
    CHECK_FALSE(inject_include_usage(R"({"model":"m"}x)", out));
    CHECK_FALSE(inject_include_usage(R"({"stream_options":true})", out));
    CHECK_FALSE(inject_include_usage(R"({"stream_options":"include_usage"})", out));
    CHECK_FALSE(inject_include_usage(R"({"stream_options":[]})", out));
    CHECK_FALSE(inject_include_usage(R"({"stream_options":0})", out));
    CHECK_FALSE(inject_include_usage(R"({"stream_options":{"include_usage":"yes"}})", out));
    CHECK_FALSE(inject_include_usage(R"({"stream_options":{"include_usage":1}})", out));
}

TEST_CASE("usage: inject on a large body keeps every byte", "[usage]") {
    std::string content;
    while (content.size() < 200000) content += R"(x \"}\" \\ )";
    const std::string body = R"({"model":"m","stream":true,"messages":[{"role":"user","content":")" + content + R"("}]})";
    const auto out = inject_ok(body);
    CHECK(diff_middle(body, out) == std::make_pair(std::string(), std::string(R"(,"stream_options":{"include_usage":true})")));
}

// ---------------------------------------------------------------------------
// JsonUsageScanner

TEST_CASE("usage: scanner chat completion response at every split", "[usage]") {
    check_every_split(kChatResponse, make_usage(19, 10, 3, 2));
}

TEST_CASE("usage: scanner legacy completions response at every split", "[usage]") {
    check_every_split(kCompletionsResponse, make_usage(5, 7));
}

TEST_CASE("usage: scanner Responses API response at every split", "[usage]") {
    check_every_split(kResponsesResponse, make_usage(328, 52, 128, 12));
}

TEST_CASE("usage: scanner Responses API event envelope (response.usage)", "[usage]") {
    const std::string body =
        R"({"type":"response.completed","sequence_number":9,"response":{"id":"resp_1","object":"response",)"
        R"("output":[{"type":"message","content":[{"type":"output_text","text":"\"usage\":{}"}]}],)"
        R"("usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,)"
        R"("output_tokens_details":{"reasoning_tokens":64},"total_tokens":123}}})";
    check_every_split(body, make_usage(36, 87, 0, 64));
    // Deeper "usage" keys are not ours.
    CHECK_FALSE(scan_whole(R"({"data":{"response":{"usage":{"input_tokens":1}}}})").present);
    CHECK_FALSE(scan_whole(R"({"response":{"meta":{"usage":{"input_tokens":1}}}})").present);
    CHECK_FALSE(scan_whole(R"({"response":null})").present);
}

TEST_CASE("usage: scanner embeddings response, small and multi-MB", "[usage]") {
    check_every_split(embeddings_response(2, 8), make_usage(8, 0));
    const std::string big = embeddings_response(300, 1536);
    REQUIRE(big.size() > 5'000'000);
    JsonUsageScanner s;
    for (std::size_t off = 0; off < big.size(); off += 16384) s.feed(std::string_view(big).substr(off, 16384));
    CHECK(s.result() == make_usage(8, 0));
}

TEST_CASE("usage: scanner usage null, missing, odd and not JSON", "[usage]") {
    check_every_split(R"({"id":"x","choices":[],"usage":null})", Usage{});
    check_every_split(R"({"id":"x","choices":[{"usage":{"prompt_tokens":1}}]})", Usage{});
    check_every_split(R"({"usage":[1,2,3]})", Usage{});
    check_every_split(R"({"usage":"{\"prompt_tokens\":5}"})", Usage{});
    check_every_split(R"({"usage":{}})", make_usage(0, 0));
    check_every_split("<html><body>502 Bad Gateway</body></html>", Usage{});
    check_every_split(R"([{"usage":{"prompt_tokens":1}}])", Usage{});
    check_every_split("", Usage{});
    check_every_split(R"({"error":{"message":"Rate limit","type":"requests","code":"rate_limit_exceeded"}})", Usage{});
    // Escaped key, weird spacing.
    check_every_split("{\"\\u0075sage\"\r\n:\t{ \"prompt_tokens\" : 2 , \"completion_tokens\":1 } }", make_usage(2, 1));
    // The last usage object wins; a later null does not erase it.
    check_every_split(R"({"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":3},"usage":null})",
                      make_usage(2, 3));
    // Usage before a syntax error is still counted; after garbage, nothing is read.
    CHECK(scan_whole(R"({"usage":{"prompt_tokens":4}} trailing)") == make_usage(4, 0));
    CHECK_FALSE(scan_whole(R"({"a" 1, "usage":{"prompt_tokens":4}})").present);
}

TEST_CASE("usage: scanner keys in their fixed buffers at every split", "[usage]") {
    // Escaped keys at two walked depths: decoding the inner key must not touch
    // the outer one, which names the object when it closes.
    check_every_split(R"({"\u0072esponse":{"id":"r","us\u0061ge":{"input_tokens":3,"output_tokens":4}}})",
                      make_usage(3, 4));
    check_every_split(R"({"usage":{"prompt_tokens_detail\u0073":{"cached_tokens":2},"prompt_tokens":5}})",
                      make_usage(5, 0, 2, 0));
    // Keys of 64 and 65 raw bytes (plain and escaped) before the real one.
    for (const std::size_t len : {63, 64, 65}) {
        const std::string plain = "usage" + std::string(len - 5, 'x');
        const std::string escaped = "\\u0075sage" + std::string(len - 10, 'x');
        for (const std::string& key : {plain, escaped})
            check_every_split("{\"" + key + "\":{\"prompt_tokens\":1},\"usage\":{\"prompt_tokens\":9}}",
                              make_usage(9, 0));
    }
    // A count captured across chunks (copied) and within one chunk (a view).
    check_every_split(R"({"usage":{"prompt_tokens":123456789012,"completion_tokens":1.0e1}})",
                      make_usage(123456789012ULL, 10));
}

TEST_CASE("usage: inspect_request reads keys up to 64 raw bytes", "[usage]") {
    // "stream_options" (14 bytes) with its first n characters \u-escaped is
    // 14 + 5n raw bytes: n = 10 gives 64 (read), n = 11 gives 69 (too long).
    const auto key = [](std::size_t n) {
        const std::string name = "stream_options";
        std::string k;
        for (std::size_t i = 0; i < name.size(); ++i) {
            if (i < n) {
                char buf[8];
                std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(name[i]));
                k += buf;
            } else {
                k += name[i];
            }
        }
        return k;
    };
    REQUIRE(key(10).size() == 64);
    CHECK(inspect_request("{\"" + key(10) + "\":{\"include_usage\":true},\"stream\":true}").include_usage);
    CHECK_FALSE(inspect_request("{\"" + key(11) + "\":{\"include_usage\":true},\"stream\":true}").include_usage);
}

TEST_CASE("usage: scanner ignores a usage object over its capture limit", "[usage]") {
    std::string body = R"({"usage":{"prompt_tokens":5,"completion_tokens":6,"pad":")";
    body += std::string(70 * 1024, 'p');
    body += R"("}})";
    JsonUsageScanner s;
    for (std::size_t off = 0; off < body.size(); off += 1000) s.feed(std::string_view(body).substr(off, 1000));
    CHECK_FALSE(s.result().present);
    // Just under the limit is fine.
    std::string ok = R"({"usage":{"prompt_tokens":5,"completion_tokens":6,"pad":")";
    ok += std::string(60 * 1024, 'p');
    ok += R"("}})";
    CHECK(scan_whole(ok) == make_usage(5, 6));
}

TEST_CASE("usage: scanner moves", "[usage]") {
    JsonUsageScanner a;
    a.feed(R"({"usage":{"prompt_tokens":)");
    JsonUsageScanner b(std::move(a));
    b.feed("7}}");
    CHECK(b.result() == make_usage(7, 0));
    JsonUsageScanner c;
    c = std::move(b);
    CHECK(c.result() == make_usage(7, 0));
}

// ---------------------------------------------------------------------------
// Differential check against nlohmann on generated documents.

namespace {

struct DocGen {
    std::mt19937 rng{20240611};

    std::size_t pick(std::size_t n) { return rng() % n; }

    std::string str() {
        static const std::vector<std::string> pieces = {
            "a", "Z", "0", " ", "\"", "\\", "\\\\", "/", "\n", "\t", std::string(1, '\0'), "\x01", "{", "}", "[",
            "]", ":", ",", "model", "usage", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\\u0041"};
        std::string s;
        const std::size_t len = pick(8);
        for (std::size_t k = 0; k < len; ++k) s += pieces[pick(pieces.size())];
        return s;
    }

    nlohmann::json value(int depth) {
        switch (depth > 3 ? pick(4) : pick(7)) {
        case 0: return nullptr;
        case 1: return pick(2) == 0;
        case 2: return static_cast<std::int64_t>(rng() % 100000) - 50;
        case 3: return str();
        case 4: {
            auto a = nlohmann::json::array();
            for (std::size_t k = pick(4); k > 0; --k) a.push_back(value(depth + 1));
            return a;
        }
        default: return object(depth + 1);
        }
    }

    nlohmann::json object(int depth) {
        static const std::vector<std::string> keys = {"model", "stream", "stream_options", "include_usage",
                                                      "usage", "response", "prompt_tokens", "completion_tokens",
                                                      "messages", "x\"y", "\\", ""};
        auto o = nlohmann::json::object();
        for (std::size_t k = pick(5); k > 0; --k) o[pick(3) ? keys[pick(keys.size())] : str()] = value(depth);
        return o;
    }

    // A request-like root with the interesting keys often present.
    nlohmann::json root() {
        nlohmann::json o = object(1);
        if (pick(2)) o["model"] = pick(4) ? nlohmann::json(str()) : value(2);
        if (pick(2)) o["stream"] = pick(3) ? nlohmann::json(pick(2) == 0) : value(2);
        if (pick(2)) {
            switch (pick(5)) {
            case 0: o["stream_options"] = nullptr; break;
            case 1: o["stream_options"] = value(2); break;
            default: {
                nlohmann::json so = object(2);
                if (pick(3)) so["include_usage"] = pick(3) ? nlohmann::json(pick(2) == 0) : value(3);
                o["stream_options"] = so;
            }
            }
        }
        if (pick(2)) {
            nlohmann::json u = object(2);
            if (pick(2)) u["prompt_tokens"] = rng() % 1000;
            if (pick(3)) {
                o["usage"] = pick(5) ? u : value(2);
            } else {
                if (!o["response"].is_object()) o["response"] = nlohmann::json::object();
                o["response"]["usage"] = pick(5) ? u : value(2);
            }
        }
        return o;
    }
};

} // namespace

TEST_CASE("usage: inspect, inject and scanner agree with nlohmann on generated documents", "[usage]") {
    DocGen gen;
    for (int round = 0; round < 1500; ++round) {
        const nlohmann::json doc = gen.root();
        const int indent = static_cast<int>(gen.pick(3)) - 1; // -1: compact
        const bool ascii = gen.pick(2) == 0;
        const std::string body = doc.dump(indent, ' ', ascii);
        INFO(body);

        // inspect_request
        const auto info = inspect_request(body);
        REQUIRE(info.is_json_object);
        const auto model = doc.find("model");
        CHECK(info.model == (model != doc.end() && model->is_string() ? sanitize_model(model->get<std::string>()) : "none"));
        CHECK(info.stream == (doc.contains("stream") && doc["stream"] == true));
        const bool include_usage = doc.contains("stream_options") && doc["stream_options"].is_object() &&
                                   doc["stream_options"].contains("include_usage") &&
                                   doc["stream_options"]["include_usage"] == true;
        CHECK(info.include_usage == include_usage);

        // inject_include_usage
        std::string out;
        const auto so = doc.find("stream_options");
        bool injectable = so == doc.end() || so->is_null();
        if (so != doc.end() && so->is_object()) {
            const auto iu = so->find("include_usage");
            injectable = iu == so->end() || iu->is_boolean() || iu->is_null();
        }
        REQUIRE(inject_include_usage(body, out) == injectable);
        if (injectable) {
            auto expected = doc;
            if (!expected["stream_options"].is_object()) expected["stream_options"] = nlohmann::json::object();
            expected["stream_options"]["include_usage"] = true;
            CHECK(nlohmann::json::parse(out) == expected);
        }

        // JsonUsageScanner, split in three
        Usage expected_usage;
        if (doc.contains("usage") && doc["usage"].is_object())
            expected_usage = parse_usage_object(doc["usage"].dump());
        else if (doc.contains("response") && doc["response"].is_object() && doc["response"].contains("usage") &&
                 doc["response"]["usage"].is_object())
            expected_usage = parse_usage_object(doc["response"]["usage"].dump());
        const std::size_t a = gen.pick(body.size() + 1);
        const std::size_t b = a + gen.pick(body.size() - a + 1);
        JsonUsageScanner scanner;
        scanner.feed(std::string_view(body).substr(0, a));
        scanner.feed(std::string_view(body).substr(a, b - a));
        scanner.feed(std::string_view(body).substr(b));
        CHECK(scanner.result() == expected_usage);
    }
}
