#!/usr/bin/env bash
# Runs the vdispatch demo end to end on this machine, with one command: installs the Debian
# packages, builds (Release), starts a private redis-server and the embedded Kafka
# (vd-kafka-mock) on loopback, starts vdispatchd in direct-assignment mode, plays one day
# of Hohhot's volunteer service (scripts/scenario.py: volunteers come on duty at community
# stations, then residents' requests arrive), waits until every request has its outcome on
# vd.assignments, prints the summary (scripts/summary.py) and stops everything.
#
# Usage: scripts/demo.sh [--volunteers N] [--requests N] [--seed N] [--keep] [--no-install]
#   --volunteers N   volunteers on duty (default 3000; env VD_DEMO_VOLUNTEERS)
#   --requests N     residents' requests (default 1000; env VD_DEMO_REQUESTS)
#   --seed N         scenario seed (default 1; env VD_DEMO_SEED)
#   --keep           keep the temp dir (logs, configs, topic dumps; env VD_DEMO_KEEP=1);
#                    it is also kept when the demo fails, and removed after Ctrl-C
#   --no-install     skip scripts/install-deps.sh (env VD_DEMO_NO_INSTALL=1)
# Other env: VD_DEMO_TIMEOUT (seconds to wait for all outcomes, default 180), VD_BUILD_DIR
# (default <source>/build), TMPDIR (where the temp dir goes), VD_DEMO_SET (extra daemon
# settings, space-separated, e.g. VD_DEMO_SET="matching.candidates=16 log.level=debug").
# Nothing outside the temp dir and the build dir is touched: the system Redis on 6379 is
# left alone, and every port is picked free at start, so two runs can even overlap.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck disable=SC2034  # read by lib.sh
VD_LOG_TAG=demo
# shellcheck source=lib.sh
source "$ROOT/scripts/lib.sh"

volunteers=${VD_DEMO_VOLUNTEERS:-3000}
requests=${VD_DEMO_REQUESTS:-1000}
seed=${VD_DEMO_SEED:-1}
keep=${VD_DEMO_KEEP:-0}
no_install=${VD_DEMO_NO_INSTALL:-0}
timeout=${VD_DEMO_TIMEOUT:-180}
build=${VD_BUILD_DIR:-$ROOT/build}
extra_set=()
for kv in ${VD_DEMO_SET:-}; do
  [[ $kv =~ ^[a-z_]+\.[A-Za-z0-9_.-]+=.*$ ]] || { echo "demo: error: VD_DEMO_SET entry '$kv' is not section.key=value" >&2; exit 2; }
  extra_set+=(--set "$kv")
done

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then vd_die "$1 needs a value (see --help)"; fi; }
while [ $# -gt 0 ]; do
  case "$1" in
    --volunteers) need_arg "$@"; volunteers=$2; shift 2 ;;
    --requests) need_arg "$@"; requests=$2; shift 2 ;;
    --seed) need_arg "$@"; seed=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --no-install) no_install=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) vd_die "unknown option '$1' (see --help)" ;;
  esac
done
for v in volunteers requests seed timeout; do
  [[ ${!v} =~ ^[0-9]+$ ]] || vd_die "$v must be a whole number, got '${!v}'"
done
[ "$volunteers" -ge 100 ] || vd_die "--volunteers must be at least 100"
[ "$requests" -ge 4 ] || vd_die "--requests must be at least 4"

# ---- clean-up: whatever happens, stop what we started and remove the temp dir ----------------

tmp=""
redis_pid=""
mock_pid=""
daemon_pid=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  vd_stop "$daemon_pid" vdispatchd 12 || true   # first, while Kafka and Redis are still up
  exec 7>&-                                     # the Kafka mock's stdin: EOF makes it exit
  vd_stop "$mock_pid" vd-kafka-mock 5 || true
  vd_stop "$redis_pid" redis-server 5 || true
  if [ -n "$tmp" ] && [ -d "$tmp" ]; then
    # Kept on request, and after a failure (for its logs); not after an interrupt.
    if [ "$keep" = 1 ] || { [ $rc -ne 0 ] && [ $rc -ne 130 ] && [ $rc -ne 143 ]; }; then
      echo "demo: kept $tmp (daemon.log, redis.log, kafka-mock.err, topics/*.jsonl)"
    else
      rm -rf "$tmp"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'echo; echo "demo: interrupted" >&2; exit 130' INT
trap 'echo "demo: terminated" >&2; exit 143' TERM

# Shows the end of a log file, for error messages.
show_tail() {
  local file=$1 n=${2:-20}
  [ -s "$file" ] || return 0
  echo "---- last lines of $file ----" >&2
  tail -n "$n" "$file" >&2
  echo "----" >&2
}

# ---- 1. packages and build ---------------------------------------------------------------------

if [ "$no_install" = 1 ]; then
  vd_say "skipping scripts/install-deps.sh (--no-install)"
else
  vd_say "checking packages (scripts/install-deps.sh)"
  bash "$ROOT/scripts/install-deps.sh" || vd_die "installing packages failed (see above)"
fi
for tool in cmake redis-server redis-cli kcat python3 awk mkfifo timeout; do
  command -v "$tool" >/dev/null || vd_die "'$tool' is not installed (run scripts/install-deps.sh)"
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vdispatch-demo.XXXXXX") || vd_die "cannot create a temp dir"
tmp=$(cd "$tmp" && pwd -P)   # as Redis reports it
mkdir -p "$tmp/topics"

vd_say "building (Release) in $build"
jobs=$(nproc 2>/dev/null || echo 2)
if ! cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$tmp/build.log" 2>&1 ||
   ! cmake --build "$build" -j "$jobs" >>"$tmp/build.log" 2>&1; then
  tail -n 40 "$tmp/build.log" >&2
  vd_die "the build failed (output above; all of it in $tmp/build.log)"
fi
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
rcli() { redis-cli -p "$redis_port" "$@"; }
vd_say "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$redis_port (pid $redis_pid)"

# ---- 3. Kafka: the embedded mock cluster, its stdin a fifo we hold open ---------------------

mkfifo "$tmp/kafka-mock.in"
"$build/vd-kafka-mock" \
  --topic vd.requests:4 --topic vd.volunteers:4 --topic vd.responses:4 \
  --topic vd.assignments:2 --topic vd.notifications:2 --topic vd.deadletter:2 \
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
vd_say "Kafka mock cluster at $brokers (pid $mock_pid)"

# ---- 4. the daemon -------------------------------------------------------------------------------

cat >"$tmp/vdispatch.conf" <<EOF
; vdispatch demo configuration (generated by scripts/demo.sh)
[kafka]
brokers = $brokers
group_id = vdispatch-demo
[redis]
host = 127.0.0.1
port = $redis_port
[matching]
offer_timeout_ms = 0
[http]
listen =
[log]
level = info
format = json
file = $tmp/daemon.log
EOF
"$build/vdispatchd" -c "$tmp/vdispatch.conf" "${extra_set[@]}" --check-config >"$tmp/check-config.out" 2>&1 ||
  { cat "$tmp/check-config.out" >&2; vd_die "vdispatchd rejected the demo config $tmp/vdispatch.conf"; }
"$build/vdispatchd" -c "$tmp/vdispatch.conf" "${extra_set[@]}" >"$tmp/daemon.out" 2>&1 7>&- &
daemon_pid=$!
daemon_ready() {  # also true when the daemon has exited: no point waiting
  vd_alive "$daemon_pid" || return 0
  grep -q '"msg":"ready' "$tmp/daemon.log" 2>/dev/null
}
vd_wait_until 30 0.1 daemon_ready || true
if ! grep -q '"msg":"ready' "$tmp/daemon.log" 2>/dev/null; then
  show_tail "$tmp/daemon.log"
  show_tail "$tmp/daemon.out"
  vd_alive "$daemon_pid" || vd_die "vdispatchd exited during start-up (see above)"
  vd_die "vdispatchd did not log 'ready' within 30 s (see above)"
fi
vd_say "vdispatchd ready (pid $daemon_pid; log $tmp/daemon.log${VD_DEMO_SET:+; with $VD_DEMO_SET})"

# ---- 5. the scenario --------------------------------------------------------------------------

python3 "$ROOT/scripts/scenario.py" --volunteers "$volunteers" --requests "$requests" \
  --seed "$seed" --start now --out "$tmp/scenario" || vd_die "scenario.py failed"
read -r vol_msgs req_msgs n_bad n_dup pools < <(python3 - "$tmp/scenario/scenario.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
pools = " ".join(f"{k}={v}" for k, v in sorted(d["pools"].items()))
print(d["volunteer_messages"], d["request_messages"], d["request_stats"]["malformed"],
      d["request_stats"]["duplicates"], pools)
EOF
) || true
[ -n "${pools:-}" ] || vd_die "cannot read $tmp/scenario/scenario.json"
vd_say "scenario (seed $seed): $volunteers volunteers ($vol_msgs messages), $requests requests ($req_msgs messages: $n_bad malformed, $n_dup duplicates)"

# ---- 6. volunteers first: wait until the daemon has them all in its pools ----------------------

out=$("$build/vd-produce" -b "$brokers" -t vd.volunteers <"$tmp/scenario/volunteers.bin") ||
  vd_die "producing volunteers failed: $out"
vd_say "volunteers: $out to vd.volunteers"

pool_status() {
  local want got all_ok=0 line="" name
  for kv in $pools; do
    name=${kv%%=*}
    want=${kv#*=}
    got=$(rcli zcard "vd:pool:$name" 2>/dev/null || echo "?")
    line+="$name $got/$want  "
    [ "$got" = "$want" ] || all_ok=1
  done
  # Every volunteer has a record once their first event is in (so no availability is pending).
  local recs
  recs=$(rcli --scan --pattern 'vd:vol:*' 2>/dev/null | wc -l)
  line+="records $recs/$volunteers"
  [ "$recs" = "$volunteers" ] || all_ok=1
  echo "$line"
  return $all_ok
}
pools_ready() {
  vd_alive "$daemon_pid" || return 0
  pool_status >/dev/null
}
vd_wait_until 60 0.25 pools_ready || true
vd_alive "$daemon_pid" || { show_tail "$tmp/daemon.log"; vd_die "vdispatchd exited while taking volunteers (see above)"; }
if ! status=$(pool_status); then
  show_tail "$tmp/daemon.log"
  vd_die "the daemon did not index all volunteers within 60 s: $status"
fi
vd_say "volunteer pools ready: $status"

# ---- 7. requests: wait until each has its outcome on vd.assignments ----------------------------

dump() {  # dump TOPIC FILE: the whole topic as kcat -J lines; FILE appears complete or not at all
  kcat -C -b "$brokers" -t "$1" -o beginning -e -J -q >"$2.part" 2>"$2.err" && mv "$2.part" "$2"
}
out=$("$build/vd-produce" -b "$brokers" -t vd.requests <"$tmp/scenario/requests.bin") ||
  vd_die "producing requests failed: $out"
t_req=$(date +%s.%N)
vd_say "requests: $out to vd.requests"
dump vd.requests "$tmp/topics/requests.jsonl" || vd_die "kcat could not read vd.requests: $(cat "$tmp/topics/requests.jsonl.err")"

deadline=$(awk -v t="$t_req" -v d="$timeout" 'BEGIN { printf "%.3f", t + d }')
last=""
while :; do
  if ! vd_alive "$daemon_pid"; then
    show_tail "$tmp/daemon.log"
    vd_die "vdispatchd exited while matching requests (see above)"
  fi
  dump vd.assignments "$tmp/topics/assignments.jsonl" & d1=$!
  dump vd.deadletter "$tmp/topics/deadletter.jsonl" & d2=$!
  wait "$d1" || true
  wait "$d2" || true
  if [ -f "$tmp/topics/assignments.jsonl" ] && [ -f "$tmp/topics/deadletter.jsonl" ]; then
    rc=0
    progress=$(python3 "$ROOT/scripts/summary.py" --progress "$tmp/topics/requests.jsonl" \
      "$tmp/topics/assignments.jsonl" --deadletter "$tmp/topics/deadletter.jsonl") || rc=$?
    [ $rc -eq 0 ] || [ $rc -eq 3 ] || vd_die "summary.py failed while checking progress"
    read -r done_n total_n <<<"$progress"
    if [ "$progress" != "$last" ]; then
      vd_say "outcomes: $done_n/$requests requests"
      last=$progress
    fi
    if [ $rc -eq 0 ] && [ "$total_n" -eq "$requests" ]; then break; fi
  fi
  if awk -v n="$(date +%s.%N)" -v d="$deadline" 'BEGIN { exit !(n >= d) }'; then
    show_tail "$tmp/daemon.log"
    vd_die "timed out after ${timeout} s: ${done_n:-0} of ${total_n:-?} requests found on vd.requests have an outcome on vd.assignments, $requests expected (daemon log above; raise VD_DEMO_TIMEOUT if the machine is slow)"
  fi
  sleep 0.5
done
match_s=$(awk -v a="$t_req" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
vd_say "all $requests requests have an outcome (${match_s} s after producing them)"
dump vd.notifications "$tmp/topics/notifications.jsonl" || true
notif=$(wc -l <"$tmp/topics/notifications.jsonl" 2>/dev/null || echo 0)
notif_by_type=$(python3 - "$tmp/topics/notifications.jsonl" <<'EOF'
import collections, json, sys
c = collections.Counter()
for line in open(sys.argv[1]):
    try:
        c[json.loads(json.loads(line)["payload"])["type"]] += 1
    except (ValueError, KeyError, TypeError):
        c["(unreadable)"] += 1
print(", ".join(f"{t} {n}" for t, n in sorted(c.items())))
EOF
)
vd_say "notifications: $notif on vd.notifications ($notif_by_type)"

# ---- 8. summary, then a graceful stop -----------------------------------------------------------

python3 "$ROOT/scripts/summary.py" --json "$tmp/topics/requests.jsonl" "$tmp/topics/assignments.jsonl" \
  --deadletter "$tmp/topics/deadletter.jsonl" --scenario "$tmp/scenario/scenario.json" >"$tmp/summary.json"
echo
python3 "$ROOT/scripts/summary.py" "$tmp/topics/requests.jsonl" "$tmp/topics/assignments.jsonl" \
  --deadletter "$tmp/topics/deadletter.jsonl" --scenario "$tmp/scenario/scenario.json"
echo

t_stop=$(date +%s.%N)
vd_stop "$daemon_pid" vdispatchd 12
daemon_rc=$VD_STOP_RC
daemon_pid=""
stop_s=$(awk -v a="$t_stop" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "$daemon_rc" != 0 ]; then
  show_tail "$tmp/daemon.log"
  vd_say "vdispatchd exited with status $daemon_rc on SIGTERM (expected 0); log above"
  keep=1
else
  vd_say "vdispatchd stopped cleanly in ${stop_s} s"
fi
exec 7>&-
vd_stop "$mock_pid" vd-kafka-mock 5; mock_pid=""
vd_stop "$redis_pid" redis-server 5; redis_pid=""
errors=$(grep -c '"level":"error"' "$tmp/daemon.log" || true)
[ "$errors" = 0 ] || vd_say "note: the daemon logged $errors error line(s); see $tmp/daemon.log"
# The run is a failure if outcomes contradict each other or the scenario's designed outcomes
# (suburban, rare-skill and late requests unmatched with their reasons; malformed input
# dead-lettered) did not happen.
problems=$(python3 - "$tmp/summary.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
bad = [f"{k} {c['got']}/{c['expected']}" for k, c in r.get("scenario_checks", {}).items()
       if c["got"] != c["expected"]]
if r["requests_with_conflicting_outcomes"]:
    bad.append(f"{r['requests_with_conflicting_outcomes']} requests with conflicting outcomes")
if r["volunteers_assigned_to_several_requests"]:
    bad.append(f"{r['volunteers_assigned_to_several_requests']} volunteers on several requests")
print("; ".join(bad))
EOF
)
if [ -n "$problems" ]; then
  vd_say "FAILED checks: $problems (details in $tmp)"
  keep=1
  exit 1
fi
vd_say "done in $(vd_elapsed) s"
[ "$daemon_rc" = 0 ]
