#!/usr/bin/env bash
# Installs what is missing, builds, and runs the daemon with config/relaymeter.yaml.
# Extra arguments go to relaymeter (e.g. --upstream http://127.0.0.1:9000/v1).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec build/relaymeter --config config/relaymeter.yaml "$@"
