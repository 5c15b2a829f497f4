#!/usr/bin/env bash
# Proves exfm works installed from a wheel, outside the checkout: builds the wheel, installs it
# (no deps) into a fresh venv whose only other packages are this project's dependencies (the
# checkout's .venv site-packages on a .pth line: its editable exfm hook is NOT activated), then
# runs exfm from an empty folder outside the checkout: --version, grids, run --grid <name>, report.
#   usage: tests/examples/wheel_install_check.sh [GRID] [SIZE]     (default smoke_table2 tiny)
set -euo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="$REPO/.venv/bin/python"
GRID="${1:-smoke_table2}"
SIZE="${2:-tiny}"
TMP="$(mktemp -d /tmp/exfm-wheel.XXXXXX)"
V="$TMP/venv"
"$PY" -m pip wheel --no-deps --no-build-isolation -q -w "$TMP/whl" "$REPO"
"$("$PY" -c 'import sys; print(sys._base_executable)')" -m venv --without-pip "$V"
SITE="$("$V/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
"$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' > "$SITE/_exfm_deps.pth"
"$PY" -m pip --python "$V/bin/python" install -q --no-deps --no-index "$TMP"/whl/exfm-*.whl
mkdir "$TMP/run" && cd "$TMP/run"
where="$("$V/bin/python" -c 'import exfm_plugin; print(exfm_plugin.__file__)')"
case "$where" in "$V"/*) echo "exfm_plugin imported from the wheel: $where";;
  *) echo "FAIL: exfm_plugin imported from $where, not from the wheel's venv" >&2; exit 1;; esac
"$V/bin/exfm" --version
"$V/bin/exfm" grids > grids.txt && head -3 grids.txt
"$V/bin/exfm" run --grid "$GRID" --size "$SIZE" --seeds 1 --work work --results results --no-progress
"$V/bin/exfm" report --records results --out results
grep -q "Table 2" results/leaderboard.md && echo "leaderboard: $TMP/run/results/leaderboard.md"
test -s "results/logs/$GRID.log" && grep -c "\[Metrics\]" "results/logs/$GRID.log"
echo "OK: wheel install outside the checkout ($TMP)"
