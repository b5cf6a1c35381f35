#!/usr/bin/env bash
# Builds the libFuzzer targets of fuzz/ into build-fuzz/ (clang-14, ASan +
# UBSan) and runs each for SECONDS (default 300), one after the other.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]   (targets: fuzz_sse fuzz_usage
#        fuzz_request fuzz_config fuzz_encoded fuzz_http; default all)
# Each target fuzzes build-fuzz/corpus/TARGET/: the committed seeds of
# fuzz/corpus/TARGET/ plus what earlier runs found there (the committed corpus
# is never written). Exits non-zero if any target crashes, hangs or breaks an
# invariant, and prints where the input that did it is. Needs clang-14 and
# libclang-rt-14-dev (scripts/setup.sh --tests installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-300}"
shift || true
targets=("$@")
((${#targets[@]})) || targets=(fuzz_sse fuzz_usage fuzz_request fuzz_config fuzz_encoded fuzz_http)

cmake -S . -B build-fuzz -DRELAYMETER_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++-14 \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz -j "${RELAYMETER_JOBS:-2}" --target "${targets[@]}"

dict_of() {
  case "$1" in
    fuzz_sse | fuzz_encoded) echo fuzz/sse.dict ;;
    fuzz_config) echo fuzz/yaml.dict ;;
    fuzz_http) echo fuzz/http.dict ;;
    *) echo fuzz/json.dict ;;
  esac
}

# A 32 MiB ASan quarantine instead of 256: use-after-free within an input is
# still caught, and runs are ~2.5x faster (fewer fresh pages to fault in).
export ASAN_OPTIONS="quarantine_size_mb=32:${RELAYMETER_FUZZ_ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1"

rc=0
for t in "${targets[@]}"; do
  work="build-fuzz/corpus/$t"
  crashes="build-fuzz/crashes/$t"
  log="build-fuzz/logs/$t.log"
  mkdir -p "$work" "$crashes" "$(dirname "$log")"
  cp fuzz/corpus/"$t"/* "$work"/
  echo "fuzz: $t for ${seconds}s (log: $log)"
  # -timeout: one input taking longer is a hang (reported like a crash).
  # -rss_limit_mb: the default; the harnesses stay far below it.
  status=0
  "build-fuzz/fuzz/$t" "$work" -dict="$(dict_of "$t")" -max_total_time="$seconds" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1 || status=$?
  # The last status line: "#RUNS DONE cov: N ft: N corp: N/SIZE ... exec/s: N rss: N".
  summary=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "fuzz: $t: ${summary:-no status line} (${execs:-?} inputs run)"
  if ((status != 0)); then
    rc=1
    echo "fuzz: $t FAILED (exit $status); the report:"
    pattern='fuzz invariant violated|runtime error|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)'
    if grep -qE "$pattern" "$log"; then
      grep -E -A 25 "$pattern" "$log" | head -n 60 || true
    else
      tail -n 40 "$log"
    fi
    written=$(sed -n "s/.*Test unit written to //p" "$log")
    echo "fuzz: $t: the input is ${written:-(not written; see $log)}"
    echo "fuzz: reproduce with: build-fuzz/fuzz/$t ${written:-INPUT}"
  fi
done
exit "$rc"
