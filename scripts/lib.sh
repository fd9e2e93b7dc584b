# Shell helpers for the scripts in this directory: timed progress lines, errors, waiting with
# a timeout, a free loopback port, and starting/stopping child processes by their PID.
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
