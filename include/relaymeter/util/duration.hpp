#pragma once

#include <chrono>

namespace relaymeter {

// Seconds from the config (a double) as a steady_clock duration.
inline std::chrono::steady_clock::duration seconds(double s) {
    return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

} // namespace relaymeter
