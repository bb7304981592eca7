#!/bin/bash
# Install the test dependencies, build, run every test, then every test
# again on the ASan+UBSan build (contrib/run-tests-asan.sh), and print one
# closing line "N passed, N failed, N skipped" over both.  Arguments go to
# make check (TESTS="..." runs those only, without the ASan pass).  Exits
# non-zero on any failure or if no test ran.
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
echo "make check: ${pass:-0} passed, $failed failed, ${skip:-0} skipped"
# The same suite on the ASan+UBSan build (issue 8), unless only some tests
# were asked for.
if [ $# = 0 ]; then
    contrib/run-tests-asan.sh 2>&1 | tee asan.log
    [ "${PIPESTATUS[0]}" = 0 ] || status=1
    read -r p2 f2 s2 < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed, \([0-9]*\) skipped$/\1 \2 \3/p' asan.log | tail -n1)
    [ -n "${p2:-}" ] || { p2=0 f2=1 s2=0; }
    echo "ASan+UBSan: $p2 passed, $f2 failed, $s2 skipped"
    pass=$((${pass:-0} + p2)) failed=$((failed + f2)) skip=$((${skip:-0} + s2))
fi
echo "${pass:-0} passed, $failed failed, ${skip:-0} skipped"
[ "$status" = 0 ] && [ "$failed" = 0 ] && [ "${pass:-0}" -gt 0 ]
