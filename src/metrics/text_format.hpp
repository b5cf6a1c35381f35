// Private to the metrics module: building blocks of the Prometheus text
// exposition 0.0.4, shared by exposition.cpp and process.cpp. Everything
// appends to one std::string (no iostreams).
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "relaymeter/metrics/exposition.hpp"

namespace relaymeter::metrics::text {

using Label = std::pair<std::string_view, std::string_view>;

inline void append_uint(std::string& out, std::uint64_t v) {
    char buf[24];
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    out.append(buf, r.ptr);
}

// Shortest text that parses back to the same double: costs are never rounded.
inline void append_double(std::string& out, double v) {
    if (std::isnan(v)) {
        out += "NaN";
    } else if (std::isinf(v)) {
        out += v > 0 ? "+Inf" : "-Inf";
    } else {
        char buf[32];
        const auto r = std::to_chars(buf, buf + sizeof buf, v);
        out.append(buf, r.ptr);
    }
}

// Label value escaping: backslash, double quote and newline.
inline void append_escaped(std::string& out, std::string_view v) {
    for (const char c : v) {
        switch (c) {
        case '\\': out += "\\\\"; break;
        case '"': out += "\\\""; break;
        case '\n': out += "\\n"; break;
        default: out += c;
        }
    }
}

inline bool valid_label_name(std::string_view name) {
    if (name.empty() || (name.size() >= 2 && name[0] == '_' && name[1] == '_')) return false;
    for (std::size_t i = 0; i < name.size(); ++i) {
        const char c = name[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
        if (!alpha && !(i > 0 && c >= '0' && c <= '9')) return false;
    }
    return true;
}

// `a="x",b="y"` for the constant labels (no trailing comma). Names that are not
// valid label names, that repeat, or that clash with the labels relaymeter sets
// itself (model, code, type, le, version) are left out: emitting them would make
// the whole exposition invalid. Config validation should reject them first.
inline std::string const_label_block(const ExpositionOptions& opts) {
    static constexpr std::string_view kReserved[] = {"model", "code", "type", "le", "version"};
    std::string block;
    std::string seen = ","; // ",name1,name2," for duplicate detection
    for (const auto& [name, value] : opts.const_labels) {
        if (!valid_label_name(name)) continue;
        bool reserved = false;
        for (const auto r : kReserved) reserved = reserved || name == r;
        if (reserved || seen.find("," + name + ",") != std::string::npos) continue;
        seen += name;
        seen += ',';
        if (!block.empty()) block += ',';
        block += name;
        block += "=\"";
        append_escaped(block, value);
        block += '"';
    }
    return block;
}

inline void append_family(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
    out += "# HELP ";
    out += name;
    out += ' ';
    out += help;
    out += "\n# TYPE ";
    out += name;
    out += ' ';
    out += type;
    out += '\n';
}

// `name{const,labels...} ` — the caller appends the value and '\n'.
inline void append_series(std::string& out, std::string_view name, std::string_view const_labels,
                          std::initializer_list<Label> labels) {
    out += name;
    if (const_labels.empty() && labels.size() == 0) {
        out += ' ';
        return;
    }
    out += '{';
    out += const_labels;
    bool first = const_labels.empty();
    for (const auto& [k, v] : labels) {
        if (!first) out += ',';
        first = false;
        out += k;
        out += "=\"";
        append_escaped(out, v);
        out += '"';
    }
    out += "} ";
}

inline void append_sample(std::string& out, std::string_view name, std::string_view const_labels,
                          std::initializer_list<Label> labels, std::uint64_t value) {
    append_series(out, name, const_labels, labels);
    append_uint(out, value);
    out += '\n';
}

inline void append_sample(std::string& out, std::string_view name, std::string_view const_labels,
                          std::initializer_list<Label> labels, double value) {
    append_series(out, name, const_labels, labels);
    append_double(out, value);
    out += '\n';
}

} // namespace relaymeter::metrics::text
