#!/usr/bin/env bash
# Measures matching quality and prints a table (scripts/bench_quality.py): for seeded
# scenarios (the city and events, volunteers scarce and plentiful), requests served, need
# served, total / mean / p95 distance and the most tasks per volunteer, for arrival-order
# greedy nearest, vdispatch (the real daemon on redis-server and the Kafka mock) and the
# offline optimum of the same instance (Debian's python3-scipy), then whether the targets
# hold. Figures only: the exit status says whether the run completed.
#
# Usage: scripts/bench-quality.sh [--quick] [--seed N]
# Env: VD_BUILD_DIR (default <source>/build).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${VD_BUILD_DIR:-$ROOT/build}

bash "$ROOT/scripts/install-deps.sh"
if ! dpkg-query -W -f='${Status}' python3-scipy 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  echo "bench-quality: installing python3-scipy (the offline optimum)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-scipy
fi
cmake -S "$ROOT" -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$(nproc 2>/dev/null || echo 2)" >/dev/null
# Debian's interpreter, which has Debian's scipy (another python3 may come first on PATH).
py=/usr/bin/python3
[ -x "$py" ] || py=python3
VD_BUILD=$build VD_SOURCE=$ROOT exec "$py" "$ROOT/scripts/bench_quality.py" "$@"
