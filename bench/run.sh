#!/usr/bin/env bash
# bench/run.sh — relaymeter vs nginx vs direct, on one machine, in one go.
#
#   bash bench/run.sh [--smoke] [--out FILE] [--threads N] [--no-install]
#
# Installs what is missing (nginx, wrk, nghttp2-client, time, a C compiler;
# builds relaymeter with scripts/setup.sh when build/ lacks it), starts
# fake_upstream, nginx (plain reverse proxy, upstream keep-alive, no
# buffering of responses) and relaymeter (metering on), all on 127.0.0.1,
# measures the same workload against each, prints one table and writes it as
# Markdown to --out (default bench/last-run.md; figures also as .json).
# Everything it starts is stopped on exit. Full run: about 5½ minutes; --smoke:
# about 35 seconds with tiny counts (a check that the script works, not a
# measurement). See bench/RESULTS.md for a run and how to read it.
#
# Cores: nothing is pinned. On the 2-core machine wrk (1 thread), the proxy
# (1 worker/thread, --threads) and fake_upstream (1 thread) share both cores,
# as a user's box would; direct runs therefore have one process fewer
# competing for the cores, which is part of what "added by the proxy" means.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
MODE=full
OUT="$HERE/last-run.md"
THREADS=1
INSTALL=1
BUILD="${RELAYMETER_BUILD_DIR:-$ROOT/build}"
CHUNKS=8
CHUNK_MS=2
CMDLINE="bash bench/run.sh $*"

while (($#)); do
  case "$1" in
    --smoke) MODE=smoke ;;
    --out) OUT="$2"; shift ;;
    --out=*) OUT="${1#--out=}" ;;
    --threads) THREADS="$2"; shift ;;
    --threads=*) THREADS="${1#--threads=}" ;;
    --no-install) INSTALL=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac
# Fail now, not after the run, if the table cannot be written where asked.
OUT_DIR=$(dirname "$OUT")
if ! mkdir -p -- "$OUT_DIR" 2>/dev/null || [[ ! -w "$OUT_DIR" ]]; then
  echo "run.sh: cannot write --out $OUT (directory $OUT_DIR missing or not writable)" >&2; exit 2
fi

say() { echo "[run.sh] $*" >&2; }

# ------------------------------------------------------------------ install
need=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
[[ -x /usr/bin/time ]] || need+=(time)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v python3 >/dev/null 2>&1 || need+=(python3)
command -v curl >/dev/null 2>&1 || need+=(curl)
if ((${#need[@]})); then
  if ((INSTALL)); then
    say "installing ${need[*]}"
    SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    say "missing: ${need[*]} (run without --no-install)"; exit 1
  fi
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
# the Debian package starts a system nginx on port 80; we use our own instance only
if [[ ! -x "$BUILD/relaymeter" || ! -x "$BUILD/fake_upstream" ]]; then
  say "building relaymeter and fake_upstream"
  bash "$ROOT/scripts/setup.sh"
fi

# ------------------------------------------------------------------ workdir, cleanup
WORK=$(mktemp -d /tmp/relaymeter-bench.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
say "workdir $WORK, mode $MODE, threads $THREADS, fds $(ulimit -n)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # URL: up to 10 s
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --max-time 1 "$1" && return 0
    sleep 0.1
  done
  say "not answering: $1"; return 1
}

gcc -O2 -Wall -o "$WORK/openloop" "$HERE/openloop.c"

# ------------------------------------------------------------------ fake upstream
# (--openai-headers-for-sdk: the SDK rows' requests get api.openai.com's ~20
# response fields, the others the fake's single x-request-id)
"$BUILD/fake_upstream" --listen 127.0.0.1:0 --threads 1 --chunks "$CHUNKS" --chunk-interval-ms "$CHUNK_MS" \
  --openai-headers-for-sdk >"$WORK/fake.out" 2>"$WORK/fake.err" &
FAKE_PID=$!; PIDS+=("$FAKE_PID")
FAKE_PORT=""
for _ in $(seq 1 100); do
  FAKE_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$WORK/fake.out" | head -1)
  [[ -n "$FAKE_PORT" ]] && break
  sleep 0.1
done
[[ -n "$FAKE_PORT" ]] || { say "fake_upstream did not start"; cat "$WORK/fake.err" >&2; exit 1; }

# ------------------------------------------------------------------ nginx
NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx/logs" "$WORK/nginx/tmp"
# nginx workers run as an unprivileged user: they must reach the temp dir (request bodies > 16 KiB)
chmod 711 "$WORK" "$WORK/nginx"; chmod 1777 "$WORK/nginx/tmp"
cat >"$WORK/nginx/nginx.conf" <<EOF
# plain reverse proxy: the baseline that does no metering
daemon off;
master_process on;
worker_processes $THREADS;
worker_rlimit_nofile 65536;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/tmp/body;
  proxy_temp_path $WORK/nginx/tmp/proxy;
  fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
  uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
  scgi_temp_path $WORK/nginx/tmp/scgi;
  client_max_body_size 64m;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  upstream fake {
    server 127.0.0.1:$FAKE_PORT;
    keepalive 256;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://fake;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" >"$WORK/nginx/stdout" 2>&1 &
NGINX_PID=$!; PIDS+=("$NGINX_PID")

# ------------------------------------------------------------------ relaymeter
RM_PORT=$(free_port)
cat >"$WORK/relaymeter.yaml" <<EOF
server:
  listen: "127.0.0.1:$RM_PORT"
  threads: $THREADS
  idle_timeout_s: 300
upstream:
  base_url: "http://127.0.0.1:$FAKE_PORT/v1"
  api_key: ""
  max_connections: 1024
pricing:
  gpt-4.1: { input: 8.00, output: 32.00 }
log:
  level: warn
EOF
"$BUILD/relaymeter" --config "$WORK/relaymeter.yaml" >"$WORK/relaymeter.out" 2>"$WORK/relaymeter.err" &
RM_PID=$!; PIDS+=("$RM_PID")

wait_http "http://127.0.0.1:$FAKE_PORT/v1/models" || true
wait_http "http://127.0.0.1:$RM_PORT/healthz" || { cat "$WORK/relaymeter.err" >&2; exit 1; }
for _ in $(seq 1 100); do
  curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$NGINX_PORT/" && break
  sleep 0.1
done
kill -0 "$NGINX_PID" 2>/dev/null || { say "nginx did not start"; cat "$WORK/nginx/stdout" "$WORK/nginx/logs/error.log" >&2; exit 1; }
say "fake_upstream :$FAKE_PORT (pid $FAKE_PID), nginx :$NGINX_PORT (pid $NGINX_PID), relaymeter :$RM_PORT (pid $RM_PID)"

# one request through each, to fail early on a broken setup
for p in "$FAKE_PORT" "$NGINX_PORT" "$RM_PORT"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 -H 'Content-Type: application/json' \
    -d '{"model":"gpt-4.1","messages":[{"role":"user","content":"hi"}]}' "http://127.0.0.1:$p/v1/chat/completions")
  [[ "$code" == 200 ]] || { say "sanity request to :$p got $code"; exit 1; }
done

# how busy is the machine before we start? (other users' CPU skews everything)
BUSY=$(python3 - <<'PY'
import time
def snap():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]
t0, i0 = snap(); time.sleep(1.0); t1, i1 = snap()
print(f"{100.0 * (1 - (i1 - i0) / max(1, t1 - t0)):.0f}")
PY
)
say "CPU busy before the run (others): ${BUSY}%"
((BUSY > 15)) && say "WARNING: the machine is busy (${BUSY}% CPU used by other processes): figures will be skewed"

args=(--ports "$FAKE_PORT,$NGINX_PORT,$RM_PORT" --nginx-master "$NGINX_PID" --rm-pid "$RM_PID" --fake-pid "$FAKE_PID"
      --out "$OUT" --workdir "$WORK" --bench-dir "$HERE" --openloop "$WORK/openloop" --threads "$THREADS"
      --chunks "$CHUNKS" --chunk-interval-ms "$CHUNK_MS" --command "$CMDLINE" --pre-sent 1 --notes "CPU busy before the run (other processes): ${BUSY}%")
[[ $MODE == smoke ]] && args+=(--smoke)
set +e
timeout 570 python3 "$HERE/bench.py" "${args[@]}"
rc=$?
set -e
kill -0 "$RM_PID" 2>/dev/null || { say "relaymeter died during the run"; rc=1; }
kill -0 "$NGINX_PID" 2>/dev/null || { say "nginx died during the run"; rc=1; }
exit $rc
