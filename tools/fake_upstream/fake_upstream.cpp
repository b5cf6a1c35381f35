// The fake upstream: an Asio/Beast server, one io_context per thread, that
// answers each parsed request by executing the handler's raw-byte Step script.
#include "fake_upstream.hpp"

#include <relaymeter/net.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace relaymeter::fake {

// ---------------------------------------------------------------- Gate

void Gate::open() {
    std::vector<std::function<void()>> waiters;
    {
        std::lock_guard lk(mu_);
        if (open_) return;
        open_ = true;
        waiters.swap(waiters_);
    }
    cv_.notify_all();
    for (auto& w : waiters) w();
}

bool Gate::is_open() const {
    std::lock_guard lk(mu_);
    return open_;
}

bool Gate::wait(std::chrono::milliseconds timeout) const {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, timeout, [this] { return open_; });
}

bool Gate::add_waiter(std::function<void()> fn) {
    std::lock_guard lk(mu_);
    if (open_) return false;
    waiters_.push_back(std::move(fn));
    return true;
}

// ---------------------------------------------------------------- Response

Response& Response::write(std::string bytes) {
    Step s;
    s.kind = Step::Kind::Write;
    s.bytes = std::move(bytes);
    steps.push_back(std::move(s));
    return *this;
}

Response& Response::delay(std::chrono::microseconds d) {
    Step s;
    s.kind = Step::Kind::Delay;
    s.delay = d;
    steps.push_back(std::move(s));
    return *this;
}

Response& Response::wait(std::shared_ptr<Gate> gate) {
    Step s;
    s.kind = Step::Kind::WaitGate;
    s.gate = std::move(gate);
    steps.push_back(std::move(s));
    return *this;
}

Response& Response::close() {
    Step s;
    s.kind = Step::Kind::Close;
    steps.push_back(std::move(s));
    return *this;
}

Response& Response::reset() {
    Step s;
    s.kind = Step::Kind::Reset;
    steps.push_back(std::move(s));
    return *this;
}

Response& Response::hang() {
    Step s;
    s.kind = Step::Kind::Hang;
    steps.push_back(std::move(s));
    return *this;
}

namespace {

std::string status_line(int status) {
    std::string reason;
    if (status >= 100 && status <= 999) {
        auto r = http::obsolete_reason(http::int_to_status(static_cast<unsigned>(status)));
        if (r != "<unknown-status>") reason.assign(r.data(), r.size());
    }
    if (reason.empty()) reason = "Unknown";
    return "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string chunk(std::string_view data) {
    char hex[20];
    int n = std::snprintf(hex, sizeof hex, "%zx\r\n", data.size());
    std::string out;
    out.reserve(static_cast<std::size_t>(n) + data.size() + 2);
    out.append(hex, static_cast<std::size_t>(n));
    out.append(data);
    out.append("\r\n");
    return out;
}

constexpr std::string_view kLastChunk = "0\r\n\r\n";
constexpr std::string_view kSseHead = "HTTP/1.1 200 OK\r\n"
                                      "Content-Type: text/event-stream\r\n"
                                      "Cache-Control: no-cache\r\n"
                                      "Transfer-Encoding: chunked\r\n\r\n";
// The default handler's responses also carry an upstream request id, as OpenAI's do.
constexpr std::string_view kOpenAISseHead = "HTTP/1.1 200 OK\r\n"
                                            "Content-Type: text/event-stream\r\n"
                                            "Cache-Control: no-cache\r\n"
                                            "x-request-id: req_fake\r\n"
                                            "Transfer-Encoding: chunked\r\n\r\n";

} // namespace

Response Response::json(int status, const std::string& body,
                        const std::map<std::string, std::string>& extra_headers) {
    bool has_type = false;
    bool has_length = false;
    std::string extra;
    for (const auto& [name, value] : extra_headers) {
        has_type = has_type || iequals(name, "content-type");
        has_length = has_length || iequals(name, "content-length") || iequals(name, "transfer-encoding");
        extra += name;
        extra += ": ";
        extra += value;
        extra += "\r\n";
    }
    std::string out = status_line(status);
    out.reserve(out.size() + extra.size() + body.size() + 96);
    if (!has_type) out += "Content-Type: application/json\r\n";
    if (!has_length) out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    out += extra;
    out += "\r\n";
    out += body;
    Response r;
    r.write(std::move(out));
    return r;
}

Response Response::sse(const std::vector<std::string>& events, const std::vector<std::shared_ptr<Gate>>& gates,
                       std::chrono::microseconds interval) {
    Response r;
    std::string pending(kSseHead); // bytes not yet turned into a Write step
    auto flush = [&] {
        if (!pending.empty()) r.write(std::move(pending));
        pending.clear();
    };
    for (std::size_t k = 0; k <= events.size(); ++k) {
        if (k >= 1 && k - 1 < gates.size() && gates[k - 1]) {
            flush();
            r.wait(gates[k - 1]);
        }
        if (k == events.size()) {
            pending.append(kLastChunk);
            break;
        }
        if (k >= 1 && interval.count() > 0) {
            flush();
            r.delay(interval);
        }
        if (!events[k].empty()) pending += chunk(events[k]); // an empty chunk would end the body
    }
    flush();
    return r;
}

// ---------------------------------------------------------------- openai_handler

namespace {

using ojson = nlohmann::ordered_json;

enum class Endpoint { Chat, Completions, Embeddings, Responses, Models, Unknown };

struct RequestInfo {
    std::string model = "fake-model";
    bool stream = false;
    bool include_usage = false;
    std::optional<std::uint64_t> max_tokens;
    std::size_t inputs = 1; // embeddings
    bool openai_headers = false; // answer with api.openai.com's header fields
};

// A scanner for the few top-level fields the fake needs; anything unusual
// (escapes in the model name, malformed JSON) returns false and the caller
// falls back to nlohmann.
class Scan {
public:
    explicit Scan(std::string_view s) : s_(s) {}

    bool request(RequestInfo& info) {
        bool ok = object([&](std::string_view key) -> bool {
            if (key == "model") {
                std::string_view v;
                if (!ws() || s_[p_] != '"') return skip();
                bool esc = false;
                if (!string(v, esc) || esc) return false;
                info.model.assign(v);
                return true;
            }
            if (key == "stream") return boolean(info.stream);
            if (key == "stream_options") {
                if (!ws() || s_[p_] != '{') return skip();
                return object([&](std::string_view k2) -> bool {
                    if (k2 == "include_usage") return boolean(info.include_usage);
                    return skip();
                });
            }
            if (key == "max_tokens" || key == "max_completion_tokens" || key == "max_output_tokens") {
                if (!ws()) return false;
                if (std::isdigit(static_cast<unsigned char>(s_[p_]))) {
                    std::uint64_t v = 0;
                    auto [ptr, ec] = std::from_chars(s_.data() + p_, s_.data() + s_.size(), v);
                    if (ec != std::errc()) return false;
                    p_ = static_cast<std::size_t>(ptr - s_.data());
                    if (p_ < s_.size() && (s_[p_] == '.' || s_[p_] == 'e' || s_[p_] == 'E')) return false;
                    info.max_tokens = info.max_tokens ? std::min(*info.max_tokens, v) : v;
                    return true;
                }
                return skip();
            }
            if (key == "input") return count_inputs(info.inputs);
            return skip();
        });
        return ok && !ws(); // nothing after the object
    }

private:
    bool ws() {
        while (p_ < s_.size() && (s_[p_] == ' ' || s_[p_] == '\t' || s_[p_] == '\n' || s_[p_] == '\r')) ++p_;
        return p_ < s_.size();
    }

    bool string(std::string_view& out, bool& esc) {
        if (p_ >= s_.size() || s_[p_] != '"') return false;
        std::size_t start = ++p_;
        while (p_ < s_.size()) {
            char c = s_[p_];
            if (c == '\\') {
                esc = true;
                p_ += 2;
                continue;
            }
            if (c == '"') {
                out = s_.substr(start, p_ - start);
                ++p_;
                return true;
            }
            if (static_cast<unsigned char>(c) < 0x20) return false;
            ++p_;
        }
        return false;
    }

    bool boolean(bool& out) {
        if (!ws()) return false;
        if (s_.substr(p_, 4) == "true") {
            out = true;
            p_ += 4;
            return true;
        }
        if (s_.substr(p_, 5) == "false") {
            out = false;
            p_ += 5;
            return true;
        }
        return skip();
    }

    // Skips one value (structure-checked loosely; nlohmann is the fallback).
    bool skip() {
        if (!ws()) return false;
        char c = s_[p_];
        if (c == '"') {
            std::string_view v;
            bool esc = false;
            return string(v, esc);
        }
        if (c == '{' || c == '[') {
            int depth = 0;
            while (p_ < s_.size()) {
                char d = s_[p_];
                if (d == '"') {
                    std::string_view v;
                    bool esc = false;
                    if (!string(v, esc)) return false;
                    continue;
                }
                if (d == '{' || d == '[') ++depth;
                if (d == '}' || d == ']') --depth;
                ++p_;
                if (depth == 0) return true;
            }
            return false;
        }
        std::size_t start = p_;
        while (p_ < s_.size() && s_[p_] != ',' && s_[p_] != '}' && s_[p_] != ']' && s_[p_] != ' ' &&
               s_[p_] != '\n' && s_[p_] != '\r' && s_[p_] != '\t')
            ++p_;
        return p_ > start;
    }

    bool count_inputs(std::size_t& n) {
        if (!ws()) return false;
        if (s_[p_] != '[') {
            n = 1;
            return skip();
        }
        ++p_;
        n = 0;
        bool numbers = false;
        if (!ws()) return false;
        if (s_[p_] == ']') {
            ++p_;
            return true;
        }
        for (;;) {
            if (!ws()) return false;
            if (n == 0) numbers = s_[p_] == '-' || std::isdigit(static_cast<unsigned char>(s_[p_]));
            if (!skip()) return false;
            ++n;
            if (!ws()) return false;
            if (s_[p_] == ',') {
                ++p_;
                continue;
            }
            if (s_[p_] == ']') {
                ++p_;
                break;
            }
            return false;
        }
        if (numbers) n = 1; // one input given as token ids
        return true;
    }

    template <class OnMember>
    bool object(OnMember&& on_member) {
        if (!ws() || s_[p_] != '{') return false;
        ++p_;
        if (!ws()) return false;
        if (s_[p_] == '}') {
            ++p_;
            return true;
        }
        for (;;) {
            std::string_view key;
            bool esc = false;
            if (!ws() || !string(key, esc)) return false;
            if (!ws() || s_[p_] != ':') return false;
            ++p_;
            if (!on_member(key)) return false;
            if (!ws()) return false;
            if (s_[p_] == ',') {
                ++p_;
                continue;
            }
            if (s_[p_] == '}') {
                ++p_;
                return true;
            }
            return false;
        }
    }

    std::string_view s_;
    std::size_t p_ = 0;
};

bool parse_with_nlohmann(const std::string& body, RequestInfo& info) {
    auto j = nlohmann::json::parse(body, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return false;
    if (auto it = j.find("model"); it != j.end() && it->is_string()) info.model = it->get<std::string>();
    if (auto it = j.find("stream"); it != j.end() && it->is_boolean()) info.stream = it->get<bool>();
    if (auto it = j.find("stream_options"); it != j.end() && it->is_object()) {
        if (auto iu = it->find("include_usage"); iu != it->end() && iu->is_boolean())
            info.include_usage = iu->get<bool>();
    }
    for (const char* k : {"max_tokens", "max_completion_tokens", "max_output_tokens"}) {
        if (auto it = j.find(k); it != j.end() && it->is_number_unsigned()) {
            auto v = it->get<std::uint64_t>();
            info.max_tokens = info.max_tokens ? std::min(*info.max_tokens, v) : v;
        }
    }
    if (auto it = j.find("input"); it != j.end() && it->is_array()) {
        info.inputs = it->size();
        if (!it->empty() && (*it)[0].is_number()) info.inputs = 1;
    }
    return true;
}

Endpoint route(std::string_view target) {
    auto path = target.substr(0, target.find('?'));
    if (path.substr(0, 4) == "/v1/") path.remove_prefix(3);
    if (path == "/chat/completions") return Endpoint::Chat;
    if (path == "/completions") return Endpoint::Completions;
    if (path == "/embeddings") return Endpoint::Embeddings;
    if (path == "/responses") return Endpoint::Responses;
    if (path == "/models") return Endpoint::Models;
    return Endpoint::Unknown;
}

std::string error_body(const std::string& message, const char* type, const char* code) {
    ojson e;
    e["error"]["message"] = message;
    e["error"]["type"] = type;
    e["error"]["param"] = nullptr;
    e["error"]["code"] = code ? ojson(code) : ojson(nullptr);
    return e.dump();
}

constexpr std::int64_t kCreated = 1700000000;
constexpr const char* kFingerprint = "fp_fake";

struct Renderer {
    const OpenAIOptions& o;
    const RequestInfo& info;
    std::uint64_t completion;

    std::string piece(unsigned k) const { return k == 0 ? "Hello" : " tok" + std::to_string(k); }
    std::string text() const {
        std::string t;
        for (unsigned k = 0; k < o.stream_chunks; ++k) t += piece(k);
        return t;
    }

    ojson chat_usage() const {
        ojson u;
        u["prompt_tokens"] = o.prompt_tokens;
        u["completion_tokens"] = completion;
        u["total_tokens"] = o.prompt_tokens + completion;
        u["prompt_tokens_details"] = {{"cached_tokens", o.cached_tokens}, {"audio_tokens", 0}};
        u["completion_tokens_details"] = {{"reasoning_tokens", o.reasoning_tokens},
                                          {"audio_tokens", 0},
                                          {"accepted_prediction_tokens", 0},
                                          {"rejected_prediction_tokens", 0}};
        return u;
    }

    ojson responses_usage() const {
        ojson u;
        u["input_tokens"] = o.prompt_tokens;
        u["input_tokens_details"] = {{"cached_tokens", o.cached_tokens}};
        u["output_tokens"] = completion;
        u["output_tokens_details"] = {{"reasoning_tokens", o.reasoning_tokens}};
        u["total_tokens"] = o.prompt_tokens + completion;
        return u;
    }

    ojson chunk_base(const char* object) const {
        ojson c;
        c["id"] = std::string(object[0] == 'c' ? "chatcmpl-fake" : "cmpl-fake");
        c["object"] = object;
        c["created"] = kCreated;
        c["model"] = info.model;
        c["system_fingerprint"] = kFingerprint;
        return c;
    }

    std::vector<std::string> chat_events() const {
        std::vector<std::string> ev;
        auto emit = [&](ojson c) { ev.push_back("data: " + c.dump() + "\n\n"); };
        auto choice = [&](ojson delta, ojson finish) {
            ojson c = chunk_base("chat.completion.chunk");
            ojson ch;
            ch["index"] = 0;
            ch["delta"] = std::move(delta);
            ch["logprobs"] = nullptr;
            ch["finish_reason"] = std::move(finish);
            c["choices"] = ojson::array({std::move(ch)});
            if (info.include_usage) c["usage"] = nullptr;
            return c;
        };
        emit(choice({{"role", "assistant"}, {"content", ""}, {"refusal", nullptr}}, nullptr));
        for (unsigned k = 0; k < o.stream_chunks; ++k) emit(choice({{"content", piece(k)}}, nullptr));
        emit(choice(ojson::object(), "stop"));
        if (info.include_usage) {
            ojson c = chunk_base("chat.completion.chunk");
            c["choices"] = ojson::array();
            c["usage"] = chat_usage();
            emit(std::move(c));
        }
        ev.emplace_back("data: [DONE]\n\n");
        return ev;
    }

    std::string chat_body() const {
        ojson r;
        r["id"] = "chatcmpl-fake";
        r["object"] = "chat.completion";
        r["created"] = kCreated;
        r["model"] = info.model;
        ojson msg;
        msg["role"] = "assistant";
        msg["content"] = text();
        msg["refusal"] = nullptr;
        ojson ch;
        ch["index"] = 0;
        ch["message"] = std::move(msg);
        ch["logprobs"] = nullptr;
        ch["finish_reason"] = "stop";
        r["choices"] = ojson::array({std::move(ch)});
        r["usage"] = chat_usage();
        r["system_fingerprint"] = kFingerprint;
        return r.dump();
    }

    std::vector<std::string> completion_events() const {
        std::vector<std::string> ev;
        auto emit = [&](ojson c) { ev.push_back("data: " + c.dump() + "\n\n"); };
        auto choice = [&](std::string t, ojson finish) {
            ojson c = chunk_base("text_completion");
            ojson ch;
            ch["text"] = std::move(t);
            ch["index"] = 0;
            ch["logprobs"] = nullptr;
            ch["finish_reason"] = std::move(finish);
            c["choices"] = ojson::array({std::move(ch)});
            if (info.include_usage) c["usage"] = nullptr;
            return c;
        };
        for (unsigned k = 0; k < o.stream_chunks; ++k) emit(choice(piece(k), nullptr));
        emit(choice("", "stop"));
        if (info.include_usage) {
            ojson c = chunk_base("text_completion");
            c["choices"] = ojson::array();
            c["usage"] = chat_usage();
            emit(std::move(c));
        }
        ev.emplace_back("data: [DONE]\n\n");
        return ev;
    }

    std::string completion_body() const {
        ojson r;
        r["id"] = "cmpl-fake";
        r["object"] = "text_completion";
        r["created"] = kCreated;
        r["model"] = info.model;
        ojson ch;
        ch["text"] = text();
        ch["index"] = 0;
        ch["logprobs"] = nullptr;
        ch["finish_reason"] = "stop";
        r["choices"] = ojson::array({std::move(ch)});
        r["usage"] = chat_usage();
        r["system_fingerprint"] = kFingerprint;
        return r.dump();
    }

    ojson response_object(bool completed) const {
        ojson r;
        r["id"] = "resp_fake";
        r["object"] = "response";
        r["created_at"] = kCreated;
        r["status"] = completed ? "completed" : "in_progress";
        r["error"] = nullptr;
        r["model"] = info.model;
        r["output"] = ojson::array();
        if (completed) {
            ojson content;
            content["type"] = "output_text";
            content["text"] = text();
            content["annotations"] = ojson::array();
            ojson item;
            item["type"] = "message";
            item["id"] = "msg_fake";
            item["status"] = "completed";
            item["role"] = "assistant";
            item["content"] = ojson::array({std::move(content)});
            r["output"].push_back(std::move(item));
        }
        r["usage"] = completed ? responses_usage() : ojson(nullptr);
        return r;
    }

    std::vector<std::string> responses_events() const {
        std::vector<std::string> ev;
        std::uint64_t seq = 0;
        auto emit = [&](const char* type, ojson data) {
            ojson d;
            d["type"] = type;
            d["sequence_number"] = seq++;
            for (auto& [k, v] : data.items()) d[k] = v;
            ev.push_back(std::string("event: ") + type + "\ndata: " + d.dump() + "\n\n");
        };
        emit("response.created", {{"response", response_object(false)}});
        for (unsigned k = 0; k < o.stream_chunks; ++k) {
            ojson d;
            d["item_id"] = "msg_fake";
            d["output_index"] = 0;
            d["content_index"] = 0;
            d["delta"] = piece(k);
            emit("response.output_text.delta", std::move(d));
        }
        emit("response.completed", {{"response", response_object(true)}});
        return ev;
    }

    std::string embeddings_body() const {
        ojson r;
        r["object"] = "list";
        r["data"] = ojson::array();
        for (std::size_t i = 0; i < std::max<std::size_t>(1, info.inputs); ++i) {
            ojson e;
            e["object"] = "embedding";
            e["index"] = i;
            ojson v = ojson::array();
            for (int d = 0; d < 8; ++d) v.push_back(static_cast<double>((d + 1) * (i % 7 + 1)) / 64.0);
            e["embedding"] = std::move(v);
            r["data"].push_back(std::move(e));
        }
        r["model"] = info.model;
        r["usage"] = {{"prompt_tokens", o.prompt_tokens}, {"total_tokens", o.prompt_tokens}};
        return r.dump();
    }
};

struct OpenAIState {
    OpenAIOptions options;
    std::atomic<std::uint64_t> served{0};
    std::mutex cache_mu;
    std::unordered_map<std::string, std::shared_ptr<const Response>> cache;

    bool next_is_error() {
        if (options.error_rate <= 0.0) return false;
        std::uint64_t n = served.fetch_add(1) + 1; // 1-based
        if (options.error_rate >= 1.0) return true;
        auto errors_after = [&](std::uint64_t m) {
            return static_cast<std::uint64_t>(static_cast<long double>(m) * options.error_rate + 1e-9L);
        };
        return errors_after(n) > errors_after(n - 1); // exactly floor(n * rate) errors after n requests
    }

    Response with_latency(Response body, const std::string& model) const {
        auto latency = options.latency;
        if (auto it = options.model_latency.find(model); it != options.model_latency.end()) latency = it->second;
        if (latency.count() <= 0) return body;
        Response r;
        r.delay(latency);
        for (auto& s : body.steps) r.steps.push_back(std::move(s));
        return r;
    }

    // events = `lead` opening events, options.stream_chunks content events,
    // then the closing ones. Paced like a model: the opening events go with
    // the first content event, chunk_interval passes before each further
    // content event and before the closing group (finish, usage, [DONE]),
    // so a stream lasts latency + stream_chunks * chunk_interval.
    Response stream_response(const std::vector<std::string>& events, std::size_t lead) const {
        Response r;
        std::string pending(kOpenAISseHead);
        bool paced = options.chunk_interval.count() > 0;
        std::size_t n = options.stream_chunks;
        for (std::size_t i = 0; i < events.size(); ++i) {
            // a content event after the first, or the first closing event
            bool starts_group = (i > lead && i < lead + n) || i == lead + n;
            if (paced && starts_group) {
                r.write(std::move(pending));
                pending.clear();
                r.delay(options.chunk_interval);
            }
            pending += chunk(events[i]);
        }
        pending.append(kLastChunk);
        r.write(std::move(pending));
        return r;
    }

    Response json_ok(std::string body, const RequestInfo& info) const {
        static const std::map<std::string, std::string> plain{{"x-request-id", "req_fake"}};
        static const std::map<std::string, std::string> openai{
            {"date", "Fri, 04 Dec 2026 18:00:00 GMT"},
            {"access-control-expose-headers", "X-Request-ID"},
            {"openai-organization", "user-fake0000000000000000000"},
            {"openai-processing-ms", "412"},
            {"openai-project", "proj_fake000000000000000000"},
            {"openai-version", "2020-10-01"},
            {"x-ratelimit-limit-requests", "10000"},
            {"x-ratelimit-limit-tokens", "30000000"},
            {"x-ratelimit-remaining-requests", "9999"},
            {"x-ratelimit-remaining-tokens", "29999950"},
            {"x-ratelimit-reset-requests", "6ms"},
            {"x-ratelimit-reset-tokens", "0s"},
            {"x-request-id", "req_fake"},
            {"strict-transport-security", "max-age=31536000; includeSubDomains; preload"},
            {"cf-cache-status", "DYNAMIC"},
            {"set-cookie", "__cf_bm=fake0000000000000000000000000000000000000000-1733335200-1.0.1.1-fake; path=/; "
                           "expires=Fri, 04-Dec-26 18:30:00 GMT; domain=.api.openai.com; HttpOnly; Secure; "
                           "SameSite=None"},
            {"x-content-type-options", "nosniff"},
            {"server", "cloudflare"},
            {"cf-ray", "8f1e2d3c4b5a6978-FRA"},
            {"alt-svc", "h3=\":443\"; ma=86400"},
        };
        return Response::json(200, body, info.openai_headers ? openai : plain);
    }

    Response render(Endpoint ep, const RequestInfo& info) const {
        std::uint64_t completion = options.completion_tokens;
        if (info.max_tokens) completion = std::min(completion, *info.max_tokens);
        Renderer rr{options, info, completion};
        switch (ep) {
        case Endpoint::Chat:
            return with_latency(info.stream ? stream_response(rr.chat_events(), 1) : json_ok(rr.chat_body(), info),
                                info.model);
        case Endpoint::Completions:
            return with_latency(info.stream ? stream_response(rr.completion_events(), 0)
                                            : json_ok(rr.completion_body(), info), info.model);
        case Endpoint::Responses:
            return with_latency(info.stream ? stream_response(rr.responses_events(), 1)
                                            : json_ok(rr.response_object(true).dump(), info), info.model);
        case Endpoint::Embeddings:
            return with_latency(json_ok(rr.embeddings_body(), info), info.model);
        default:
            break;
        }
        return Response::json(500, error_body("unroutable", "server_error", nullptr));
    }

    Response handle(const Request& req) {
        Endpoint ep = route(req.target);
        if (ep == Endpoint::Unknown)
            return Response::json(404, error_body("Invalid URL (" + req.method + " " + req.target + ")",
                                                  "invalid_request_error", "unknown_url"));
        if (ep == Endpoint::Models) {
            ojson r;
            r["object"] = "list";
            r["data"] = ojson::array();
            for (const char* id : {"gpt-4.1", "claude-sonnet-4.5", "gemini-2.5-flash", "deepseek-v3.2"})
                r["data"].push_back({{"id", id}, {"object", "model"}, {"created", kCreated}, {"owned_by", "fake"}});
            return Response::json(200, r.dump());
        }
        RequestInfo info;
        if (!Scan(req.body).request(info)) {
            info = RequestInfo{};
            if (!parse_with_nlohmann(req.body, info))
                return Response::json(400, error_body("We could not parse the JSON body of your request.",
                                                      "invalid_request_error", nullptr));
        }
        if (next_is_error()) {
            const char* type = options.error_status == 429 ? "rate_limit_error" : "server_error";
            return with_latency(Response::json(
                options.error_status,
                error_body("fake upstream error (status " + std::to_string(options.error_status) + ")", type,
                           nullptr)),
                info.model);
        }
        if (options.openai_headers) {
            info.openai_headers = true;
        } else if (options.openai_headers_for_sdk) {
            const auto ua = req.headers.find("user-agent");
            info.openai_headers = ua != req.headers.end() && ua->second.rfind("OpenAI/", 0) == 0;
        }
        std::string key;
        key.reserve(info.model.size() + 48);
        key += static_cast<char>('0' + static_cast<int>(ep));
        key += info.openai_headers ? 'O' : '-';
        key += info.stream ? 'S' : 'P';
        key += info.include_usage ? 'U' : '-';
        key += std::to_string(info.max_tokens ? std::min(*info.max_tokens, options.completion_tokens)
                                              : options.completion_tokens);
        key += '/';
        key += std::to_string(ep == Endpoint::Embeddings ? info.inputs : 0);
        key += '/';
        key += info.model;
        {
            std::lock_guard lk(cache_mu);
            if (auto it = cache.find(key); it != cache.end()) return *it->second;
        }
        auto rendered = std::make_shared<const Response>(render(ep, info));
        std::lock_guard lk(cache_mu);
        if (cache.size() >= 1024) cache.clear();
        cache.emplace(std::move(key), rendered);
        return *rendered;
    }
};

} // namespace

Handler openai_handler(OpenAIOptions options) {
    auto state = std::make_shared<OpenAIState>();
    state->options = options;
    return [state](const Request& req) { return state->handle(req); };
}

// ---------------------------------------------------------------- FakeUpstream

namespace {

// Lets Gate waiters on other threads post to the io_contexts only while
// they still exist.
struct Life {
    std::mutex mu;
    bool alive = true;
};

// One live connection, as seen by stop() and by gate waiters.
struct Conn {
    explicit Conn(tcp::socket& s) : sock(&s), timer(s.get_executor()) {}
    tcp::socket* sock; // null once the session has ended
    asio::steady_timer timer;
    const Gate* waiting_gate = nullptr;
    void abort() {
        error_code ec;
        if (sock) sock->close(ec);
        timer.cancel();
    }
};

} // namespace

struct FakeUpstream::Impl {
    struct Worker {
        asio::io_context ioc{1};
        std::optional<asio::executor_work_guard<asio::io_context::executor_type>> guard{ioc.get_executor()};
        std::unordered_set<Conn*> conns; // touched only on this worker's thread
        std::thread thread;
    };

    Options options_;
    std::mutex handler_mu_;
    std::shared_ptr<const Handler> handler_;

    mutable std::mutex mu_; // requests_ and the condition below
    mutable std::condition_variable cv_;
    mutable std::atomic<int> waiting_{0};
    std::vector<Request> requests_;
    std::atomic<std::size_t> request_count_{0};
    std::atomic<std::size_t> accepted_{0};
    std::atomic<std::size_t> open_{0};

    std::shared_ptr<Life> life_ = std::make_shared<Life>();
    std::atomic<bool> stopping_{false};
    std::mutex stop_mu_;
    bool stopped_ = false;
    std::size_t finished_threads_ = 0; // under mu_

    std::optional<ssl::context> tls_;
    std::vector<std::unique_ptr<Worker>> workers_;
    std::optional<tcp::acceptor> acceptor_;
    std::uint16_t port_ = 0;

    void notify() {
        if (waiting_.load() > 0) {
            { std::lock_guard lk(mu_); }
            cv_.notify_all();
        }
    }

    std::shared_ptr<const Handler> handler() {
        std::lock_guard lk(handler_mu_);
        return handler_;
    }

    awaitable<void> accept_loop() {
        std::size_t next = 0;
        asio::steady_timer backoff(acceptor_->get_executor());
        for (;;) {
            Worker& w = *workers_[next++ % workers_.size()];
            error_code ec;
            auto s = co_await acceptor_->async_accept(w.ioc, asio::redirect_error(use_awaitable, ec));
            if (stopping_) co_return;
            if (ec) {
                if (ec == asio::error::operation_aborted || !acceptor_->is_open()) co_return;
                backoff.expires_after(std::chrono::milliseconds(10)); // e.g. EMFILE
                co_await backoff.async_wait(asio::redirect_error(use_awaitable, ec));
                continue;
            }
            accepted_.fetch_add(1);
            tcp::socket sock(std::move(s));
            sock.set_option(tcp::no_delay(true), ec);
            asio::co_spawn(w.ioc, session(w, std::move(sock)), asio::detached);
        }
    }

    awaitable<void> session(Worker& w, tcp::socket sock) {
        if (stopping_) co_return;
        auto conn = std::make_shared<Conn>(sock);
        open_.fetch_add(1);
        notify();
        w.conns.insert(conn.get());
        struct Guard {
            Impl& impl;
            Worker& w;
            Conn* c;
            ~Guard() {
                c->sock = nullptr;
                w.conns.erase(c);
                impl.open_.fetch_sub(1);
                impl.notify();
            }
        } guard{*this, w, conn.get()};
        try {
            if (tls_) {
                beast::ssl_stream<tcp::socket> stream(std::move(sock), *tls_);
                conn->sock = &beast::get_lowest_layer(stream);
                error_code ec;
                co_await stream.async_handshake(ssl::stream_base::server, asio::redirect_error(use_awaitable, ec));
                if (ec || stopping_) co_return;
                co_await serve(stream, conn);
            } else {
                co_await serve(sock, conn);
            }
        } catch (const std::exception&) {
            // The connection dies; the fake carries on.
        }
    }

    template <class Stream>
    awaitable<void> serve(Stream& stream, const std::shared_ptr<Conn>& conn) {
        beast::flat_buffer buf;
        std::vector<asio::const_buffer> bufs;
        for (;;) {
            http::request_parser<http::string_body> parser;
            parser.body_limit(options_.body_limit);
            parser.header_limit(1024 * 1024);
            error_code ec;
            co_await http::async_read(stream, buf, parser, asio::redirect_error(use_awaitable, ec));
            if (ec || stopping_) co_return;
            bool client_keep_alive = parser.keep_alive();
            auto msg = parser.release();

            Request req;
            req.method.assign(msg.method_string().data(), msg.method_string().size());
            req.target.assign(msg.target().data(), msg.target().size());
            for (const auto& f : msg) {
                std::string name(f.name_string().data(), f.name_string().size());
                for (auto& ch : name) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
                auto [it, fresh] = req.headers.try_emplace(std::move(name), f.value().data(), f.value().size());
                if (!fresh) {
                    it->second += ", ";
                    it->second.append(f.value().data(), f.value().size());
                }
            }
            req.body = std::move(msg.body());

            Response resp;
            try {
                auto h = handler();
                resp = (h && *h) ? (*h)(req) : Response::json(500, R"({"error":{"message":"no handler"}})");
            } catch (const std::exception& e) {
                nlohmann::json err;
                err["error"]["message"] = std::string("handler threw: ") + e.what();
                resp = Response::json(500, err.dump());
            }
            if (options_.record_requests) {
                std::lock_guard lk(mu_);
                requests_.push_back(std::move(req));
                request_count_.fetch_add(1);
            } else {
                request_count_.fetch_add(1);
            }
            notify();

            if (!co_await execute(stream, conn, resp, bufs)) co_return;
            if (!resp.keep_alive || !client_keep_alive) {
                co_await graceful_close(stream, conn);
                co_return;
            }
        }
    }

    // Runs the steps; false when the connection is finished (closed, reset,
    // hung until gone, failed, or the fake is stopping).
    template <class Stream>
    awaitable<bool> execute(Stream& stream, const std::shared_ptr<Conn>& conn, const Response& resp,
                            std::vector<asio::const_buffer>& bufs) {
        const auto& steps = resp.steps;
        std::size_t i = 0;
        error_code ec;
        while (i < steps.size()) {
            const Step& s = steps[i];
            switch (s.kind) {
            case Step::Kind::Write: {
                bufs.clear();
                for (; i < steps.size() && steps[i].kind == Step::Kind::Write; ++i)
                    if (!steps[i].bytes.empty()) bufs.push_back(asio::buffer(steps[i].bytes));
                if (!bufs.empty()) co_await asio::async_write(stream, bufs, asio::redirect_error(use_awaitable, ec));
                if (ec || stopping_) co_return false;
                continue;
            }
            case Step::Kind::Delay:
                if (s.delay.count() > 0) {
                    conn->timer.expires_after(s.delay);
                    co_await conn->timer.async_wait(asio::redirect_error(use_awaitable, ec));
                    if (stopping_) co_return false;
                }
                break;
            case Step::Kind::WaitGate:
                if (s.gate && !co_await wait_gate(conn, s.gate)) co_return false;
                break;
            case Step::Kind::Close:
                co_await graceful_close(stream, conn);
                co_return false;
            case Step::Kind::Reset:
                conn->sock->set_option(asio::socket_base::linger(true, 0), ec);
                conn->sock->close(ec);
                co_return false;
            case Step::Kind::Hang: {
                std::array<char, 4096> sink;
                while (!stopping_) {
                    co_await conn->sock->async_read_some(asio::buffer(sink), asio::redirect_error(use_awaitable, ec));
                    if (ec) break;
                }
                co_return false;
            }
            }
            ++i;
        }
        co_return true;
    }

    awaitable<bool> wait_gate(const std::shared_ptr<Conn>& conn, const std::shared_ptr<Gate>& gate) {
        conn->waiting_gate = gate.get();
        auto ex = conn->timer.get_executor();
        for (;;) {
            std::weak_ptr<Conn> weak = conn;
            bool registered = gate->add_waiter([life = life_, ex, weak, g = gate.get()] {
                std::lock_guard lk(life->mu);
                if (!life->alive) return;
                asio::post(ex, [weak, g] {
                    if (auto c = weak.lock(); c && c->waiting_gate == g) c->timer.cancel();
                });
            });
            if (!registered) break; // open
            conn->timer.expires_at(asio::steady_timer::time_point::max());
            error_code ec;
            co_await conn->timer.async_wait(asio::redirect_error(use_awaitable, ec));
            if (stopping_) {
                conn->waiting_gate = nullptr;
                co_return false;
            }
            if (gate->is_open()) break;
        }
        conn->waiting_gate = nullptr;
        co_return true;
    }

    // FIN after what was written, then read and drop what the peer still
    // sends (so unread bytes do not turn the close into a RST), at most 1 s.
    // GCC 12 at -O1+ reports a false -Wmismatched-new-delete for this
    // coroutine's frame (Asio's awaitable_frame_base has matching class
    // operator new/delete); silenced here only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
    template <class Stream>
    awaitable<void> graceful_close(Stream& stream, const std::shared_ptr<Conn>& conn) {
        error_code ec;
        conn->timer.expires_after(std::chrono::seconds(1));
        conn->timer.async_wait([weak = std::weak_ptr<Conn>(conn)](error_code e) {
            if (e) return;
            if (auto c = weak.lock(); c && c->sock) {
                error_code ignored;
                c->sock->close(ignored);
            }
        });
        if constexpr (!std::is_same_v<Stream, tcp::socket>) {
            co_await stream.async_shutdown(asio::redirect_error(use_awaitable, ec)); // close_notify
        }
        if (conn->sock->is_open()) {
            conn->sock->shutdown(tcp::socket::shutdown_send, ec);
            std::array<char, 4096> sink;
            while (!stopping_ && conn->sock->is_open()) {
                co_await conn->sock->async_read_some(asio::buffer(sink), asio::redirect_error(use_awaitable, ec));
                if (ec) break;
            }
        }
        conn->timer.cancel();
        conn->sock->close(ec);
    }
#pragma GCC diagnostic pop

    void start() {
        auto address = asio::ip::make_address(options_.host);
        tcp::endpoint ep(address, options_.port);
        unsigned n = std::max(1u, options_.threads);
        for (unsigned i = 0; i < n; ++i) workers_.push_back(std::make_unique<Worker>());
        if (!options_.cert_file.empty()) {
            tls_.emplace(ssl::context::tls_server);
            tls_->set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 | ssl::context::no_sslv3);
            tls_->use_certificate_chain_file(options_.cert_file);
            tls_->use_private_key_file(options_.key_file.empty() ? options_.cert_file : options_.key_file,
                                       ssl::context::pem);
        }
        acceptor_.emplace(workers_[0]->ioc);
        acceptor_->open(ep.protocol());
        acceptor_->set_option(asio::socket_base::reuse_address(true));
        acceptor_->bind(ep);
        acceptor_->listen(asio::socket_base::max_listen_connections);
        port_ = acceptor_->local_endpoint().port();
        asio::co_spawn(workers_[0]->ioc, accept_loop(), asio::detached);
        for (auto& w : workers_) {
            Worker* wp = w.get();
            wp->thread = std::thread([this, wp] {
                for (;;) {
                    try {
                        wp->ioc.run();
                        break;
                    } catch (const std::exception&) {
                    }
                }
                {
                    std::lock_guard lk(mu_);
                    ++finished_threads_;
                }
                cv_.notify_all();
            });
        }
    }

    void stop() {
        std::lock_guard stop_lk(stop_mu_);
        if (stopped_) return;
        stopped_ = true;
        {
            std::lock_guard lk(life_->mu);
            life_->alive = false;
        }
        stopping_ = true;
        if (workers_.empty()) return;
        asio::post(workers_[0]->ioc, [this] {
            error_code ec;
            if (acceptor_) acceptor_->close(ec);
        });
        for (auto& w : workers_) {
            Worker* wp = w.get();
            asio::post(wp->ioc, [wp] {
                for (Conn* c : wp->conns) c->abort();
            });
            wp->guard.reset();
        }
        std::size_t running = 0;
        for (auto& w : workers_) running += w->thread.joinable() ? 1 : 0;
        {
            std::unique_lock lk(mu_);
            bool done = cv_.wait_for(lk, std::chrono::seconds(5), [&] { return finished_threads_ >= running; });
            if (!done)
                for (auto& w : workers_) w->ioc.stop(); // a handler that blocks, or a stuck operation
        }
        for (auto& w : workers_)
            if (w->thread.joinable()) w->thread.join();
        acceptor_.reset();
        for (auto& w : workers_) w.reset(); // destroys whatever is left, on this thread
        workers_.clear();
    }
};

FakeUpstream::FakeUpstream(Options options, Handler handler) : impl_(std::make_unique<Impl>()) {
    impl_->options_ = std::move(options);
    impl_->handler_ = std::make_shared<const Handler>(std::move(handler));
    try {
        impl_->start();
    } catch (...) {
        impl_->stop();
        throw;
    }
}

FakeUpstream::~FakeUpstream() { stop(); }

std::uint16_t FakeUpstream::port() const { return impl_->port_; }

std::string FakeUpstream::base_url() const {
    const auto& host = impl_->options_.host;
    std::string h = host.find(':') != std::string::npos ? "[" + host + "]" : host;
    return std::string(impl_->tls_ ? "https" : "http") + "://" + h + ":" + std::to_string(impl_->port_) + "/v1";
}

void FakeUpstream::set_handler(Handler handler) {
    auto h = std::make_shared<const Handler>(std::move(handler));
    std::lock_guard lk(impl_->handler_mu_);
    impl_->handler_ = std::move(h);
}

std::vector<Request> FakeUpstream::requests() const {
    std::lock_guard lk(impl_->mu_);
    return impl_->requests_;
}

std::size_t FakeUpstream::request_count() const { return impl_->request_count_.load(); }
std::size_t FakeUpstream::connections_accepted() const { return impl_->accepted_.load(); }
std::size_t FakeUpstream::connections_open() const { return impl_->open_.load(); }

bool FakeUpstream::wait_requests(std::size_t n, std::chrono::milliseconds timeout) const {
    impl_->waiting_.fetch_add(1);
    std::unique_lock lk(impl_->mu_);
    bool ok = impl_->cv_.wait_for(lk, timeout, [&] { return impl_->request_count_.load() >= n; });
    impl_->waiting_.fetch_sub(1);
    return ok;
}

bool FakeUpstream::wait_connections_open(std::size_t n, std::chrono::milliseconds timeout) const {
    impl_->waiting_.fetch_add(1);
    std::unique_lock lk(impl_->mu_);
    bool ok = impl_->cv_.wait_for(lk, timeout, [&] { return impl_->open_.load() == n; });
    impl_->waiting_.fetch_sub(1);
    return ok;
}

void FakeUpstream::stop() { impl_->stop(); }

} // namespace relaymeter::fake
