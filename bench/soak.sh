#!/usr/bin/env bash
# bench/soak.sh — load and soak test: leaks, errors and exact totals under a
# long, moderate load (issue 6, item 6). Not part of the test suite.
#
#   bash bench/soak.sh [--duration SECONDS] [--smoke] [--out FILE] [--no-build]
#                      [--clients N] [--streams N] [--plain-period S] [--heaptrack FILE]
#
# Builds with scripts/setup.sh, copies build/relaymeter and build/fake_upstream
# into a temp dir (build/ is shared) and runs those copies: the fake upstream
# and relaymeter on 127.0.0.1, port 0, relaymeter with a config written to the
# temp dir. bench/soak.py then holds 1000 keep-alive clients (one plain chat
# completion each every 5 s, about 200 req/s) and 200 clients streaming back to
# back (each stream about 1.05 s: 50 ms latency + 5 chunks 200 ms apart, so
# about 180 streams/s) for 10 minutes (--duration; --smoke: 30 s), samples
# relaymeter every 10 s (RSS, fds, threads, CPU, /summary), and at the end
# compares /summary with what the clients received. After soak.py, relaymeter
# is stopped with SIGTERM (must exit 0) and the fake upstream's request count
# is compared with relaymeter's total_requests. Prints PASS/FAIL lines; exits
# non-zero on any FAIL. Everything started here is stopped on exit.
# --heaptrack FILE: run relaymeter under heaptrack (Debian package heaptrack),
# save its data to FILE and check what is still allocated at exit (the RSS
# allowance is then 8 MiB: heaptrack's own buffers are in the RSS).
# Full run: ~12 minutes (plus the build); --smoke: ~75 s. See bench/SOAK.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
DURATION=600
WARMUP=60
CLIENTS=1000
STREAMS=200
PLAIN_PERIOD=5
OUT=""
BUILD=1
HEAPTRACK=""
# fake upstream: what every answer carries (soak.py checks each one against it)
LATENCY_MS=50
CHUNKS=5
CHUNK_MS=200
PROMPT_TOKENS=1200
CACHED_TOKENS=400
COMPLETION_TOKENS=300
# USD per 1M tokens: input, cached input ("-": the input price), output
PRICES=("gpt-4.1 8.00 2.00 32.00" "claude-sonnet-4.5 15.00 1.50 75.00"
        "gemini-2.5-flash 2.50 - 10.00" "deepseek-v3.2 0.42 0.042 1.68")

while (($#)); do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --duration=*) DURATION="${1#--duration=}" ;;
    --smoke) DURATION=30 ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    --clients) CLIENTS="$2"; shift ;;
    --streams) STREAMS="$2"; shift ;;
    --plain-period) PLAIN_PERIOD="$2"; shift ;;
    --no-build) BUILD=0 ;;
    --heaptrack) HEAPTRACK="$2"; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[[ "$DURATION" =~ ^[0-9]+$ && "$DURATION" -ge 20 ]] || { echo "soak.sh: --duration wants whole seconds >= 20" >&2; exit 2; }
# warm-up reference for RSS: after the first minute, or a third of a short run
((DURATION >= 180)) || WARMUP=$(( (DURATION / 3) / 10 * 10 ))
((WARMUP >= 10)) || WARMUP=10
if [[ -n "$OUT" ]]; then case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac; fi
if [[ -n "$HEAPTRACK" ]]; then
  case "$HEAPTRACK" in /*) ;; *) HEAPTRACK="$PWD/$HEAPTRACK" ;; esac
  command -v heaptrack >/dev/null || { echo "soak.sh: --heaptrack needs heaptrack (apt-get install heaptrack)" >&2; exit 2; }
fi

say() { echo "[soak.sh] $*" >&2; }

if ((BUILD)); then
  say "building (scripts/setup.sh)"
  bash "$ROOT/scripts/setup.sh"
fi
command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
command -v curl >/dev/null || { say "curl is needed"; exit 1; }

# ------------------------------------------------------------------ workdir, cleanup
WORK=$(mktemp -d /tmp/relaymeter-soak.XXXXXX)
PIDS=()
# running (a zombie, exited but not yet waited for, is not)
alive() { [[ -r /proc/$1/stat ]] && [[ $(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) != Z ]]; }
cleanup() {
  local p
  for p in "${PIDS[@]}"; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq 1 100); do
    local any=0
    for p in "${PIDS[@]}"; do alive "$p" && any=1; done
    ((any)) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do alive "$p" && kill -KILL "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# our own copies: other builds may replace build/ while we run
cp "$ROOT/build/relaymeter" "$ROOT/build/fake_upstream" "$WORK/"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src include 2>/dev/null | wc -l)
say "workdir $WORK, duration ${DURATION}s (warm-up ${WARMUP}s), fds $(ulimit -n), commit $REV" \
    "($DIRTY modified files under src/ include/ in the working tree)"

# poll until $1 has a line matching the sed expression $2 (prints the capture), deadline 10 s
wait_line() {
  local v="" end=$((SECONDS + 10))
  while ((SECONDS < end)); do
    v=$(sed -n "$2" "$1" 2>/dev/null | head -1)
    [[ -n "$v" ]] && { echo "$v"; return 0; }
    sleep 0.05
  done
  return 1
}

# ------------------------------------------------------------------ fake upstream
"$WORK/fake_upstream" --listen 127.0.0.1:0 --threads 1 --latency-ms "$LATENCY_MS" --chunks "$CHUNKS" \
  --chunk-interval-ms "$CHUNK_MS" --prompt-tokens "$PROMPT_TOKENS" --cached-tokens "$CACHED_TOKENS" \
  --completion-tokens "$COMPLETION_TOKENS" >"$WORK/fake.out" 2>"$WORK/fake.err" &
FAKE_PID=$!; PIDS+=("$FAKE_PID")
FAKE_PORT=$(wait_line "$WORK/fake.out" 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p') \
  || { say "fake_upstream did not start"; cat "$WORK/fake.err" >&2; exit 1; }

# ------------------------------------------------------------------ relaymeter
{
  cat <<EOF
# written by bench/soak.sh
server:
  listen: "127.0.0.1:0"
  threads: 0                 # one per core
  idle_timeout_s: 3600       # longer than the run: no keep-alive client is closed under it
upstream:
  base_url: "http://127.0.0.1:$FAKE_PORT/v1"
  api_key: ""
pricing:
EOF
  for p in "${PRICES[@]}"; do
    read -r m pin pc pout <<<"$p"
    if [[ "$pc" == "-" ]]; then echo "  $m: { input: $pin, output: $pout }"
    else echo "  $m: { input: $pin, cached_input: $pc, output: $pout }"; fi
  done
  cat <<EOF
alerts:
  cost_per_hour_usd: 1000000 # the load costs ~15000 USD/hour at these prices: high_cost would fire (correctly)
log:
  level: info                # the default: one access-log line per request
EOF
} >"$WORK/relaymeter.yaml"
if [[ -z "$HEAPTRACK" ]]; then
  "$WORK/relaymeter" --config "$WORK/relaymeter.yaml" >"$WORK/relaymeter.log" 2>&1 &
  RM_PID=$!; PIDS+=("$RM_PID")
else
  # heaptrack is a shell script: relaymeter runs as its child, found by its executable
  heaptrack -o "$WORK/heaptrack" "$WORK/relaymeter" --config "$WORK/relaymeter.yaml" >"$WORK/relaymeter.log" 2>&1 &
  HT_PID=$!; PIDS+=("$HT_PID")
  RM_PID=""
  end=$((SECONDS + 30))
  while [[ -z "$RM_PID" ]] && ((SECONDS < end)); do
    for d in /proc/[0-9]*; do
      [[ $(readlink "$d/exe" 2>/dev/null) == "$WORK/relaymeter" ]] && RM_PID=${d#/proc/}
    done
    [[ -n "$RM_PID" ]] || sleep 0.1
  done
  [[ -n "$RM_PID" ]] || { say "relaymeter did not start under heaptrack"; cat "$WORK/relaymeter.log" >&2; exit 1; }
  PIDS+=("$RM_PID")
fi
LISTEN=$(wait_line "$WORK/relaymeter.log" 's/.* listening on 127\.0\.0\.1:\([0-9]*\) (\([0-9]*\) threads).*/\1 \2/p') \
  || { say "relaymeter did not start"; cat "$WORK/relaymeter.log" >&2; exit 1; }
read -r RM_PORT RM_THREADS <<<"$LISTEN"
ok=0
end=$((SECONDS + 10))
while ((SECONDS < end)); do
  if [[ $(curl -s --max-time 1 "http://127.0.0.1:$RM_PORT/healthz" || true) == ok* ]]; then ok=1; break; fi
  sleep 0.05
done
((ok)) || { say "relaymeter /healthz did not answer"; cat "$WORK/relaymeter.log" >&2; exit 1; }
say "fake_upstream :$FAKE_PORT (pid $FAKE_PID), relaymeter :$RM_PORT (pid $RM_PID, $RM_THREADS threads)"

# ------------------------------------------------------------------ load
args=(--port "$RM_PORT" --rm-pid "$RM_PID" --rm-threads "$RM_THREADS" --fake-port "$FAKE_PORT" --fake-pid "$FAKE_PID"
      --prompt-tokens "$PROMPT_TOKENS" --cached-tokens "$CACHED_TOKENS" --completion-tokens "$COMPLETION_TOKENS"
      --chunks "$CHUNKS" --chunk-interval-ms "$CHUNK_MS" --latency-ms "$LATENCY_MS"
      --duration "$DURATION" --warmup "$WARMUP" --clients "$CLIENTS" --streams "$STREAMS"
      --plain-period "$PLAIN_PERIOD" --total-file "$WORK/rm_total" --report "$WORK/report.txt" --json "$WORK/soak.json")
for p in "${PRICES[@]}"; do
  read -r m pin pc pout <<<"$p"
  args+=(--price "$m=$pin:$pc:$pout")
done
[[ -n "$HEAPTRACK" ]] && args+=(--rss-abs-kib 8192)
set +e
timeout $((DURATION + 300)) python3 "$HERE/soak.py" "${args[@]}"
rc=$?
set -e
((rc == 0)) || say "soak.py exited $rc"

# ------------------------------------------------------------------ shutdown checks
fails=0
line() { # PASS|FAIL text
  echo "$1  $2" | tee -a "$WORK/report.txt"
  [[ "$1" == PASS ]] || fails=$((fails + 1))
}
# SIGTERM, up to $2 seconds to exit, then SIGKILL; returns the exit status
stop() {
  local end=$((SECONDS + $2)) st
  kill -TERM "$1" 2>/dev/null || true
  while alive "$1" && ((SECONDS < end)); do sleep 0.1; done
  alive "$1" && kill -KILL "$1" 2>/dev/null
  set +e; wait "$1"; st=$?; set -e
  return $st
}
if alive "$RM_PID"; then
  # nothing is in flight: the drain (server.drain_timeout_s 30) is immediate
  rm_rc=0
  if [[ -z "$HEAPTRACK" ]]; then
    stop "$RM_PID" 40 || rm_rc=$?
  else # heaptrack's script exits with relaymeter's status once its data is written
    kill -TERM "$RM_PID"
    stop_wait() { local end=$((SECONDS + 120)); while alive "$HT_PID" && ((SECONDS < end)); do sleep 0.2; done; }
    stop_wait
    alive "$HT_PID" && kill -KILL "$HT_PID" "$RM_PID" 2>/dev/null
    set +e; wait "$HT_PID"; rm_rc=$?; set -e
  fi
  [[ $rm_rc == 0 ]] && line PASS "relaymeter exited 0 on SIGTERM" || line FAIL "relaymeter exited $rm_rc on SIGTERM"
else
  line FAIL "relaymeter died during the run"
fi
stop "$FAKE_PID" 10 || true
fake_n=$(sed -n 's/^stopped (signal [0-9]*), \([0-9]*\) requests.*/\1/p' "$WORK/fake.out")
rm_total=$(cat "$WORK/rm_total" 2>/dev/null || echo "?")
if [[ -n "$fake_n" && "$fake_n" == "$rm_total" ]]; then
  line PASS "the fake upstream served $fake_n requests = relaymeter's total_requests"
else
  line FAIL "the fake upstream served ${fake_n:-?} requests, relaymeter's total_requests is $rm_total"
fi
if [[ -n "$HEAPTRACK" ]]; then
  ht=""
  for f in "$WORK"/heaptrack*.zst "$WORK"/heaptrack*.gz; do [[ -f "$f" ]] && { ht=$f; break; }; done
  if [[ -n "$ht" ]]; then
    cp "$ht" "$HEAPTRACK"
    heaptrack_print -f "$ht" -p 0 -a 0 -T 0 -l 1 >"$WORK/heaptrack.txt" 2>&1 || true
    cp "$WORK/heaptrack.txt" "${HEAPTRACK%.*}.txt"
    grep -E '^(calls to allocation|peak heap|total memory leaked|suppressed leaks)' "$WORK/heaptrack.txt" \
      | sed 's/^/heaptrack: /' | tee -a "$WORK/report.txt"
    # leaked = still allocated at exit; a per-request or per-connection leak
    # (1220 connections, >10^5 requests) would be far above 16 KiB
    leaked=$(sed -n 's/^total memory leaked: \([0-9.]*\)\([KMGB]*\).*/\1 \2/p' "$WORK/heaptrack.txt")
    read -r lv lu <<<"${leaked:-x x}"
    lk=$(awk -v v="$lv" -v u="$lu" 'BEGIN { m = (u == "K") ? 1 : (u == "M") ? 1024 : (u == "G") ? 1048576 : 1/1024;
                                           if (v == "x") print -1; else printf "%.1f", v * m }')
    if awk -v k="$lk" 'BEGIN { exit !(k >= 0 && k <= 16) }'; then
      line PASS "heaptrack: ${lk} KiB still allocated at exit (<= 16 KiB); data in $HEAPTRACK, leaks in ${HEAPTRACK%.*}.txt"
    else
      line FAIL "heaptrack: ${lk} KiB still allocated at exit (> 16 KiB, or unreadable); see ${HEAPTRACK%.*}.txt"
    fi
  else
    line FAIL "heaptrack wrote no data file"
  fi
fi
access=$(grep -c ' info access ' "$WORK/relaymeter.log" || true)
other=$(grep -E ' (warning|error|critical) ' "$WORK/relaymeter.log" || true)
if [[ -z "$other" ]]; then
  line PASS "relaymeter logged no warning or error ($access access-log lines)"
else
  line FAIL "relaymeter logged $(echo "$other" | wc -l) warning/error lines:"
  echo "$other" | head -20 | tee -a "$WORK/report.txt"
fi
if ((rc == 0 && fails == 0)); then
  echo "SOAK PASS" | tee -a "$WORK/report.txt"
else
  echo "SOAK FAIL" | tee -a "$WORK/report.txt"
fi
if [[ -n "$OUT" ]]; then
  cp "$WORK/report.txt" "$OUT"
  cp "$WORK/soak.json" "${OUT%.*}.json" 2>/dev/null || true
  say "report written to $OUT"
fi
((rc == 0 && fails == 0))
