#!/usr/bin/env bash
# The stack checks (see tests/stack/README.md): docker/ validated without a
# Docker engine, every Grafana PromQL expression against a real Prometheus
# scraping a live relaymeter, and the built-in /dashboard in headless Chromium.
# Needs build/relaymeter and build/fake_upstream (scripts/setup.sh --tests),
# prometheus, promtool, docker-compose, chromium, python3.
# Artifacts (screenshot, logs) go to build/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/../.."
rc=0
python3 tests/stack/stack_check.py || rc=1
python3 tests/stack/dashboard_test.py || rc=1
exit "$rc"
