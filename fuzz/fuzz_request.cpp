// libFuzzer target: the request scanner and rewriter (src/usage/usage.cpp):
// inspect_request and inject_include_usage.
//
// Input: a request body. Checks:
//   - the model is always label-safe: 1..kMaxModelName printable ASCII bytes;
//   - on valid JSON, inject_include_usage gives valid JSON (nlohmann accept)
//     in which inspect_request sees include_usage, and injecting again changes
//     nothing;
//   - on a JSON object without duplicate keys or \u escapes: inspect_request's
//     model, stream and include_usage equal nlohmann's reading, inject succeeds
//     exactly when stream_options is absent, null, or an object whose
//     include_usage is absent, a boolean or null, and its output parses to the
//     input with stream_options.include_usage set to true.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "fuzz_common.hpp"

namespace {

using relaymeter::usage::inject_include_usage;
using relaymeter::usage::inspect_request;
using relaymeter::usage::kMaxModelName;
using relaymeter::usage::sanitize_model;
namespace fz = relaymeter::fuzz;

bool label_safe(const std::string& m) {
    if (m.empty() || m.size() > kMaxModelName) return false;
    for (char c : m)
        if (c < 0x20 || c > 0x7e) return false;
    return true;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view body(reinterpret_cast<const char*>(data), size);

    const auto info = inspect_request(body);
    RM_FUZZ_CHECK(label_safe(info.model));

    std::string out;
    const bool injected = inject_include_usage(body, out);
    if (injected) {
        const auto after = inspect_request(out);
        RM_FUZZ_CHECK(after.is_json_object && after.include_usage);
    }

    if (!fz::valid_json(body)) return 0;
    const auto any = nlohmann::json::parse(body);
    RM_FUZZ_CHECK(info.is_json_object == any.is_object());
    if (injected) {
        RM_FUZZ_CHECK(fz::valid_json(out));
        const auto again = inspect_request(out);
        RM_FUZZ_CHECK(again.is_json_object && again.include_usage);
        RM_FUZZ_CHECK(again.model == info.model && again.stream == info.stream);
        std::string twice;
        RM_FUZZ_CHECK(inject_include_usage(out, twice));
        RM_FUZZ_CHECK(twice == out);
    }

    if (!any.is_object() || !fz::comparable(body)) return 0;
    const auto& doc = any;
    const auto model = doc.find("model");
    const std::string expected_model =
        model != doc.end() && model->is_string()
            ? sanitize_model(model->get<std::string>())
            : std::string("none");
    RM_FUZZ_CHECK(info.model == expected_model);
    RM_FUZZ_CHECK(info.stream == (doc.contains("stream") && doc["stream"] == true));
    const auto so = doc.find("stream_options");
    const bool include_usage = so != doc.end() && so->is_object() && so->contains("include_usage") &&
                               (*so)["include_usage"] == true;
    RM_FUZZ_CHECK(info.include_usage == include_usage);

    bool injectable = so == doc.end() || so->is_null();
    if (so != doc.end() && so->is_object()) {
        const auto iu = so->find("include_usage");
        injectable = iu == so->end() || iu->is_boolean() || iu->is_null();
    }
    RM_FUZZ_CHECK(injected == injectable);
    if (injected) {
        auto expected = doc;
        if (!expected["stream_options"].is_object()) expected["stream_options"] = nlohmann::json::object();
        expected["stream_options"]["include_usage"] = true;
        RM_FUZZ_CHECK(nlohmann::json::parse(out) == expected);
    }
    return 0;
}
