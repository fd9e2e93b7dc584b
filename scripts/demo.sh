#!/usr/bin/env bash
# Runs the vdispatch demo end to end on this machine, with one command: installs the Debian
# packages, builds (Release), starts a private redis-server and the embedded Kafka
# (vd-kafka-mock) on loopback, starts vdispatchd in direct-assignment mode, plays one day
# of Hohhot's volunteer service (scripts/scenario.py: volunteers come on duty at community
# stations, then residents' requests arrive), waits until every request has its outcome on
# vd.assignments, prints the summary (scripts/summary.py) and stops everything.
#
# Usage: scripts/demo.sh [--volunteers N] [--requests N] [--seed N] [--offers] [--event KIND]
#                       [--speed N] [--keep] [--no-install]
#   --volunteers N   volunteers on duty (default 3000; env VD_DEMO_VOLUNTEERS)
#   --requests N     residents' requests (default 1000; env VD_DEMO_REQUESTS)
#   --event KIND     a large event instead of the city's day: concert (600 volunteers at the
#                    stadium, 2,000 incidents in surges over 3 minutes) or expo (140
#                    volunteers, 300 incidents); incidents come at their times (sped up by
#                    --speed, default 4), matched in rounds (matching.batch_window_ms 300), and
#                    volunteers report each task done 2-6 s after being sent, then serve again
#   --seed N         scenario seed (default 1; env VD_DEMO_SEED)
#   --offers         offer mode: each match is an offer (6 s to answer, env VD_DEMO_OFFER_MS)
#                    that simulated phones (scripts/volunteer_app.py) accept (80%), decline
#                    (10%) or leave unanswered after 0.5-4 s; declines and timeouts go to the
#                    next best volunteer
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
VD_KEEP=${VD_DEMO_KEEP:-0}
no_install=${VD_DEMO_NO_INSTALL:-0}
offers=0
event=""
speed=4
set_sizes=0
offer_ms=${VD_DEMO_OFFER_MS:-6000}
timeout=${VD_DEMO_TIMEOUT:-180}
build=${VD_BUILD_DIR:-$ROOT/build}
vd_set_args VD_DEMO_SET

while [ $# -gt 0 ]; do
  case "$1" in
    --volunteers) vd_need_arg "$@"; volunteers=$2; set_sizes=1; shift 2 ;;
    --requests) vd_need_arg "$@"; requests=$2; set_sizes=1; shift 2 ;;
    --event) vd_need_arg "$@"; event=$2; shift 2 ;;
    --speed) vd_need_arg "$@"; speed=$2; shift 2 ;;
    --seed) vd_need_arg "$@"; seed=$2; shift 2 ;;
    --keep) VD_KEEP=1; shift ;;
    --offers) offers=1; shift ;;
    --no-install) no_install=1; shift ;;
    -h|--help) vd_usage; exit 0 ;;
    *) vd_die "unknown option '$1' (see --help)" ;;
  esac
done
for v in volunteers requests seed timeout offer_ms speed; do
  [[ ${!v} =~ ^[0-9]+$ ]] || vd_die "$v must be a whole number, got '${!v}'"
done
case "$event" in ""|concert|expo) ;; *) vd_die "--event must be concert or expo, got '$event'" ;; esac
[ "$speed" -ge 1 ] || vd_die "--speed must be at least 1"
[ "$volunteers" -ge 100 ] || vd_die "--volunteers must be at least 100"
[ "$requests" -ge 4 ] || vd_die "--requests must be at least 4"

# ---- clean-up: whatever happens, stop what we started and remove the temp dir ----------------
# (kept on request, and after a failure, for its logs; not after an interrupt)

vd_stack_cleanup_on_exit "daemon.log, redis.log, kafka-mock.err, topics/*.jsonl"

# ---- 1. packages and build ---------------------------------------------------------------------

if [ "$no_install" = 1 ]; then
  vd_say "skipping scripts/install-deps.sh (--no-install)"
else
  vd_say "checking packages (scripts/install-deps.sh)"
  bash "$ROOT/scripts/install-deps.sh" || vd_die "installing packages failed (see above)"
fi
vd_need_tools cmake redis-server redis-cli kcat python3 awk mkfifo timeout
vd_make_tmp demo
tmp=$VD_TMP
vd_build "$ROOT" "$build"
vd_say "working in $tmp"

# ---- 2. Redis: our own, on a free loopback port ------------------------------------------------

vd_start_redis
rcli() { redis-cli -p "$VD_REDIS_PORT" "$@"; }

# ---- 3. Kafka: the embedded mock cluster, its stdin a fifo we hold open ---------------------

vd_start_kafka_mock "$build" vd.requests:4 vd.volunteers:4 vd.responses:4 \
  vd.assignments:2 vd.notifications:2 vd.deadletter:2
brokers=$VD_BROKERS
vd_say "Kafka mock cluster at $brokers (pid $VD_MOCK_PID)"

# ---- 4. the daemon -------------------------------------------------------------------------------

http_port=$(vd_free_port)
vd_write_config demo vdispatch-demo "127.0.0.1:$http_port" info
if [ -n "$event" ]; then
  VD_SET_ARGS=(--set matching.batch_window_ms=300 "${VD_SET_ARGS[@]}")
fi
if [ "$offers" = 1 ]; then
  VD_SET_ARGS=(--set "matching.offer_timeout_ms=$offer_ms" --set matching.max_offers=3 "${VD_SET_ARGS[@]}")
fi
vd_check_config "$build" demo "${VD_SET_ARGS[@]}"
daemon_logged_ready() { grep -q '"msg":"ready' "$tmp/daemon.log" 2>/dev/null; }
vd_start_daemon "$build" 0.1 "did not log 'ready'" daemon_logged_ready "${VD_SET_ARGS[@]}"
vd_say "vdispatchd ready (pid $VD_DAEMON_PID; log $tmp/daemon.log${VD_DEMO_SET:+; with $VD_DEMO_SET})"
vd_say "coordinators' desk (read-only in the demo): http://127.0.0.1:$http_port/desk"

# ---- 5. the scenario --------------------------------------------------------------------------

scenario_args=(--volunteers "$volunteers" --requests "$requests")
if [ -n "$event" ]; then
  scenario_args=(--event "$event")
  [ "$set_sizes" = 0 ] || scenario_args+=(--volunteers "$volunteers" --requests "$requests")
fi
python3 "$ROOT/scripts/scenario.py" "${scenario_args[@]}" \
  --seed "$seed" --start now --out "$tmp/scenario" || vd_die "scenario.py failed"
read -r volunteers requests vol_msgs req_msgs n_bad n_dup minutes pools < <(python3 - "$tmp/scenario/scenario.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
pools = " ".join(f"{k}={v}" for k, v in sorted(d["pools"].items()))
rs = d["request_stats"]
print(d["volunteers"], d["requests"], d["volunteer_messages"], d["request_messages"],
      rs.get("malformed", 0), rs.get("duplicates", 0), rs.get("minutes", 0), pools)
EOF
) || true
[ -n "${pools:-}" ] || vd_die "cannot read $tmp/scenario/scenario.json"
if [ -n "$event" ]; then
  vd_say "scenario: the $event (seed $seed): $volunteers volunteers in its pool, $requests incidents over $minutes minutes, played ${speed}x faster"
else
  vd_say "scenario (seed $seed): $volunteers volunteers ($vol_msgs messages), $requests requests ($req_msgs messages: $n_bad malformed, $n_dup duplicates)"
fi

# ---- 6. volunteers first: wait until the daemon has them all in its pools ----------------------

out=$("$build/vd-produce" -b "$brokers" -t vd.volunteers <"$tmp/scenario/volunteers.bin") ||
  vd_die "producing volunteers failed: $out"
vd_say "volunteers: $out to vd.volunteers"

pool_status() {
  local want got all_ok=0 line="" name
  for kv in $pools; do
    name=${kv%%=*}
    want=${kv#*=}
    got=$(rcli zcard "vd:pool/$name" 2>/dev/null || echo "?")
    line+="$name $got/$want  "
    [ "$got" = "$want" ] || all_ok=1
  done
  # Every volunteer has a record once their first event is in (so no availability is pending).
  local recs
  recs=$(rcli --scan --pattern 'vd:vol/*' 2>/dev/null | wc -l)
  line+="records $recs/$volunteers"
  [ "$recs" = "$volunteers" ] || all_ok=1
  echo "$line"
  return $all_ok
}
pools_ready() {
  vd_alive "$VD_DAEMON_PID" || return 0
  pool_status >/dev/null
}
vd_wait_until 60 0.25 pools_ready || true
vd_alive "$VD_DAEMON_PID" || { vd_show_tail "$tmp/daemon.log"; vd_die "vdispatchd exited while taking volunteers (see above)"; }
if ! status=$(pool_status); then
  vd_show_tail "$tmp/daemon.log"
  vd_die "the daemon did not index all volunteers within 60 s: $status"
fi
vd_say "volunteer pools ready: $status"

# ---- 7. requests: wait until each has its outcome on vd.assignments ----------------------------

if [ "$offers" = 1 ] || [ -n "$event" ]; then
  app_args=()
  [ -z "$event" ] || app_args=(--complete 2:6)
  python3 "$ROOT/scripts/volunteer_app.py" --brokers "$brokers" --produce "$build/vd-produce" \
    --seed "$seed" --stats "$tmp/app.json" "${app_args[@]}" 2>"$tmp/app.err" &
  VD_APP_PID=$!
  if [ "$offers" = 1 ]; then
    vd_say "offer mode: ${offer_ms} ms to answer; the volunteers' phones answer (pid $VD_APP_PID)"
  else
    vd_say "the volunteers' phones report each task done 2-6 s after it is sent (pid $VD_APP_PID)"
  fi
fi

dump() {  # dump TOPIC FILE: the whole topic as kcat -J lines; FILE appears complete or not at all
  kcat -C -b "$brokers" -t "$1" -o beginning -e -J -q >"$2.part" 2>"$2.err" && mv "$2.part" "$2"
}
if [ -n "$event" ]; then
  vd_say "incidents: playing them at their times (${speed}x)"
  t_req=$(date +%s.%N)
  out=$(python3 "$ROOT/scripts/pace.py" --brokers "$brokers" --produce "$build/vd-produce" \
    --topic vd.requests --frames "$tmp/scenario/requests.bin" --scenario "$tmp/scenario/scenario.json" \
    --speed "$speed") || vd_die "producing incidents failed: $out"
else
  out=$("$build/vd-produce" -b "$brokers" -t vd.requests <"$tmp/scenario/requests.bin") ||
    vd_die "producing requests failed: $out"
  t_req=$(date +%s.%N)
fi
vd_say "requests: $out to vd.requests"
dump vd.requests "$tmp/topics/requests.jsonl" || vd_die "kcat could not read vd.requests: $(cat "$tmp/topics/requests.jsonl.err")"

deadline=$(awk -v t="$t_req" -v d="$timeout" 'BEGIN { printf "%.3f", t + d }')
last=""
while :; do
  if ! vd_alive "$VD_DAEMON_PID"; then
    vd_show_tail "$tmp/daemon.log"
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
    vd_show_tail "$tmp/daemon.log"
    vd_die "timed out after ${timeout} s: ${done_n:-0} of ${total_n:-?} requests found on vd.requests have an outcome on vd.assignments, $requests expected (daemon log above; raise VD_DEMO_TIMEOUT if the machine is slow)"
  fi
  sleep 0.5
done
match_s=$(awk -v a="$t_req" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
vd_say "all $requests requests have an outcome (${match_s} s after producing them)"
if [ -n "${VD_APP_PID:-}" ]; then
  vd_stop "$VD_APP_PID" volunteer_app.py 5 || true
  VD_APP_PID=""
  app=$(python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); print("%(offers)d offers seen: %(accepted)d accepted, %(declined)d declined, %(silent)d left unanswered; %(completed)d tasks reported done" % d)' "$tmp/app.json" 2>/dev/null) ||
    app="no stats ($(cat "$tmp/app.err" 2>/dev/null))"
  vd_say "volunteers' phones: $app"
fi
# What matching cost, by the daemon's own counts (/metrics).
rounds=$(python3 - "$http_port" <<'EOF' 2>/dev/null
import sys, urllib.request
m = {}
body = urllib.request.urlopen("http://127.0.0.1:%s/metrics" % sys.argv[1], timeout=5).read().decode()
for line in body.splitlines():
    if line and not line.startswith("#"):
        k, v = line.rsplit(" ", 1)
        m[k] = float(v)
calls = {k: m['vd_redis_calls_by_kind_total{kind="%s"}' % k] for k in ("round", "widen", "claim")}
print("%d rounds of %.1f requests on average; %d round, %d widen and %d claim calls to Redis "
      "(%.2f per volunteer confirmed); %.0f ms solving in all"
      % (m["vd_rounds_total"], m["vd_round_requests_total"] / max(m["vd_rounds_total"], 1),
         calls["round"], calls["widen"], calls["claim"],
         sum(calls.values()) / max(m["vd_confirmed_total"], 1), m["vd_solve_seconds_total"] * 1000))
EOF
) || rounds="(the daemon's /metrics did not answer)"
vd_say "matching: $rounds"
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

# ---- 8. what a coordinator sees now (vdispatchctl), the summary, then a graceful stop -----------

echo
vd_say "vdispatchctl open: the requests that need a person, oldest first (first 5)"
"$build/vdispatchctl" -c "$tmp/vdispatch.conf" --limit 5 open || true
vd_say "vdispatchctl pools"
"$build/vdispatchctl" -c "$tmp/vdispatch.conf" pools || true

python3 "$ROOT/scripts/summary.py" --json "$tmp/topics/requests.jsonl" "$tmp/topics/assignments.jsonl" \
  --deadletter "$tmp/topics/deadletter.jsonl" --scenario "$tmp/scenario/scenario.json" >"$tmp/summary.json"
echo
python3 "$ROOT/scripts/summary.py" "$tmp/topics/requests.jsonl" "$tmp/topics/assignments.jsonl" \
  --deadletter "$tmp/topics/deadletter.jsonl" --scenario "$tmp/scenario/scenario.json"
echo

t_stop=$(date +%s.%N)
vd_stop "$VD_DAEMON_PID" vdispatchd 12
daemon_rc=$VD_STOP_RC
VD_DAEMON_PID=""
stop_s=$(awk -v a="$t_stop" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
if [ "$daemon_rc" != 0 ]; then
  vd_show_tail "$tmp/daemon.log"
  vd_say "vdispatchd exited with status $daemon_rc on SIGTERM (expected 0); log above"
  VD_KEEP=1
else
  vd_say "vdispatchd stopped cleanly in ${stop_s} s"
fi
vd_stop_stack
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
if r["volunteers_held_twice_at_once"]:
    bad.append(f"{r['volunteers_held_twice_at_once']} volunteers held by two requests at once")
print("; ".join(bad))
EOF
)
if [ -n "$problems" ]; then
  vd_say "FAILED checks: $problems (details in $tmp)"
  VD_KEEP=1
  exit 1
fi
vd_say "done in $(vd_elapsed) s"
[ "$daemon_rc" = 0 ]
