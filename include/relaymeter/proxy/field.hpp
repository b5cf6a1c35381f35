// Field names to Beast's field ids, for the fast head parsers.
#pragma once

#include <string_view>
#include <utility>

#include <boost/beast/http/field.hpp>

namespace relaymeter::proxy {

// http::string_to_field(name), for every name (Beast compares names with
// each byte's 0x20 bit ignored, and so does this) in about half its
// instructions (callgrind: ~55 against ~103 per name of an SDK exchange): a
// hash of the name's first and last 8 bytes and a compare of those words.
boost::beast::http::field field_id(std::string_view name);

} // namespace relaymeter::proxy
