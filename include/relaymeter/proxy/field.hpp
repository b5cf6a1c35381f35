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

// The Transfer-Encoding fields of a message, value by value: relaymeter
// takes off one transfer coding, chunked, alone in one field. Anything else
// (gzip, "gzip, chunked", two fields) cannot be relayed: Transfer-Encoding is
// hop-by-hop, so the peer would get coded bytes with nothing saying so.
class TransferCodings {
public:
    void add(std::string_view value);
    bool any() const { return fields_ > 0; }
    bool chunked_only() const { return fields_ == 1 && codings_ == 1 && !other_; }

private:
    unsigned fields_ = 0;
    unsigned codings_ = 0;
    bool other_ = false;
};

} // namespace relaymeter::proxy
