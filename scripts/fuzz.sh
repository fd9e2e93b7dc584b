#!/usr/bin/env bash
# Builds the libFuzzer target of the event decoder and the JSON writer (tests/fuzz/fuzz_event.c)
# with clang and runs it for a while on a corpus seeded from tests/data/events. A crash, leak,
# sanitizer report or broken promise fails the run and leaves crash-* files in the corpus dir.
# Usage: scripts/fuzz.sh [SECONDS]        (default 60; needs clang and libclang-rt-14-dev)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
work=${VD_FUZZ_DIR:-build/fuzz}
mkdir -p "$work/corpus"
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Icommon tests/fuzz/fuzz_event.c common/vd_event.c common/vd_json.c \
  $(pkg-config --cflags --libs jansson) -lm -o "$work/fuzz_event"
cp -n tests/data/events/valid/*.json tests/data/events/invalid/*.json "$work/corpus/" 2>/dev/null || true
echo "== fuzz the event decoder for ${seconds} s"
cd "$work"
./fuzz_event -max_total_time="$seconds" -max_len=70000 -print_final_stats=1 corpus 2>&1 |
  grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+==ERROR|SUMMARY)" || true
test "${PIPESTATUS[0]}" -eq 0
