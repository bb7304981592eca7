#!/bin/bash
# Install the test dependencies, build, run every test, and print one
# closing line "N passed, N failed, N skipped".  Exits non-zero on any
# failure or if no test ran.
set -uo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] && contrib/install-deps.sh
contrib/build.sh || { echo "0 passed, 1 failed"; exit 1; }
# The system python3 is the one python3-libnbd installs into.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
make -j"$(nproc)" check "$@"
status=$?
log=test-suite.log
count () { sed -n "s/^# $1: *\([0-9]*\)$/\1/p" "$log" | head -n1; }
pass=$(count PASS); fail=$(count FAIL); err=$(count ERROR)
skip=$(count SKIP); xpass=$(count XPASS)
failed=$(( ${fail:-0} + ${err:-0} + ${xpass:-0} ))
for f in $(sed -n 's/^\(FAIL\|ERROR\): \(.*\)$/\2/p' "$log" 2>/dev/null); do
    echo "==== $f.log (tail)"; tail -n 30 "$f.log"
done
echo "${pass:-0} passed, $failed failed, ${skip:-0} skipped"
[ "$status" = 0 ] && [ "$failed" = 0 ] && [ "${pass:-0}" -gt 0 ]
