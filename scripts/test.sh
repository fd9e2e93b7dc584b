#!/usr/bin/env bash
# Runs every test: installs the Debian packages, builds (warnings are errors), runs the unit
# and integration tests with CTest, then builds again with AddressSanitizer and
# UndefinedBehaviorSanitizer and runs the whole suite once more on that build, and fuzzes
# the event decoder for VD_FUZZ_SECONDS (default 30).
# Usage: scripts/test.sh [--no-asan] [ctest args...]     e.g. scripts/test.sh -R it.test_match
set -euo pipefail
cd "$(dirname "$0")/.."

asan=1
if [ "${1:-}" = "--no-asan" ]; then asan=0; shift; fi
jobs=$(nproc 2>/dev/null || echo 2)

bash scripts/install-deps.sh

run_suite() {
  local dir=$1; shift
  echo "== build $dir ($*)"
  cmake -S . -B "$dir" -DVD_WERROR=ON "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  echo "== test $dir"
  (cd "$dir" && ctest --output-on-failure --timeout 900 "${ctest_args[@]}")
}

ctest_args=("$@")
start=$(date +%s)
run_suite build -DCMAKE_BUILD_TYPE=Release
if [ $asan -eq 1 ]; then
  # Leaks are errors too; librdkafka's and libuv's own threads exit cleanly on shutdown.
  export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  # Tests whose point needs the Release build's speed (a backlog of 50,000) ask for less.
  export VD_SANITIZED=1
  run_suite build-asan -DCMAKE_BUILD_TYPE=Debug -DVD_SANITIZE=ON
  bash scripts/fuzz.sh "${VD_FUZZ_SECONDS:-30}"
fi
echo "== all tests passed in $(( $(date +%s) - start )) s"
