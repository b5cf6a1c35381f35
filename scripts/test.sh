#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test: the stack checks, a
# short run of every libFuzzer target, the whole suite (unit and integration,
# against the real daemon on loopback, promtool included) built with ASan +
# UBSan, and the same suite in the normal build.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
jobs="${RELAYMETER_JOBS:-2}"
rc=0
# docker/ checks, Grafana PromQL on a real Prometheus, /dashboard in Chromium
bash tests/stack/run.sh || rc=1

# libFuzzer targets of fuzz/ (build-fuzz/, clang), a short bounded run each.
bash scripts/fuzz.sh "${RELAYMETER_FUZZ_SECONDS:-20}" || rc=1

# The whole suite again, built with ASan + UBSan in build-asan/ (reused on
# re-runs; -O1 -g1 compiles in half the time of -O2 -g and still gives
# file:line stacks). The integration tests start this build's daemon, so it
# runs sanitized too. ASan and LeakSanitizer reports of every process (test
# binary, daemon) go to build-asan/sanitizer-logs/, where the run looks for
# them: a report fails it even when the process that wrote it was only a
# daemon whose stderr nobody read. (GCC's UBSan ignores log_path: its reports
# are on the stderr of the process, which aborts, failing its test.)
cmake -S . -B build-asan -DRELAYMETER_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 -g1 -DNDEBUG" >/dev/null
start=$SECONDS
cmake --build build-asan -j "$jobs"
echo "asan: build-asan built in $((SECONDS - start)) s"
logs="$PWD/build-asan/sanitizer-logs"
rm -rf "$logs"
mkdir -p "$logs"
# Not under ASan: the two tests that bound the daemon's RSS growth to 8 MiB
# (ASan's shadow, redzones and quarantine make RSS meaningless); they run in
# the normal build below.
rss_tests='never reads a large response|endless upstream bodies are bounded'
echo "asan: all tests but the RSS bounds ($rss_tests), which run in build/ only"
start=$SECONDS
ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1:log_path=$logs/asan" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:abort_on_error=1" \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 600 -E "$rss_tests" || rc=1
echo "asan: ctest took $((SECONDS - start)) s"
if compgen -G "$logs/*" >/dev/null; then
  rc=1
  echo "asan: sanitizer reports (build-asan/sanitizer-logs/):"
  for f in "$logs"/*; do
    echo "=== $f"
    # The first frames say where; Boost's template names make lines long.
    grep -E '^==|SUMMARY|located|freed by|allocated by|leak of|(READ|WRITE) of|^    #1?[0-9] ' "$f" |
      cut -c1-300 | head -n 60 || true
  done
fi

# ctest last, so that its summary line closes the output.
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 300 || rc=1
exit "$rc"
