#!/bin/bash
# The whole test suite once more, on a build with ASan and UBSan (issue 8:
# "CI runs the whole make check suite once under ASan+UBSan").
#
#   contrib/run-tests-asan.sh [make check arguments]
#
# The tracked sources are copied to ASAN_TREE/tree (default tests/asan),
# configured there with gcc -fsanitize=address,undefined
# -fno-sanitize-recover=all and built: the plugin, the vhdchain tool and the
# unit tests.  Every test then runs against that build, except the three
# that already are sanitizer runs of their own (test-fuzz.sh,
# test-sanitizers.sh, test-soak.py).  /usr/bin/nbdkit is not instrumented,
# so the tests reach it through tests/asan/bin/nbdkit, which preloads the
# ASan runtime (and tests/asan-preload.c, see there why); the tests put
# VHDCHAIN_TEST_BIN ahead of /usr/bin.  ASan's reports go to files under
# tests/asan/reports, never to the stderr the tests read; any report fails
# the run, as does any failed test (a UBSan error aborts the process).
# Prints "N passed, N failed, N skipped" (the report check counts as one).
set -uo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
top=${ASAN_TREE:-$src/tests/asan}
tree=$top/tree reports=$top/reports bin=$top/bin
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
fail () { echo "run-tests-asan: $*" >&2; echo "0 passed, 1 failed"; exit 1; }

rm -rf "$tree" "$reports"
mkdir -p "$tree" "$reports" "$bin"
# Tracked files only: the source tree itself is configured in place, and
# autoconf refuses a second build beside a configured source folder.
(cd "$src" && git ls-files -z | tar --null -T - -cf -) | tar -C "$tree" -xf - ||
    fail "cannot copy the sources (a git checkout is needed)"

san="-fsanitize=address,undefined -fno-sanitize-recover=all"
( cd "$tree" && autoreconf -fi > build.log 2>&1 &&
  ./configure CC=gcc CFLAGS="-g -O1 -fno-omit-frame-pointer $san" \
      LDFLAGS="$san" >> build.log 2>&1 &&
  make -j"$(nproc)" >> build.log 2>&1 ) ||
    { tail -n 30 "$tree/build.log"; fail "the ASan+UBSan build failed"; }

runtime=$(realpath "$(gcc -print-file-name=libasan.so)")
[ -f "$runtime" ] || fail "gcc's ASan runtime is missing ($runtime)"
gcc -Wall -Wextra -Werror -shared -fPIC -o "$bin/asan-preload.so" \
    "$src/tests/asan-preload.c" ||
    fail "cannot build tests/asan-preload.c"
cat > "$bin/nbdkit" <<EOF
#!/bin/sh
# /usr/bin/nbdkit with the ASan runtime preloaded (contrib/run-tests-asan.sh);
# leaks are checked when the plugin is unloaded (tests/asan-preload.c).
export ASAN_OPTIONS="\${ASAN_OPTIONS:+\$ASAN_OPTIONS:}leak_check_at_exit=0"
LD_PRELOAD="$runtime $bin/asan-preload.so\${LD_PRELOAD:+ \$LD_PRELOAD}" \\
    exec /usr/bin/nbdkit "\$@"
EOF
chmod +x "$bin/nbdkit"

# allocator_may_return_null: a failed allocation is NULL, as in the normal
# build, where the code is expected to cope (test-hostile.py bounds memory
# with max_allocation_size_mb and hard_rss_limit_mb instead of prlimit,
# which ASan's shadow cannot live with).
export VHDCHAIN_TEST_BIN=$bin VHDCHAIN_SANITIZED=asan PATH=$bin:$PATH
export ASAN_OPTIONS="log_path=$reports/asan:detect_leaks=1:allocator_may_return_null=1:detect_stack_use_after_return=1"
# UBSan writes to stderr whatever log_path says when it shares gcc's ASan
# runtime: abort, so that no test can take its exit for a refusal.
export UBSAN_OPTIONS="print_stacktrace=1:abort_on_error=1"
export SAMPLES=${SAMPLES:-$src/../shared/samples}

tests=$(make -s -C "$tree" -f Makefile -f - print-tests <<'EOF'
print-tests: ; @echo $(TESTS)
EOF
)
tests=$(printf '%s\n' $tests | grep -vE '^tests/(test-fuzz\.sh|test-sanitizers\.sh|test-soak\.py)$')
make -C "$tree" -j"$(nproc)" check TESTS="$(echo $tests)" "$@"

log=$tree/test-suite.log
count () { n=$(sed -n "s/^# $1: *\([0-9]*\)$/\1/p" "$log" 2>/dev/null | head -n1)
           echo "${n:-0}"; }
pass=$(count PASS); skip=$(count SKIP)
failed=$(( $(count FAIL) + $(count ERROR) + $(count XPASS) ))
[ -f "$log" ] || failed=$((failed + 1))     # make check did not get to run
for f in $(sed -n 's/^\(FAIL\|ERROR\): \(.*\)$/\2/p' "$log" 2>/dev/null); do
    echo "==== asan: $f.log (tail)"; tail -n 30 "$tree/$f.log"
done
# A leak report none of whose stacks passes through vhdchain's code is
# nbdkit's own (it leaves the structure of a connection still open when it
# shuts down): counted and shown, not failed.  Everything else fails.
ours=() theirs=0
for r in $(find "$reports" -type f -size +0 | sort); do
    if grep -q "ERROR: LeakSanitizer: detected memory leaks" "$r" &&
       ! grep -qE "( in [^ ]+ (core|plugin|contrib|tests)/|nbdkit-vhdchain-plugin)" "$r"
    then
        theirs=$((theirs + 1))
    else
        ours+=("$r")
    fi
done
[ "$theirs" = 0 ] || echo "note: $theirs leak report(s) of nbdkit's own memory" \
    "(no vhdchain frame) in $reports"
if [ ${#ours[@]} -gt 0 ]; then
    for r in "${ours[@]}"; do echo "==== sanitizer report $r"; head -n 40 "$r"; done
    echo "FAIL: sanitizer reports: ${#ours[@]}"
    failed=$((failed + 1))
else
    echo "PASS: no sanitizer report from any process of the suite"
    pass=$((${pass:-0} + 1))
fi
echo "${pass:-0} passed, $failed failed, ${skip:-0} skipped"
[ "$failed" = 0 ] && [ "${pass:-0}" -gt 1 ]
