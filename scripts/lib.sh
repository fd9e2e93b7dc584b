# Shell helpers for the scripts in this directory: timed progress lines, errors, waiting with
# a timeout, a free loopback port, starting/stopping child processes by their PID, option
# parsing, and the private stack that demo.sh and bench.sh run on (build, redis-server, the
# Kafka mock, vdispatchd, clean-up).
# Usage: source "$(dirname "$0")/lib.sh" from a bash script that has `set -euo pipefail`.
# Functions prefix their messages with $VD_LOG_TAG (default: the script's name).
# shellcheck shell=bash

VD_LOG_TAG=${VD_LOG_TAG:-$(basename "$0" .sh)}
VD_T0=$(date +%s.%N)

# Seconds since the script started, with one decimal.
vd_elapsed() {
  awk -v a="$VD_T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'
}

# Prints a progress line: "[  12.3s] demo: message".
vd_say() {
  printf '[%6ss] %s: %s\n' "$(vd_elapsed)" "$VD_LOG_TAG" "$*"
}

# Prints an error to stderr and exits 1.
vd_die() {
  printf '%s: error: %s\n' "$VD_LOG_TAG" "$*" >&2
  exit 1
}

# vd_wait_until TIMEOUT_S INTERVAL_S COMMAND...: runs COMMAND until it succeeds; returns 1
# when TIMEOUT_S seconds pass first.
vd_wait_until() {
  local timeout=$1 interval=$2
  shift 2
  local deadline
  deadline=$(awk -v t="$(date +%s.%N)" -v d="$timeout" 'BEGIN { printf "%.3f", t + d }')
  while :; do
    if "$@"; then return 0; fi
    if awk -v n="$(date +%s.%N)" -v d="$deadline" 'BEGIN { exit !(n >= d) }'; then return 1; fi
    sleep "$interval"
  done
}

# Prints a TCP port on 127.0.0.1 that was free a moment ago (the caller must still handle
# losing a race for it).
vd_free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# Returns 0 when the process PID is alive (and not a zombie).
vd_alive() {
  local pid=$1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  local state
  state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null || echo "?")
  [ "$state" != "Z" ]
}

# vd_stop PID NAME [GRACE_S]: sends SIGTERM, waits up to GRACE_S (default 10) seconds, then
# SIGKILL. Sets VD_STOP_RC to the exit status when PID is a child of this shell.
vd_stop() {
  local pid=$1 name=$2 grace=${3:-10}
  VD_STOP_RC=""
  [ -n "$pid" ] || return 0
  if vd_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    if ! vd_wait_until "$grace" 0.1 eval "! vd_alive $pid"; then
      printf '%s: %s (pid %s) did not stop within %ss; killing it\n' "$VD_LOG_TAG" "$name" "$pid" "$grace" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  local rc=0
  wait "$pid" 2>/dev/null || rc=$?
  # shellcheck disable=SC2034  # read by the caller
  VD_STOP_RC=$rc
}

# Prints the script's usage: its header comment, from line 2 up to `set -euo pipefail`.
vd_usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

# vd_need_arg OPTION [VALUE]: dies unless the option was given a non-empty value.
vd_need_arg() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then vd_die "$1 needs a value (see --help)"; fi
}

# vd_need_tools TOOL...: dies naming the first one that is not installed.
vd_need_tools() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null || vd_die "'$tool' is not installed (run scripts/install-deps.sh)"
  done
}

# vd_set_args VAR: turns the space-separated section.key=value settings in the environment
# variable VAR into daemon arguments (--set section.key=value ...) in the array VD_SET_ARGS;
# exits 2 on an entry of another form.
VD_SET_ARGS=()
vd_set_args() {
  local var=$1 kv
  VD_SET_ARGS=()
  for kv in ${!var:-}; do
    [[ $kv =~ ^[a-z_]+\.[A-Za-z0-9_.-]+=.*$ ]] ||
      { echo "$VD_LOG_TAG: error: $var entry '$kv' is not section.key=value" >&2; exit 2; }
    VD_SET_ARGS+=(--set "$kv")
  done
}

# Prints the last N (default 20) lines of a log file to stderr, for error messages.
vd_show_tail() {
  local file=$1 n=${2:-20}
  [ -s "$file" ] || return 0
  echo "---- last lines of $file ----" >&2
  tail -n "$n" "$file" >&2
  echo "----" >&2
}

# ---- a private stack on loopback: redis-server, the Kafka mock and vdispatchd ------------------
# The functions below keep its state in globals: VD_TMP (the temp dir, where every log and
# config goes), VD_REDIS_PID and VD_REDIS_PORT, VD_MOCK_PID and VD_BROKERS (the mock's
# bootstrap list; its stdin is a fifo that this shell holds open as fd 7), VD_DAEMON_PID.
# Call them in this order: vd_stack_cleanup_on_exit, vd_make_tmp, vd_build, vd_start_redis,
# vd_start_kafka_mock, vd_write_config, vd_check_config, vd_start_daemon.

VD_TMP=""
VD_REDIS_PID=""
VD_REDIS_PORT=""
VD_MOCK_PID=""
VD_BROKERS=""
VD_DAEMON_PID=""
VD_APP_PID=""   # scripts/volunteer_app.py, when the demo runs with offers
VD_KEEP=0

# vd_stack_cleanup_on_exit WHAT: on exit, stops what was started and removes VD_TMP; it is kept
# (naming WHAT, the files worth reading in it) when VD_KEEP=1 (the script may set it any time)
# and after a failure, but not after Ctrl-C or SIGTERM.
vd_stack_cleanup_on_exit() {
  VD_KEPT_WHAT=$1
  trap _vd_stack_cleanup EXIT
  trap 'echo; echo "$VD_LOG_TAG: interrupted" >&2; exit 130' INT
  trap 'echo "$VD_LOG_TAG: terminated" >&2; exit 143' TERM
}

_vd_stack_cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  vd_stop_stack
  if [ -n "$VD_TMP" ] && [ -d "$VD_TMP" ]; then
    if [ "$VD_KEEP" = 1 ] || { [ $rc -ne 0 ] && [ $rc -ne 130 ] && [ $rc -ne 143 ]; }; then
      echo "$VD_LOG_TAG: kept $VD_TMP ($VD_KEPT_WHAT)"
    else
      rm -rf "$VD_TMP"
    fi
  fi
  exit $rc
}

# Stops whatever of the stack still runs: the daemon first, while Kafka and Redis are still up.
vd_stop_stack() {
  vd_stop "$VD_APP_PID" volunteer_app.py 5 || true
  VD_APP_PID=""
  vd_stop "$VD_DAEMON_PID" vdispatchd 12 || true
  VD_DAEMON_PID=""
  exec 7>&-                                     # the Kafka mock's stdin: EOF makes it exit
  vd_stop "$VD_MOCK_PID" vd-kafka-mock 5 || true
  VD_MOCK_PID=""
  vd_stop "$VD_REDIS_PID" redis-server 5 || true
  VD_REDIS_PID=""
}

# vd_make_tmp NAME: creates VD_TMP, ${TMPDIR:-/tmp}/vdispatch-NAME.XXXXXX, with a topics/ dir.
vd_make_tmp() {
  VD_TMP=$(mktemp -d "${TMPDIR:-/tmp}/vdispatch-$1.XXXXXX") || vd_die "cannot create a temp dir"
  VD_TMP=$(cd "$VD_TMP" && pwd -P)   # as Redis reports it
  mkdir -p "$VD_TMP/topics"
}

# vd_build SOURCE BUILD [release]: builds SOURCE in BUILD (Release; the output goes to
# VD_TMP/build.log) and checks the binaries are there. With "release", also dies unless the
# build dir's cache says Release.
vd_build() {
  local src=$1 build=$2 check=${3:-} log="$VD_TMP/build.log" b
  vd_say "building (Release) in $build"
  if ! cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$log" 2>&1 ||
     ! cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" >>"$log" 2>&1; then
    tail -n 40 "$log" >&2
    vd_die "the build failed (output above; all of it in $log)"
  fi
  if [ "$check" = release ]; then
    grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$build/CMakeCache.txt" ||
      vd_die "$build is not a Release build (CMAKE_BUILD_TYPE in $build/CMakeCache.txt)"
  fi
  for b in vdispatchd vd-kafka-mock vd-produce; do
    [ -x "$build/$b" ] || vd_die "the build did not produce $build/$b"
  done
}

# True when our redis-server answers on port $1 and reports VD_TMP as its dir (so it is not
# another Redis on that port); also true when it has exited (no point waiting).
_vd_redis_up() {
  vd_alive "$VD_REDIS_PID" || return 0
  _vd_redis_ours "$1"
}

_vd_redis_ours() {
  timeout 2 redis-cli -p "$1" config get dir 2>/dev/null | grep -qxF "$VD_TMP"
}

# Starts a redis-server without persistence in VD_TMP on a free loopback port (trying another
# port when it loses the race for one); sets VD_REDIS_PID and VD_REDIS_PORT.
vd_start_redis() {
  local attempt port
  VD_REDIS_PORT=""
  for attempt in 1 2 3 4 5 6 7 8; do
    port=$(vd_free_port)
    redis-server --bind 127.0.0.1 --port "$port" --dir "$VD_TMP" --save '' --appendonly no \
      --daemonize no --logfile "$VD_TMP/redis.log" 7>&- &
    VD_REDIS_PID=$!
    if vd_wait_until 5 0.1 _vd_redis_up "$port" && vd_alive "$VD_REDIS_PID" &&
       _vd_redis_ours "$port"; then
      VD_REDIS_PORT=$port
      break
    fi
    vd_stop "$VD_REDIS_PID" redis-server 3 || true
    VD_REDIS_PID=""
    vd_say "redis-server could not use port $port (attempt $attempt); trying another"
  done
  [ -n "$VD_REDIS_PORT" ] ||
    { vd_show_tail "$VD_TMP/redis.log"; vd_die "redis-server did not start (see $VD_TMP/redis.log)"; }
  vd_say "redis-server $(redis-server --version | awk '{print $3}' | cut -d= -f2) on 127.0.0.1:$VD_REDIS_PORT (pid $VD_REDIS_PID)"
}

# vd_start_kafka_mock BUILD TOPIC:PARTITIONS...: starts BUILD/vd-kafka-mock with these topics,
# its stdin a fifo held open as fd 7, and waits until it is ready; sets VD_MOCK_PID and
# VD_BROKERS.
vd_start_kafka_mock() {
  local build=$1 topic args=()
  shift
  for topic in "$@"; do args+=(--topic "$topic"); done
  mkfifo "$VD_TMP/kafka-mock.in"
  "$build/vd-kafka-mock" "${args[@]}" \
    <"$VD_TMP/kafka-mock.in" >"$VD_TMP/kafka-mock.out" 2>"$VD_TMP/kafka-mock.err" &
  VD_MOCK_PID=$!
  exec 7>"$VD_TMP/kafka-mock.in"
  if ! vd_wait_until 20 0.1 grep -qx ready "$VD_TMP/kafka-mock.out"; then
    vd_show_tail "$VD_TMP/kafka-mock.err"
    vd_alive "$VD_MOCK_PID" || vd_die "vd-kafka-mock exited before it was ready (see above)"
    vd_die "vd-kafka-mock was not ready within 20 s"
  fi
  VD_BROKERS=$(sed -n 's/^bootstrap=//p' "$VD_TMP/kafka-mock.out" | head -n 1)
  [ -n "$VD_BROKERS" ] ||
    vd_die "vd-kafka-mock printed no bootstrap= line (see $VD_TMP/kafka-mock.out)"
}

# vd_write_config WHAT GROUP_ID HTTP_LISTEN LOG_LEVEL: writes VD_TMP/vdispatch.conf for the
# stack: direct assignment, JSON log to VD_TMP/daemon.log.
vd_write_config() {
  cat >"$VD_TMP/vdispatch.conf" <<CONF
; vdispatch $1 configuration (generated by scripts/$(basename "$0"))
[kafka]
brokers = $VD_BROKERS
group_id = $2
[redis]
host = 127.0.0.1
port = $VD_REDIS_PORT
[matching]
offer_timeout_ms = 0
[http]
listen =${3:+ $3}
[log]
level = $4
format = json
file = $VD_TMP/daemon.log
CONF
}

# vd_check_config BUILD WHAT [ARG...]: runs vdispatchd --check-config on VD_TMP/vdispatch.conf
# (with ARGs, e.g. --set ...); dies with its output if it is rejected.
vd_check_config() {
  local build=$1 what=$2
  shift 2
  "$build/vdispatchd" -c "$VD_TMP/vdispatch.conf" "$@" --check-config >"$VD_TMP/check-config.out" 2>&1 ||
    { cat "$VD_TMP/check-config.out" >&2; vd_die "vdispatchd rejected the $what config $VD_TMP/vdispatch.conf"; }
}

# True when READY (a command) succeeds or the daemon has exited (no point waiting then).
_vd_daemon_ready_or_gone() {
  vd_alive "$VD_DAEMON_PID" || return 0
  "$@" 2>/dev/null
}

# vd_start_daemon BUILD INTERVAL_S NOT_READY READY [ARG...]: starts vdispatchd on
# VD_TMP/vdispatch.conf (with ARGs), sets VD_DAEMON_PID and polls the command READY every
# INTERVAL_S seconds for up to 30 s. When READY still fails, shows the log tails and dies,
# saying "vdispatchd NOT_READY within 30 s" unless the daemon exited.
vd_start_daemon() {
  local build=$1 interval=$2 not_ready=$3 ready=$4
  shift 4
  # VD_DAEMON_WRAP runs the daemon under a tool, e.g. "valgrind --tool=callgrind".
  # shellcheck disable=SC2086  # the wrapper is words
  ${VD_DAEMON_WRAP:-} "$build/vdispatchd" -c "$VD_TMP/vdispatch.conf" "$@" >"$VD_TMP/daemon.out" 2>&1 7>&- &
  VD_DAEMON_PID=$!
  vd_wait_until 30 "$interval" _vd_daemon_ready_or_gone "$ready" || true
  if ! "$ready"; then
    vd_show_tail "$VD_TMP/daemon.log"
    vd_show_tail "$VD_TMP/daemon.out"
    vd_alive "$VD_DAEMON_PID" || vd_die "vdispatchd exited during start-up (see above)"
    vd_die "vdispatchd $not_ready within 30 s (see above)"
  fi
}
