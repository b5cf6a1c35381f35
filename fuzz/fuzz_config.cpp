// libFuzzer target: the config loader (src/config/config.cpp, load_string).
//
// Input: YAML text. The loader must either return a Config or throw
// ConfigError; anything else escaping it (a yaml-cpp exception, another
// std::exception) or a crash is a bug. On success a few validated ranges are
// checked. ${VAR} lookups use a fixed fake environment.
//
// Inputs naming auth.keys_file are skipped: the loader reads that file, and a
// fuzzer-made path such as /dev/zero would only measure the file system.
// (That check runs LoadAll itself, so it first asks the loader's own guard
// against yaml-cpp 0.7's endless LoadAll; the loader gets every input.)
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include <yaml-cpp/yaml.h>

#include "fuzz_common.hpp"
#include "relaymeter/config/config.hpp"

namespace {

namespace cfg = relaymeter::config;

std::optional<std::string> fake_env(const std::string& name) {
    if (name == "RELAYMETER_UPSTREAM") return std::string("http://127.0.0.1:9000/v1");
    if (name == "EMPTY") return std::string();
    if (!name.empty() && name[0] == 'X') return name.substr(1);
    return std::nullopt;
}

bool names_keys_file(const std::string& text) {
    try {
        for (const YAML::Node& doc : YAML::LoadAll(text)) {
            if (!doc.IsMap()) continue;
            for (auto s = doc.begin(); s != doc.end(); ++s) {
                const YAML::Node k = s->first;
                const YAML::Node v = s->second;
                if (!k.IsScalar() || k.Scalar() != "auth" || !v.IsMap()) continue;
                for (auto f = v.begin(); f != v.end(); ++f) {
                    const YAML::Node fk = f->first;
                    if (fk.IsScalar() && fk.Scalar() == "keys_file") return true;
                }
            }
        }
    } catch (const YAML::Exception&) {
        return false; // the loader reports it: it never gets as far as keys_file
    }
    return false;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    if (!cfg::yaml_load_all_stall_line(text) && names_keys_file(text)) return 0;
    try {
        const cfg::Config c = cfg::load_string(text, "fuzz.yaml", fake_env);
        RM_FUZZ_CHECK(c.alerts.window_s >= 60 && c.alerts.window_s <= 3600);
        RM_FUZZ_CHECK(!c.upstream.host.empty());
        RM_FUZZ_CHECK(c.upstream.port != 0);
        RM_FUZZ_CHECK(c.metrics.max_models >= 1);
        for (const auto& w : c.alerts.webhooks) RM_FUZZ_CHECK(!w.host.empty() && w.port != 0);
    } catch (const cfg::ConfigError& e) {
        RM_FUZZ_CHECK(!e.errors().empty());
        for (const auto& m : e.errors()) RM_FUZZ_CHECK(m.rfind("fuzz.yaml", 0) == 0);
    }
    return 0;
}
