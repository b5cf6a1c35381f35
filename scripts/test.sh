#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (unit and integration,
# against the real daemon on loopback, promtool included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
rc=0
# docker/ checks, Grafana PromQL on a real Prometheus, /dashboard in Chromium
bash tests/stack/run.sh || rc=1
# ctest last, so that its summary line closes the output.
ctest --test-dir build --output-on-failure -j "${RELAYMETER_JOBS:-2}" --timeout 300 || rc=1
exit "$rc"
