#!/usr/bin/env bash
# bench/profile.sh — where relaymeter spends its time (see bench/PROFILE.md).
#
#   bash bench/profile.sh [OUTDIR]     (default: a temp dir, kept and printed)
#
# 1. syscalls per request, relaymeter vs nginx (strace -c -f, 4000 requests at
#    a fixed 1000/s over 16 keep-alive connections);
# 2. user-space instructions per request for relaymeter (valgrind callgrind,
#    collection switched on only around 2000 requests, then callgrind_annotate),
#    and the same for an OpenAI SDK's exchange (wrk -c4, BENCH_HEADERS=sdk);
# 3. a CPU sample of relaymeter under wrk -c64 (perf record -e cpu-clock: the
#    hardware counters are not available in this VM).
# Everything binds 127.0.0.1 and is stopped on exit. Takes about 2 minutes.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
BUILD="${RELAYMETER_BUILD_DIR:-$ROOT/build}"
OUTDIR="${1:-$(mktemp -d /tmp/relaymeter-profile.XXXXXX)}"
mkdir -p "$OUTDIR"
need=()
command -v valgrind >/dev/null || need+=(valgrind)
command -v strace >/dev/null || need+=(strace)
command -v perf >/dev/null || need+=(linux-perf)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
if ((${#need[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; return 1; }

gcc -O2 -o "$OUTDIR/openloop" "$HERE/openloop.c"
printf '%s' '{"model":"gpt-4.1","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello in five words."}],"max_tokens":64,"temperature":0}' >"$OUTDIR/small.json"

FP=$(free_port); NP=$(free_port); RP=$(free_port)
"$BUILD/fake_upstream" --listen "127.0.0.1:$FP" --openai-headers-for-sdk >/dev/null 2>&1 & PIDS+=($!)
mkdir -p "$OUTDIR/nginx/tmp"; chmod 711 "$OUTDIR" "$OUTDIR/nginx"; chmod 1777 "$OUTDIR/nginx/tmp"
cat >"$OUTDIR/nginx/nginx.conf" <<EOF
daemon off; worker_processes 1; pid $OUTDIR/nginx/nginx.pid; error_log $OUTDIR/nginx/error.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $OUTDIR/nginx/tmp/body; proxy_temp_path $OUTDIR/nginx/tmp/proxy;
  keepalive_requests 10000000;
  upstream fake { server 127.0.0.1:$FP; keepalive 256; keepalive_requests 10000000; }
  server { listen 127.0.0.1:$NP; location / { proxy_pass http://fake; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; } } }
EOF
"$NGINX" -c "$OUTDIR/nginx/nginx.conf" -p "$OUTDIR/nginx" & NGINX_PID=$!; PIDS+=($NGINX_PID)
cat >"$OUTDIR/relaymeter.yaml" <<EOF
server: { listen: "127.0.0.1:$RP", threads: 1, idle_timeout_s: 300 }
upstream: { base_url: "http://127.0.0.1:$FP/v1", max_connections: 1024 }
pricing: { gpt-4.1: { input: 8.00, output: 32.00 } }
log: { level: warn }
EOF
"$BUILD/relaymeter" --config "$OUTDIR/relaymeter.yaml" 2>"$OUTDIR/relaymeter.err" & RM_PID=$!; PIDS+=($RM_PID)
wait_port "$FP"; wait_port "$NP"; wait_port "$RP"
NW=$(pgrep -P "$NGINX_PID" | head -1)

load() { "$OUTDIR/openloop" 127.0.0.1 "$1" /v1/chat/completions "$OUTDIR/small.json" "$2" "$3" 0.2 16; }

# 1. syscalls per request
for t in nginx relaymeter; do
  port=$NP; pid=$NW; [[ $t == relaymeter ]] && { port=$RP; pid=$RM_PID; }
  load "$port" 1000 1 >/dev/null   # warm
  timeout 20 strace -c -f -q -o "$OUTDIR/strace-$t.txt" -p "$pid" & SP=$!
  sleep 0.5
  load "$port" 1000 4 >"$OUTDIR/strace-load-$t.txt"
  kill -INT $SP; wait $SP || true
  done_n=$(sed -n 's/.*done=\([0-9]*\).*/\1/p' "$OUTDIR/strace-load-$t.txt")
  python3 - "$OUTDIR/strace-$t.txt" "$done_n" "$t" <<'PY'
import sys
path, n, t = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rows = []
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls = int(f[3]); rows.append((calls, f[-1]))
tot = sum(c for c, _ in rows)
print(f"{t}: {tot / n:.2f} syscalls per request ({n} requests): " +
      ", ".join(f"{name} {c / n:.2f}" for c, name in sorted(rows, reverse=True)[:8]))
PY
done | tee "$OUTDIR/syscalls.txt"

# 2. callgrind: restart relaymeter under valgrind, collect around 2000 requests only
kill "$RM_PID"; wait "$RM_PID" 2>/dev/null || true
rm -f "$OUTDIR"/callgrind.out*
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUTDIR/callgrind.out" \
  "$BUILD/relaymeter" --config "$OUTDIR/relaymeter.yaml" 2>"$OUTDIR/valgrind.err" & VG=$!; PIDS+=($VG)
wait_port "$RP"
load "$RP" 200 2 >/dev/null     # warm-up, not collected
callgrind_control -i on "$VG" >/dev/null
load "$RP" 400 5 | tee "$OUTDIR/callgrind-load.txt"
callgrind_control -i off "$VG" >/dev/null
callgrind_control -d "$VG" >/dev/null
kill "$VG"; wait "$VG" 2>/dev/null || true
CG="$OUTDIR/callgrind.out.1"  # the dump taken right after the measured requests
callgrind_annotate --inclusive=no "$CG" >"$OUTDIR/callgrind-self.txt" 2>/dev/null || true
callgrind_annotate --inclusive=yes "$CG" >"$OUTDIR/callgrind-incl.txt" 2>/dev/null || true
callgrind_annotate --tree=caller "$CG" >"$OUTDIR/callgrind-callers.txt" 2>/dev/null || true
N=$(sed -n 's/.*done=\([0-9]*\).*/\1/p' "$OUTDIR/callgrind-load.txt")
TOT=$(grep -m1 'PROGRAM TOTALS' "$OUTDIR/callgrind-self.txt" | awk '{gsub(",","",$1); print $1}')
[[ "$TOT" =~ ^[0-9]+$ ]] || TOT=0
echo "callgrind: $TOT instructions over $N requests = $((TOT / N)) per request" | tee "$OUTDIR/callgrind-summary.txt"

# 2b. the same for an OpenAI SDK's exchange: its 17 request fields (wrk -c4, bench/post.lua
#     BENCH_HEADERS=sdk) answered with api.openai.com's ~20 response fields (the fake's
#     --openai-headers-for-sdk); the requests are counted by /summary, outside the collection
total() { curl -s "http://127.0.0.1:$RP/summary" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["overall"]["total_requests"])'; }
sdk_load() { BENCH_HEADERS=sdk BENCH_BODY="$OUTDIR/small.json" wrk -t1 -c4 -d"$1" -s "$HERE/post.lua" \
  "http://127.0.0.1:$RP/v1/chat/completions" >/dev/null; }
rm -f "$OUTDIR"/callgrind-sdk.out*
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$OUTDIR/callgrind-sdk.out" \
  "$BUILD/relaymeter" --config "$OUTDIR/relaymeter.yaml" 2>"$OUTDIR/valgrind-sdk.err" & VG=$!; PIDS+=($VG)
wait_port "$RP"
sdk_load 2s                     # warm-up, not collected
BEFORE=$(total)
callgrind_control -i on "$VG" >/dev/null
sdk_load 4s
callgrind_control -i off "$VG" >/dev/null
N=$(( $(total) - BEFORE ))
callgrind_control -d "$VG" >/dev/null
kill "$VG"; wait "$VG" 2>/dev/null || true
callgrind_annotate --inclusive=no "$OUTDIR/callgrind-sdk.out.1" >"$OUTDIR/callgrind-sdk-self.txt" 2>/dev/null || true
TOT=$(grep -m1 'PROGRAM TOTALS' "$OUTDIR/callgrind-sdk-self.txt" | awk '{gsub(",","",$1); print $1}')
[[ "$TOT" =~ ^[0-9]+$ ]] || TOT=0
echo "callgrind, SDK exchange: $TOT instructions over $N requests = $((TOT / (N > 0 ? N : 1))) per request" \
  | tee -a "$OUTDIR/callgrind-summary.txt"

# 3. perf cpu-clock sample under wrk -c64
"$BUILD/relaymeter" --config "$OUTDIR/relaymeter.yaml" 2>>"$OUTDIR/relaymeter.err" & RM_PID=$!; PIDS+=($RM_PID)
wait_port "$RP"
BENCH_BODY="$OUTDIR/small.json" wrk -t1 -c64 -d2s -s "$HERE/post.lua" "http://127.0.0.1:$RP/v1/chat/completions" >/dev/null
perf record -q -e cpu-clock -F 4999 -p "$RM_PID" -o "$OUTDIR/perf.data" -- sleep 5 2>/dev/null & PP=$!
BENCH_BODY="$OUTDIR/small.json" wrk -t1 -c64 -d5s -s "$HERE/post.lua" "http://127.0.0.1:$RP/v1/chat/completions" >/dev/null
wait $PP || true
perf report -i "$OUTDIR/perf.data" --no-children --sort dso --stdio 2>/dev/null | grep '%' | head -8 >"$OUTDIR/perf-dso.txt" || true
perf report -i "$OUTDIR/perf.data" --no-children --sort sym --stdio 2>/dev/null | grep '%' | head -50 | cut -c1-180 >"$OUTDIR/perf-sym.txt" || true
cat "$OUTDIR/perf-dso.txt"
echo "profile output in $OUTDIR"
