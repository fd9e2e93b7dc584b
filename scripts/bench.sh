#!/usr/bin/env bash
# Benchmarks vdispatchd against the limits of its parts, side by side in one run, and prints
# figures and ratios (scripts/bench.py). It builds (Release), starts a private redis-server,
# the embedded Kafka (vd-kafka-mock) and vdispatchd (direct assignment, log.level=warn,
# /metrics on a free port), generates one seeded Hohhot scenario (an available pool, requests
# paced at a steady rate, then a burst) and runs the same requests through: the Kafka path
# alone (vd-echo, a worker that makes a match's outputs and does no matching), the raw Redis
# limit (the daemon's own Functions, recorded and replayed pipelined, before and after the
# daemon's burst; GEOSEARCH alone), vdispatchd, and a plain Python worker (confluent-kafka).
# It prints matches/s, paced and burst latency percentiles (request produced -> outcome
# consumed), peak RSS, CPU and Redis CPU per match, Redis calls per match, how much of the
# burst Redis's thread ran, waited for a core or sat idle, and the ratios against the targets
# of docs/performance.md. Figures only: nothing is asserted; the exit status says whether the
# run completed, not whether it was fast.
#
# Usage: scripts/bench.sh [--quick] [--volunteers N] [--paced N] [--rate R] [--burst N] [options]
#   --volunteers N   available volunteers (default 20000)
#   --registered N   volunteers with a record in all: the rest are recorded, not available
#                    (e.g. 580000, the city's registry; the daemon's rows only)
#   --paced N        requests produced at a steady rate first (default 1000)
#   --rate R         their rate, per second (default 250)
#   --burst N        requests produced at once afterwards (default 50000)
#   --quick          smoke run: 2000 volunteers, 300 paced, 5000 in the burst (explicit sizes win)
#   --partitions N   partitions of every request topic (default: 8, more for a large burst)
#   --skip LIST      leave out rows: kafka, raw, python (comma-separated)
#   --seed N         scenario seed (default 1)
#   --keep           keep the temp dir (logs, configs, collected topics); also kept on failure
# Env: VD_BENCH_TIMEOUT (seconds allowed per phase, default 300), VD_BUILD_DIR (default
# <source>/build), TMPDIR, VD_BENCH_SET (extra daemon settings, space-separated
# section.key=value, e.g. "matching.batch_window_ms=20"). The system Redis and any other
# running instance are left alone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # read by lib.sh
VD_LOG_TAG=bench
# shellcheck source=lib.sh
source "$ROOT/scripts/lib.sh"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
volunteers=""
registered=0
paced=""
rate=250
burst=""
quick=0
partitions=""
skip=""
seed=1
VD_KEEP=0
timeout=${VD_BENCH_TIMEOUT:-300}
build=${VD_BUILD_DIR:-$ROOT/build}
vd_set_args VD_BENCH_SET

while [ $# -gt 0 ]; do
  case "$1" in
    --volunteers) vd_need_arg "$@"; volunteers=$2; shift 2 ;;
    --registered) vd_need_arg "$@"; registered=$2; shift 2 ;;
    --paced) vd_need_arg "$@"; paced=$2; shift 2 ;;
    --rate) vd_need_arg "$@"; rate=$2; shift 2 ;;
    --burst) vd_need_arg "$@"; burst=$2; shift 2 ;;
    --skip) vd_need_arg "$@"; skip=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --partitions) vd_need_arg "$@"; partitions=$2; shift 2 ;;
    --seed) vd_need_arg "$@"; seed=$2; shift 2 ;;
    --keep) VD_KEEP=1; shift ;;
    -h|--help) vd_usage; exit 0 ;;
    *) echo "bench: error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$quick" = 1 ]; then
  volunteers=${volunteers:-2000}
  paced=${paced:-300}
  burst=${burst:-5000}
fi
volunteers=${volunteers:-20000}
paced=${paced:-1000}
burst=${burst:-50000}
# The mock keeps at most 5 MiB per partition (about 6,000 requests, 5,000 outputs of three).
if [ -z "$partitions" ]; then
  partitions=$(( (paced + burst + 4999) / 5000 )); [ "$partitions" -ge 8 ] || partitions=8
fi
for v in volunteers registered paced burst rate partitions seed timeout; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: error: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
[ "$volunteers" -ge 100 ] || { echo "bench: error: --volunteers must be at least 100" >&2; exit 2; }
[ "$paced" -ge 10 ] || { echo "bench: error: --paced must be at least 10" >&2; exit 2; }
[ "$burst" -ge 100 ] || { echo "bench: error: --burst must be at least 100" >&2; exit 2; }
[ "$rate" -ge 1 ] || { echo "bench: error: --rate must be at least 1" >&2; exit 2; }
{ [ "$partitions" -ge 1 ] && [ "$partitions" -le 128 ]; } || { echo "bench: error: --partitions must be 1..128" >&2; exit 2; }
vd_need_tools cmake redis-server redis-cli python3 curl mkfifo
# The Python reference's Kafka client (Debian's package, for Debian's python3).
if ! dpkg-query -W -f='${Status}' python3-confluent-kafka 2>/dev/null | grep -q "install ok installed"; then
  vd_say "installing python3-confluent-kafka (the Python reference's Kafka client)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-confluent-kafka >/dev/null ||
    vd_say "could not install python3-confluent-kafka: the Python row is left out"
fi

# ---- clean-up: whatever happens, stop what we started and remove the temp dir ----------------
# (kept on request, and after a failure, for its logs; not after an interrupt)

vd_stack_cleanup_on_exit "daemon.log, redis.log, kafka-mock.err, topics/"

# ---- 1. build (Release) -------------------------------------------------------------------------

vd_make_tmp bench
tmp=$VD_TMP
vd_build "$ROOT" "$build" release
vd_say "working in $tmp"

# ---- 2. Redis: our own, on a free loopback port ------------------------------------------------

vd_start_redis

# ---- 3. Kafka: the embedded mock cluster, its stdin a fifo we hold open ---------------------
# The mock keeps at most 5 MiB per partition and drops the oldest messages past that, read or
# not: volunteer and output topics get a partition per 8,000 volunteers / 5,000 requests (at
# least 4); bench.py refuses a request topic whose partitions would overflow.

vol_parts=$(( (volunteers + 7999) / 8000 )); [ "$vol_parts" -ge 4 ] || vol_parts=4
out_parts=$(( (paced + burst + 1999) / 2000 )); [ "$out_parts" -ge 4 ] || out_parts=4
# Every program has topics of its own: vd.* the daemon, kp.* the Kafka path (vd-echo), cap.* the
# daemon whose Redis calls are recorded, py.* the Python worker.
topics=()
for t in vd kp cap py; do
  topics+=("$t.requests:$partitions" "$t.assignments:$out_parts" "$t.notifications:$out_parts")
done
topics+=("vd.volunteers:$vol_parts" "cap.volunteers:$vol_parts" vd.responses:4 cap.responses:4
         vd.deadletter:2 cap.deadletter:2)
vd_start_kafka_mock "$build" "${topics[@]}"
brokers=$VD_BROKERS
vd_say "Kafka mock cluster at $brokers (pid $VD_MOCK_PID; vd.requests has $partitions partitions)"

# ---- 4. the daemon: direct assignment, quiet log, /metrics on a free port -------------------

http_port=$(vd_free_port)
vd_write_config benchmark vdispatch-bench "127.0.0.1:$http_port" warn
vd_check_config "$build" bench "${VD_SET_ARGS[@]}"
# The effective settings: bench.py's Python implementation uses the same matching parameters.
"$build/vdispatchd" -c "$tmp/vdispatch.conf" "${VD_SET_ARGS[@]}" --dump-config >"$tmp/effective.conf" ||
  vd_die "vdispatchd --dump-config failed"
daemon_readyz() {
  vd_alive "$VD_DAEMON_PID" && curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$http_port/readyz"
}
vd_start_daemon "$build" 0.2 "was not ready (/readyz)" daemon_readyz "${VD_SET_ARGS[@]}"
vd_say "vdispatchd ready (pid $VD_DAEMON_PID; /metrics on 127.0.0.1:$http_port${VD_BENCH_SET:+; with $VD_BENCH_SET})"

# ---- 5. the measurements ------------------------------------------------------------------------

rc=0
python3 "$ROOT/scripts/bench.py" \
  --redis-port "$VD_REDIS_PORT" --redis-pid "$VD_REDIS_PID" \
  --mock-pid "$VD_MOCK_PID" --brokers "$brokers" --metrics "http://127.0.0.1:$http_port/metrics" --daemon-pid "$VD_DAEMON_PID" \
  --build "$build" --workdir "$tmp" --volunteers "$volunteers" --registered "$registered" --paced "$paced" --rate "$rate" \
  --burst "$burst" --skip "$skip" --seed "$seed" --timeout "$timeout" --config "$tmp/effective.conf" \
  --load-before "$load_before" || rc=$?
if [ $rc -ne 0 ]; then
  vd_show_tail "$tmp/daemon.log"
  vd_die "bench.py failed (status $rc)"
fi
warnings=$(grep -c '"level":"warn"' "$tmp/daemon.log" 2>/dev/null || true)
[ "${warnings:-0}" = 0 ] || vd_say "note: the daemon logged $warnings warning line(s), e.g.: $(grep -m1 '"level":"warn"' "$tmp/daemon.log" | cut -c1-200)"
errors=$(grep -c '"level":"error"' "$tmp/daemon.log" 2>/dev/null || true)
[ "${errors:-0}" = 0 ] || vd_say "note: the daemon logged $errors error line(s); see $tmp/daemon.log (kept)"
[ "${errors:-0}" = 0 ] || VD_KEEP=1
vd_say "done in $(vd_elapsed) s"
