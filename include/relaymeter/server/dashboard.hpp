// GET /dashboard: the self-contained page from src/server/dashboard.html.
#pragma once

#include <string_view>

namespace relaymeter::server {

std::string_view dashboard_html();

} // namespace relaymeter::server
