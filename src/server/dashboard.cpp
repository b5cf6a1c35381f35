// The built-in dashboard page, embedded at build time (see CMakeLists.txt):
// its own translation unit so that editing the page recompiles only this.
#include "relaymeter/server/dashboard.hpp"

#include "relaymeter_generated/dashboard_html.hpp"

namespace relaymeter::server {

std::string_view dashboard_html() { return generated::kDashboardHtml; }

} // namespace relaymeter::server
