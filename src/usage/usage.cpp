#include "relaymeter/usage/usage.hpp"

#include <array>

#include "usage/json_scan.hpp"
#include "usage/usage_reader.hpp"

namespace relaymeter::usage {

namespace {

using detail::Directive;
using detail::JsonScanner;
using detail::MemberValue;
using detail::ObjectEnd;
using detail::Walk;

// parse_usage_object: the usage object is the whole document.
class UsageHandler final : public detail::JsonScanHandler {
public:
    Directive on_key(std::string_view key, int depth) override { return reader_.on_key(key, depth); }
    void on_value(const MemberValue& v) override { reader_.on_value(v); }
    Usage result() const { return reader_.result(); }

private:
    detail::UsageReader reader_;
};

// Capture limit for a model value: enough raw bytes for kMaxModelName
// characters even when each is written as a 6-byte \u escape.
constexpr std::size_t kModelCapture = kMaxModelName * 6 + 2;
constexpr std::size_t kLiteralCapture = 8; // "true", "false", "null"

// Top-level model / stream / stream_options.include_usage. Duplicate keys:
// the last one wins, as in the JSON parsers upstreams use.
class RequestHandler final : public detail::JsonScanHandler {
public:
    explicit RequestHandler(RequestInfo& info) : info_(info) {}

    Directive on_key(std::string_view key, int depth) override {
        if (depth == 1) {
            if (detail::key_is(key, "model")) return {Walk::capture, kModelCapture};
            if (detail::key_is(key, "stream")) return {Walk::capture, kLiteralCapture};
            if (detail::key_is(key, "stream_options")) {
                info_.include_usage = false; // a later stream_options replaces an earlier one
                return {Walk::descend, 0};
            }
        } else if (depth == 2 && detail::key_is(key, "include_usage")) { // only stream_options is walked
            return {Walk::capture, kLiteralCapture};
        }
        return {};
    }

    void on_value(const MemberValue& v) override {
        if (v.depth == 1 && detail::key_is(v.key, "model")) {
            if (v.first != '"') {
                info_.model = "none";
                return;
            }
            std::string_view raw = v.text.substr(1); // drop the opening quote
            if (!v.truncated) raw.remove_suffix(1);  // and the closing one
            std::array<char, kMaxModelName> decoded;
            const std::size_t len = detail::decode_json_string(raw, decoded.data(), decoded.size());
            info_.model = sanitize_model({decoded.data(), len});
        } else if (v.depth == 1 && detail::key_is(v.key, "stream")) {
            info_.stream = v.text == "true";
        } else if (v.depth == 2 && detail::key_is(v.key, "include_usage")) {
            info_.include_usage = v.text == "true";
        }
    }

private:
    RequestInfo& info_;
};

// Where the edit for inject_include_usage goes.
class InjectHandler final : public detail::JsonScanHandler {
public:
    struct StreamOptions {
        bool found = false;
        char first = 0;
        std::size_t begin = 0, end = 0;
        std::size_t members = 0;
        bool has_include_usage = false;
        bool include_usage_is_true = false;
        bool include_usage_replaceable = false; // false or null
        std::size_t include_usage_begin = 0, include_usage_end = 0;
    };

    Directive on_key(std::string_view key, int depth) override {
        if (depth == 1 && detail::key_is(key, "stream_options")) {
            so_ = {}; // the last stream_options wins
            return {Walk::descend, 0};
        }
        if (depth == 2 && detail::key_is(key, "include_usage")) return {Walk::capture, kLiteralCapture};
        return {};
    }

    void on_value(const MemberValue& v) override {
        if (v.depth == 1 && detail::key_is(v.key, "stream_options")) {
            so_.found = true;
            so_.first = v.first;
            so_.begin = v.begin;
            so_.end = v.end;
        } else if (v.depth == 2 && detail::key_is(v.key, "include_usage")) {
            so_.has_include_usage = true;
            so_.include_usage_is_true = v.text == "true";
            so_.include_usage_replaceable = v.text == "false" || v.text == "null";
            so_.include_usage_begin = v.begin;
            so_.include_usage_end = v.end;
        }
    }

    void on_object_end(const ObjectEnd& e) override {
        if (e.depth == 1) root_ = e;
        if (e.depth == 2) so_.members = e.members;
    }

    const StreamOptions& stream_options() const { return so_; }
    const ObjectEnd& root() const { return root_; }

private:
    StreamOptions so_;
    ObjectEnd root_;
};

} // namespace

Usage parse_usage_object(std::string_view json_object) {
    UsageHandler handler;
    JsonScanner scanner;
    scanner.feed(json_object, handler);
    if (scanner.finish() != JsonScanner::Status::complete) return {};
    return handler.result(); // clamped: cached <= input, reasoning <= output
}

std::string sanitize_model(std::string_view raw) {
    if (raw.empty()) return "none";
    std::string out(raw.substr(0, kMaxModelName));
    for (char& c : out)
        if (c < 0x20 || c > 0x7e) c = '_'; // char may be signed: bytes >= 0x80 are negative
    return out;
}

RequestInfo inspect_request(std::string_view body) {
    RequestInfo info;
    info.model = "none";
    RequestHandler handler(info);
    JsonScanner scanner;
    scanner.feed(body, handler);
    info.is_json_object = scanner.finish() == JsonScanner::Status::complete;
    return info;
}

bool inject_include_usage(std::string_view body, std::string& out) {
    InjectHandler handler;
    JsonScanner scanner;
    scanner.feed(body, handler);
    if (scanner.finish() != JsonScanner::Status::complete) return false;

    const auto& so = handler.stream_options();
    out.clear();
    auto splice = [&](std::size_t begin, std::size_t end, std::string_view text) {
        out.reserve(body.size() + text.size());
        out.append(body.substr(0, begin));
        out.append(text);
        out.append(body.substr(end));
    };

    if (!so.found) {
        // After the last member (before any whitespace ahead of the closing
        // brace), so pretty-printed bodies stay readable.
        const auto& root = handler.root();
        const std::string_view member = R"("stream_options":{"include_usage":true})";
        if (root.members == 0) {
            splice(root.close, root.close, member);
        } else {
            std::string text = ",";
            text += member;
            splice(root.last_value_end, root.last_value_end, text);
        }
        return true;
    }
    if (body.substr(so.begin, so.end - so.begin) == "null") {
        splice(so.begin, so.end, R"({"include_usage":true})");
        return true;
    }
    if (so.first != '{') return false;
    if (!so.has_include_usage) {
        splice(so.begin + 1, so.begin + 1,
               so.members == 0 ? R"("include_usage":true)" : R"("include_usage":true,)");
        return true;
    }
    if (so.include_usage_is_true) {
        out.assign(body);
        return true;
    }
    if (!so.include_usage_replaceable) return false; // a string, a number...: not ours to fix
    splice(so.include_usage_begin, so.include_usage_end, "true");
    return true;
}

} // namespace relaymeter::usage
