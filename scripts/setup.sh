#!/usr/bin/env bash
# Installs what is missing (Debian 12, as root or with sudo), configures and
# builds relaymeter into build/. Safe to run again: it reuses build/.
# Usage: scripts/setup.sh [--tests]   (--tests also installs what the tests need)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libboost-dev libboost-system-dev libboost-program-options-dev
          libssl-dev nlohmann-json3-dev libspdlog-dev libyaml-cpp-dev zlib1g-dev)
if [[ "${1:-}" == "--tests" ]]; then
  # promtool (prometheus) checks /metrics; curl and openssl are used by tests.
  # tests/stack: chromium (dashboard page), docker-compose (config check),
  # prometheus-alertmanager (amtool), python3. fuzz/: clang-14, libclang-rt-14-dev (libFuzzer).
  packages+=(catch2 prometheus curl openssl chromium docker-compose prometheus-alertmanager python3
             clang-14 libclang-rt-14-dev)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

build_type="${RELAYMETER_BUILD_TYPE:-RelWithDebInfo}"
# The tests are built whenever Catch2 is installed (CMakeLists.txt); --tests
# makes sure it is. Running without --tests never turns an existing test
# build off, so run.sh and test.sh can share build/.
cmake -S . -B build -DCMAKE_BUILD_TYPE="$build_type" >/dev/null
cmake --build build -j "${RELAYMETER_JOBS:-2}"
