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
keep=0
timeout=${VD_BENCH_TIMEOUT:-300}
build=${VD_BUILD_DIR:-$ROOT/build}
extra_set=()
for kv in ${VD_BENCH_SET:-}; do
  [[ $kv =~ ^[a-z_]+\.[A-Za-z0-9_.-]+=.*$ ]] || { echo "bench: error: VD_BENCH_SET entry '$kv' is not section.key=value" >&2; exit 2; }
  extra_set+=(--set "$kv")
done

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then vd_die "$1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --volunteers) need_arg "$@"; volunteers=$2; shift 2 ;;
    --requests) need_arg "$@"; requests=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    --partitions) need_arg "$@"; partitions=$2; shift 2 ;;
    --seed) need_arg "$@"; seed=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    -h|--help) usage; exit 0 ;;
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
for tool in cmake redis-server redis-cli kcat python3 curl mkfifo; do
  command -v "$tool" >/dev/null || vd_die "'$tool' is not installed (run scripts/install-deps.sh)"
done

# ---- clean-up: whatever happens, stop what we started and remove the temp dir ----------------

tmp=""
redis_pid=""
mock_pid=""
daemon_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  vd_stop "$daemon_pid" vdispatchd 12 || true   # first, while Kafka and Redis are still up
  exec 7>&- 2>/dev/null || true                 # the Kafka mock's stdin: EOF makes it exit
  vd_stop "$mock_pid" vd-kafka-mock 5 || true
  vd_stop "$redis_pid" redis-server 5 || true
  if [ -n "$tmp" ] && [ -d "$tmp" ]; then
    if [ "$keep" = 1 ] || { [ $rc -ne 0 ] && [ $rc -ne 130 ] && [ $rc -ne 143 ]; }; then
      echo "bench: kept $tmp (daemon.log, redis.log, kafka-mock.err, topics/)"
    else
      rm -rf "$tmp"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'echo; echo "bench: interrupted" >&2; exit 130' INT
trap 'echo "bench: terminated" >&2; exit 143' TERM

show_tail() {
  local file=$1 n=${2:-20}
  [ -s "$file" ] || return 0
  echo "---- last lines of $file ----" >&2
  tail -n "$n" "$file" >&2
  echo "----" >&2
}

# ---- 1. build (Release) -------------------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vdispatch-bench.XXXXXX") || vd_die "cannot create a temp dir"
tmp=$(cd "$tmp" && pwd -P)   # as Redis reports it
mkdir -p "$tmp/topics"
vd_say "building (Release) in $build"
if ! cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$tmp/build.log" 2>&1 ||
   ! cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" >>"$tmp/build.log" 2>&1; then
  tail -n 40 "$tmp/build.log" >&2
  vd_die "the build failed (output above; all of it in $tmp/build.log)"
fi
grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$build/CMakeCache.txt" ||
  vd_die "$build is not a Release build (CMAKE_BUILD_TYPE in $build/CMakeCache.txt)"
for b in vdispatchd vd-kafka-mock vd-produce; do
  [ -x "$build/$b" ] || vd_die "the build did not produce $build/$b"
done
vd_say "working in $tmp"

# ---- 2. Redis: our own, on a free loopback port ------------------------------------------------

redis_port=""
redis_up() {  # our server answers and reports our temp dir (not another Redis on that port)
  vd_alive "$redis_pid" || return 0
  timeout 2 redis-cli -p "$1" config get dir 2>/dev/null | grep -qxF "$tmp"
}
for attempt in 1 2 3 4 5 6 7 8; do
  port=$(vd_free_port)
  redis-server --bind 127.0.0.1 --port "$port" --dir "$tmp" --save '' --appendonly no \
    --daemonize no --logfile "$tmp/redis.log" 7>&- &
  redis_pid=$!
  if vd_wait_until 5 0.1 redis_up "$port" && vd_alive "$redis_pid" &&
     timeout 2 redis-cli -p "$port" config get dir 2>/dev/null | grep -qxF "$tmp"; then
    redis_port=$port
    break
  fi
  vd_stop "$redis_pid" redis-server 3 || true
  redis_pid=""
  vd_say "redis-server could not use port $port (attempt $attempt); trying another"
done
[ -n "$redis_port" ] || { show_tail "$tmp/redis.log"; vd_die "redis-server did not start (see $tmp/redis.log)"; }
vd_say "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$redis_port (pid $redis_pid)"

# ---- 3. Kafka: the embedded mock cluster, its stdin a fifo we hold open ---------------------
# The mock keeps at most 5 MiB per partition and drops the oldest messages past that, read or
# not: volunteer and output topics get a partition per 8,000 volunteers / 5,000 requests (at
# least 4); bench.py refuses a request topic whose partitions would overflow.

vol_parts=$(( (volunteers + 7999) / 8000 )); [ "$vol_parts" -ge 4 ] || vol_parts=4
out_parts=$(( (requests + 4999) / 5000 )); [ "$out_parts" -ge 4 ] || out_parts=4
mkfifo "$tmp/kafka-mock.in"
"$build/vd-kafka-mock" \
  --topic "vd.requests:$partitions" --topic "vd.volunteers:$vol_parts" --topic vd.responses:4 \
  --topic "vd.assignments:$out_parts" --topic "vd.notifications:$out_parts" --topic vd.deadletter:2 \
  <"$tmp/kafka-mock.in" >"$tmp/kafka-mock.out" 2>"$tmp/kafka-mock.err" &
mock_pid=$!
exec 7>"$tmp/kafka-mock.in"
if ! vd_wait_until 20 0.1 grep -qx ready "$tmp/kafka-mock.out"; then
  show_tail "$tmp/kafka-mock.err"
  vd_alive "$mock_pid" || vd_die "vd-kafka-mock exited before it was ready (see above)"
  vd_die "vd-kafka-mock was not ready within 20 s"
fi
brokers=$(sed -n 's/^bootstrap=//p' "$tmp/kafka-mock.out" | head -n 1)
[ -n "$brokers" ] || vd_die "vd-kafka-mock printed no bootstrap= line (see $tmp/kafka-mock.out)"
vd_say "Kafka mock cluster at $brokers (pid $mock_pid; vd.requests has $partitions partitions)"

# ---- 4. the daemon: direct assignment, quiet log, /metrics on a free port -------------------

http_port=$(vd_free_port)
cat >"$tmp/vdispatch.conf" <<EOF
; vdispatch benchmark configuration (generated by scripts/bench.sh)
[kafka]
brokers = $brokers
group_id = vdispatch-bench
[redis]
host = 127.0.0.1
port = $redis_port
[matching]
offer_timeout_ms = 0
[http]
listen = 127.0.0.1:$http_port
[log]
level = warn
format = json
file = $tmp/daemon.log
EOF
"$build/vdispatchd" -c "$tmp/vdispatch.conf" "${extra_set[@]}" --check-config >"$tmp/check-config.out" 2>&1 ||
  { cat "$tmp/check-config.out" >&2; vd_die "vdispatchd rejected the bench config $tmp/vdispatch.conf"; }
# The effective settings: bench.py's Python implementation uses the same matching parameters.
"$build/vdispatchd" -c "$tmp/vdispatch.conf" "${extra_set[@]}" --dump-config >"$tmp/effective.conf" ||
  vd_die "vdispatchd --dump-config failed"
"$build/vdispatchd" -c "$tmp/vdispatch.conf" "${extra_set[@]}" >"$tmp/daemon.out" 2>&1 7>&- &
daemon_pid=$!
daemon_ready() {  # also true when the daemon has exited: no point waiting
  vd_alive "$daemon_pid" || return 0
  curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$http_port/readyz" 2>/dev/null
}
vd_wait_until 30 0.2 daemon_ready || true
if ! vd_alive "$daemon_pid" || ! curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$http_port/readyz"; then
  show_tail "$tmp/daemon.log"
  show_tail "$tmp/daemon.out"
  vd_alive "$daemon_pid" || vd_die "vdispatchd exited during start-up (see above)"
  vd_die "vdispatchd was not ready (/readyz) within 30 s (see above)"
fi
vd_say "vdispatchd ready (pid $daemon_pid; /metrics on 127.0.0.1:$http_port${VD_BENCH_SET:+; with $VD_BENCH_SET})"

# ---- 5. the measurements ------------------------------------------------------------------------

rc=0
python3 "$ROOT/scripts/bench.py" \
  --redis-port "$redis_port" --redis-pid "$redis_pid" \
  --mock-pid "$mock_pid" --brokers "$brokers" --metrics "http://127.0.0.1:$http_port/metrics" --daemon-pid "$daemon_pid" \
  --build "$build" --workdir "$tmp" --volunteers "$volunteers" --requests "$requests" \
  --partitions "$partitions" --seed "$seed" --timeout "$timeout" --config "$tmp/effective.conf" \
  --load-before "$load_before" || rc=$?
if [ $rc -ne 0 ]; then
  show_tail "$tmp/daemon.log"
  vd_die "bench.py failed (status $rc)"
fi
warnings=$(grep -c '"level":"warn"' "$tmp/daemon.log" 2>/dev/null || true)
[ "${warnings:-0}" = 0 ] || vd_say "note: the daemon logged $warnings warning line(s), e.g.: $(grep -m1 '"level":"warn"' "$tmp/daemon.log" | cut -c1-200)"
errors=$(grep -c '"level":"error"' "$tmp/daemon.log" 2>/dev/null || true)
[ "${errors:-0}" = 0 ] || vd_say "note: the daemon logged $errors error line(s); see $tmp/daemon.log (kept)"
[ "${errors:-0}" = 0 ] || keep=1
vd_say "done in $(vd_elapsed) s"
