// Shared by the ledger's sources; not part of the module's interface.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace relaymeter::ledger {

// N of every rotated file PATH.N that exists (N >= 1, no leading zero), ascending.
std::vector<std::uint64_t> rotated_indices(const std::string& path);

} // namespace relaymeter::ledger
