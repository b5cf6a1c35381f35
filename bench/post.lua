-- wrk script for bench/run.sh: POST the body in $BENCH_BODY (a file) as JSON,
-- and print exact figures in done() for bench.py to parse.
local path = os.getenv("BENCH_BODY")
local f = assert(io.open(path, "rb"))
local body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"

-- BENCH_HEADERS=sdk: also the fields the OpenAI Python SDK sends with every
-- request (17 fields in all with Host and Content-Length, ~700 bytes of head)
if os.getenv("BENCH_HEADERS") == "sdk" then
  local h = wrk.headers
  h["Accept-Encoding"] = "gzip, deflate"
  h["Accept"] = "application/json"
  h["User-Agent"] = "OpenAI/Python 1.54.4"
  h["X-Stainless-Lang"] = "python"
  h["X-Stainless-Package-Version"] = "1.54.4"
  h["X-Stainless-OS"] = "Linux"
  h["X-Stainless-Arch"] = "x64"
  h["X-Stainless-Runtime"] = "CPython"
  h["X-Stainless-Runtime-Version"] = "3.11.2"
  h["Authorization"] = "Bearer sk-proj-bench0000000000000000000000000000000000000000000000000000"
  h["X-Stainless-Async"] = "false"
  h["x-stainless-retry-count"] = "0"
  h["x-stainless-read-timeout"] = "600"
end

-- non-2xx answers are counted by wrk itself (summary.errors.status)
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout))
  io.write(string.format("BENCH p50=%d p90=%d p99=%d p999=%d max=%d mean=%.1f\n",
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
