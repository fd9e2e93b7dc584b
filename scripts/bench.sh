#!/usr/bin/env bash
# Benchmarks vdispatchd on this machine and prints figures: it builds (Release), starts a
# private redis-server, the embedded Kafka (vd-kafka-mock) and vdispatchd (direct assignment,
# log.level=warn, /metrics on a free port), loads an available pool of volunteers around
# Hohhot's centre, produces a burst of residents' requests and measures throughput, latency,
# Redis round trips and CPU per match. In the same run, on the same Redis and an identical
# copy of the pool, it measures two baselines (scripts/bench.py): raw pipelined GEOSEARCH
# (Redis' search capacity) and a plain Python implementation of the same match logic, and
# prints the daemon's figures as ratios to them. Figures only: nothing is asserted, the exit
# status says whether the run completed, not whether it was fast.
#
# Usage: scripts/bench.sh [--volunteers N] [--requests N] [--quick] [options]
#   --volunteers N   available volunteers loaded before the burst (default 20000)
#   --requests N     requests in the burst (default 20000)
#   --quick          smoke run: 2000 volunteers, 2000 requests (explicit sizes still win)
#   --partitions N   partitions of vd.requests, i.e. how many requests the daemon matches at
#                    once (it runs one job per partition at a time; default 4, as the demo)
#   --seed N         scenario seed (default 1)
#   --keep           keep the temp dir (logs, configs, topic dumps); also kept on failure
# Env: VD_BENCH_TIMEOUT (seconds allowed for the burst, default 300), VD_BUILD_DIR (default
# <source>/build), TMPDIR, VD_BENCH_SET (extra daemon settings, space-separated
# section.key=value). The system Redis and any other running instance are left alone.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # read by lib.sh
VD_LOG_TAG=bench
# shellcheck source=lib.sh
source "$ROOT/scripts/lib.sh"

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
volunteers=""
requests=""
quick=0
partitions=4
seed=1
VD_KEEP=0
timeout=${VD_BENCH_TIMEOUT:-300}
build=${VD_BUILD_DIR:-$ROOT/build}
vd_set_args VD_BENCH_SET

while [ $# -gt 0 ]; do
  case "$1" in
    --volunteers) vd_need_arg "$@"; volunteers=$2; shift 2 ;;
    --requests) vd_need_arg "$@"; requests=$2; shift 2 ;;
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
  requests=${requests:-2000}
fi
volunteers=${volunteers:-20000}
requests=${requests:-20000}
for v in volunteers requests partitions seed timeout; do
  [[ ${!v} =~ ^[0-9]+$ ]] || { echo "bench: error: $v must be a whole number, got '${!v}'" >&2; exit 2; }
done
[ "$volunteers" -ge 100 ] || { echo "bench: error: --volunteers must be at least 100" >&2; exit 2; }
[ "$requests" -ge 100 ] || { echo "bench: error: --requests must be at least 100" >&2; exit 2; }
{ [ "$partitions" -ge 1 ] && [ "$partitions" -le 64 ]; } || { echo "bench: error: --partitions must be 1..64" >&2; exit 2; }
vd_need_tools cmake redis-server redis-cli kcat python3 curl mkfifo

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
out_parts=$(( (requests + 4999) / 5000 )); [ "$out_parts" -ge 4 ] || out_parts=4
vd_start_kafka_mock "$build" "vd.requests:$partitions" "vd.volunteers:$vol_parts" vd.responses:4 \
  "vd.assignments:$out_parts" "vd.notifications:$out_parts" vd.deadletter:2
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
  --build "$build" --workdir "$tmp" --volunteers "$volunteers" --requests "$requests" \
  --partitions "$partitions" --seed "$seed" --timeout "$timeout" --config "$tmp/effective.conf" \
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
