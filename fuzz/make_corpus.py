#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets into fuzz/corpus/<target>/.

Run it after editing the seeds below; scripts/fuzz.sh never writes here (it
fuzzes a copy). fuzz_sse and fuzz_usage inputs start with a 5-byte header:
a mode byte (low 2 bits: 0 whole, 1 byte by byte, 2/3 random chunk sizes) and
a little-endian 32-bit seed for the chunk sizes (fuzz/fuzz_common.hpp).
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def header(mode, seed):
    return bytes([mode]) + struct.pack("<I", seed)


def sse(*events, eol="\n"):
    return "".join(events).replace("\n", eol).encode()


def data(obj):
    return "data: " + json.dumps(obj, separators=(",", ":")) + "\n\n"


chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1741570283, "model": "gpt-4.1",
         "system_fingerprint": "fp_1"}
usage_chat = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
              "prompt_tokens_details": {"cached_tokens": 6, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 4, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
usage_resp = {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 12}, "output_tokens": 87,
              "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 123}


def delta(content, finish=None):
    return dict(chunk, choices=[{"index": 0, "delta": {"content": content}, "logprobs": None,
                                 "finish_reason": finish}], usage=None)


chat_stream = [
    data(dict(chunk, choices=[{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                               "logprobs": None, "finish_reason": None}], usage=None)),
    data(delta("Hello")),
    data(delta(' "usage":{} \n\\ data: [DONE]\r\n')),
    data(dict(chunk, choices=[{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], usage=None)),
    data(dict(chunk, choices=[], usage=usage_chat)),
    "data: [DONE]\n\n",
]
legacy_stream = [
    data({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
          "choices": [{"text": " is", "index": 0, "logprobs": None, "finish_reason": "length"}], "usage": None}),
    data({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
          "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}),
    "data: [DONE]\n\n",
]
responses_stream = [
    "event: response.created\n" + data({"type": "response.created", "sequence_number": 0, "response": {
        "id": "resp_1", "object": "response", "status": "in_progress", "output": [], "usage": None}}),
    "event: response.output_text.delta\n" + data({"type": "response.output_text.delta", "sequence_number": 4,
                                                   "item_id": "msg_1", "output_index": 1, "content_index": 0,
                                                   "delta": 'Hi "usage"'}),
    "event: response.completed\n" + data({"type": "response.completed", "sequence_number": 9, "response": {
        "id": "resp_1", "object": "response", "status": "completed",
        "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi"}]}], "usage": usage_resp}}),
]
odd_stream = [
    ": keep-alive comment\n\n",
    "id: 7\nretry: 1000\nevent: message\n",
    "data: {\"choices\":[],\n",
    "data: \"usage\":{\"prompt_tokens\":3,\n",
    "data:\"completion_tokens\":1}}\n",
    ": a comment inside the event\n\n",
    "data\n\n",
    "data: not json\n\n",
    "data:  [DONE] \n\n",
    "data: {\"choices\":[{\"text\":\"cut off\"}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2}}",
]
cumulative_stream = [data(dict(delta("t" * k), usage={"prompt_tokens": 7, "completion_tokens": k}))
                     for k in range(1, 4)] + ["data: [DONE]\n\n"]

chat_response = {"id": "chatcmpl-2", "object": "chat.completion", "created": 1741570283, "model": "gpt-4.1",
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi! \"usage\": {}",
                                                      "refusal": None, "annotations": []},
                              "logprobs": None, "finish_reason": "stop"}],
                 "usage": usage_chat, "service_tier": "default", "system_fingerprint": "fp_1"}
responses_response = {"id": "resp_2", "object": "response", "created_at": 1741476542, "status": "completed",
                      "model": "gpt-4.1", "output": [{"type": "message", "id": "msg_1", "status": "completed",
                                                      "role": "assistant", "content": [
                                                          {"type": "output_text", "text": "Hi", "annotations": []}]}],
                      "usage": usage_resp}
embeddings_response = {"object": "list", "data": [{"object": "embedding", "index": 0,
                                                   "embedding": [0.0023064255, -0.009327292, -0.0028842222]}],
                       "model": "text-embedding-3-small", "usage": {"prompt_tokens": 8, "total_tokens": 8}}
completed_event = {"type": "response.completed", "response": {"id": "resp_3", "status": "completed",
                                                              "usage": usage_resp}}

chat_request = {"model": "gpt-4.1", "messages": [{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "Hello"}],
                "stream": True, "temperature": 0.2}
requests = {
    "chat_stream.json": json.dumps(chat_request),
    "chat_stream_options_false.json": json.dumps(dict(chat_request, stream_options={"include_usage": False})),
    "chat_stream_options_null.json": json.dumps(dict(chat_request, stream_options=None)),
    "chat_pretty.json": json.dumps({"messages": [{"role": "user", "content": "x", "model": "decoy"}],
                                    "model": "gpt-4.1\u00e9 \"quoted\"", "stream": True,
                                    "stream_options": {}}, indent=2),
    "responses.json": json.dumps({"model": "gpt-4.1", "input": "Tell me a joke", "stream": True,
                                  "reasoning": {"effort": "low"}}),
    "embeddings.json": json.dumps({"model": "text-embedding-3-small", "input": ["a", "b"]}),
    "empty_object.json": "{}",
}

daemon_yaml = """server:
  listen: "127.0.0.1:0"
  threads: 2
  max_request_body_bytes: 1048576
  header_timeout_s: 5
  protected_mode: false
upstream:
  base_url: "${RELAYMETER_UPSTREAM:-http://127.0.0.1:9000/v1}"
  api_key: "${XKEY}"
  tls: { verify: false, ca_file: "" }
pricing:
  gpt-4.1:           { input: 8.00,  output: 32.00 }
  gemini-2.5-flash:  { input: 2.50,  output: 10.00, cached_input: 0.625 }
metrics:
  max_models: 8
  labels: { monitor: holysheep }
streaming: { inject_include_usage: false, idle_timeout_s: 1.5, total_timeout_s: 0 }
alerts:
  window_s: 60
  for_s: 30
  models:
    gpt-4.1: { latency_p95_ms: 5000, error_rate_percent: 10 }
  webhooks:
    - { url: "http://127.0.0.1:9093", format: alertmanager, timeout_s: 5 }
    - url: "https://hooks.example.com/relaymeter?x=1"
      format: json
log:
  level: debug
auth:
  keys:
    - { name: alice, key: "sk-alice-0123456789" }
admin:
  token: "${EMPTY:-admin-token}"
"""
configs = {
    "daemon.yaml": daemon_yaml,
    "flow.yaml": "{server: {listen: '[::1]:8080'}, upstream: {base_url: 'https://api.openai.com'}, ledger: {path: x.db}}\n",
    "errors.yaml": "server:\n  listen: nowhere\n  threads: -1\n  thraeds: 2\nupstream:\n  base_url: ftp://x\n"
                   "pricing:\n  m: { input: -1, output: .nan }\nlog: { level: loud }\nserver: {}\n",
    "anchors.yaml": "base: &b { input: 1, output: 2 }\npricing:\n  a: *b\n  b: !!map { <<: *b, cached_input: 0.5 }\n---\n",
}


# fuzz_http: requests and responses as they reach the proxy (each input is
# tried as both).
chat_body = json.dumps(chat_response, separators=(",", ":")).encode()
sdk_request_body = json.dumps({"model": "gpt-4.1", "messages": [{"role": "user", "content": "hi"}]}).encode()
sdk_request_head = (
    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept-Encoding: gzip, deflate\r\n"
    "Connection: keep-alive\r\nAccept: application/json\r\nContent-Type: application/json\r\n"
    "User-Agent: OpenAI/Python 1.54.4\r\nX-Stainless-Lang: python\r\nX-Stainless-Retry-Count: 0\r\n"
    "Authorization: Bearer sk-test\r\n").encode()
openai_response_head = (
    "HTTP/1.1 200 OK\r\nDate: Fri, 04 Dec 2026 22:00:00 GMT\r\nContent-Type: application/json\r\n"
    "Connection: keep-alive\r\nopenai-processing-ms: 412\r\nx-ratelimit-remaining-tokens: 29999950\r\n"
    "x-request-id: req_0123456789abcdef\r\nSet-Cookie: __cf_bm=abc; path=/; HttpOnly\r\n"
    "Server: cloudflare\r\nalt-svc: h3=\":443\"; ma=86400\r\n").encode()


def length(n):
    return f"Content-Length: {n}\r\n\r\n".encode()


http_messages = {
    "sdk_request": sdk_request_head + length(len(sdk_request_body)) + sdk_request_body,
    "pipelined_get": b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\nGET /summary HTTP/1.1\r\nHost: x\r\n\r\n",
    "http10_keep_alive": b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "chunked_request": b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"4\r\n{\"a\"\r\n2\r\n:1\r\n1\r\n}\r\n0\r\n\r\n",
    "openai_response": openai_response_head + length(len(chat_body)) + chat_body,
    "chunked_response": openai_response_head + b"Transfer-Encoding: chunked\r\n\r\n" +
                        f"{len(chat_body):x}\r\n".encode() + chat_body + b"\r\n0\r\n\r\n",
    "sse_response": b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chat_stream[0]):x}\r\n".encode() +
                    chat_stream[0].encode() + b"\r\n",
    "close_delimited": b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + chat_body,
    "error_close": b"HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
}


def write(target, name, content):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(content if isinstance(content, bytes) else content.encode())


def main():
    shutil.rmtree(os.path.join(HERE, "corpus"), ignore_errors=True)
    write("fuzz_sse", "chat_include_usage", header(0, 0) + sse(*chat_stream))
    write("fuzz_sse", "chat_crlf_split", header(2, 0x2a000007) + sse(*chat_stream, eol="\r\n"))
    write("fuzz_sse", "chat_cr_bytewise", header(1, 0) + sse(*chat_stream[3:], eol="\r"))
    write("fuzz_sse", "legacy_completions", header(3, 0x10000123) + sse(*legacy_stream))
    write("fuzz_sse", "responses_events", header(2, 0x05000001) + sse(*responses_stream))
    write("fuzz_sse", "odd_events", header(3, 0x3f00beef) + sse(*odd_stream))
    write("fuzz_sse", "cumulative_usage", header(2, 0x01000009) + sse(*cumulative_stream))

    write("fuzz_usage", "chat_response", header(2, 0x08000003) + json.dumps(chat_response).encode())
    write("fuzz_usage", "responses_response", header(3, 0x20000005) + json.dumps(responses_response, indent=1).encode())
    write("fuzz_usage", "embeddings_response", header(0, 0) + json.dumps(embeddings_response).encode())
    write("fuzz_usage", "usage_object", header(1, 0) + json.dumps(usage_chat).encode())
    write("fuzz_usage", "response_completed_event", header(2, 0x02000011) + json.dumps(completed_event).encode())
    # Regression (fixed): a count longer than the scanner's capture was read from its prefix.
    write("fuzz_usage", "regress_truncated_count", header(0, 0) +
          b'{"prompt_tokens":1.000000000000000000000000000000000000000e2,"completion_tokens":7}')

    # fuzz_encoded: mode bits 2 SSE, 3-4 form (0 gzip, 1 zlib deflate, 2 raw deflate, 3 as is),
    # 5 deflate for form 3, 6 two gzip members, 7 cut short (fuzz/fuzz_encoded.cpp).
    write("fuzz_encoded", "gzip_json", header(0x02, 0x10000003) + json.dumps(chat_response).encode())
    write("fuzz_encoded", "gzip_two_members_sse", header(0x46, 0x20000005) + sse(*chat_stream))
    write("fuzz_encoded", "zlib_deflate_sse", header(0x0d, 0x04000001) + sse(*responses_stream))
    write("fuzz_encoded", "raw_deflate_json", header(0x12, 0x3f000007) + json.dumps(responses_response).encode())
    write("fuzz_encoded", "gzip_cut_short", header(0x80, 0x0000017d) + json.dumps(chat_response).encode())
    gz = bytes.fromhex("1f8b08000000000000ff")  # a gzip header alone: truncated
    write("fuzz_encoded", "as_is_gzip_header", header(0x18, 0) + gz)
    # Regression (fixed): raw deflate ending at a chunk boundary, then junk, fed in pieces.
    write("fuzz_encoded", "regress_deflate_trailing", header(0x3f, 0x001f0000) +
          bytes.fromhex("fb8a00006 4b7617461ff".replace(" ", "")))

    for name, body in requests.items():
        write("fuzz_request", name, body)

    for name, msg in http_messages.items():
        write("fuzz_http", name, msg)

    with open(os.path.join(ROOT, "config", "relaymeter.yaml"), "rb") as f:
        write("fuzz_config", "relaymeter.yaml", f.read())
    for name, text in configs.items():
        write("fuzz_config", name, text)


if __name__ == "__main__":
    main()
