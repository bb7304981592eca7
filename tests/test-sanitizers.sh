#!/bin/bash
# core/ under clang's ASan+UBSan (contrib/run-tests-asan.sh runs the whole
# suite on a gcc ASan+UBSan build besides): the C unit tests (crc32c, the
# VHDX reader, the Hyper-V configuration readers) built with clang
# -fsanitize=address,undefined by tests/fuzz/build.sh,
# then every seed and kept regression input through the fuzz targets once
# (the whole chain path: open, parents, map, reads, a writable layer).
# UBSan errors are fatal; LeakSanitizer runs at exit.  See also
# test-soak.py (the plugin in nbdkit under ASan+UBSan and TSan).
set -uo pipefail
src=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
build=${FUZZ_BUILD:-${top_builddir:-$src}/tests/fuzz/build}
export SAMPLES=${SAMPLES:-$src/../shared/samples} top_srcdir=$src
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH
export ASAN_OPTIONS=detect_leaks=1
export UBSAN_OPTIONS=print_stacktrace=1
status=0
"$src/tests/fuzz/build.sh" "$build" || exit 1
for t in unit-crc32c unit-vhdx unit-hyperv; do
    if (cd "$src/tests" && "$build/$t") > "$build/$t.log" 2>&1 &&
       ! grep -qE "runtime error|AddressSanitizer|LeakSanitizer" \
           "$build/$t.log"; then
        echo "ok   $t under ASan+UBSan: $(tail -n1 "$build/$t.log")"
    else
        tail -n 40 "$build/$t.log"
        echo "FAIL $t under ASan+UBSan ($build/$t.log)"
        status=1
    fi
done
# The kept regressions (run.sh replays them; FUZZ_SECONDS=0: no fuzzing),
# then every seed once.
FUZZ_BUILD=$build FUZZ_SECONDS=0 "$src/tests/fuzz/run.sh" > "$build/replay.log" 2>&1 ||
    { cat "$build/replay.log"; status=1; }
grep "^ok " "$build/replay.log"
export VHDCHAIN_FUZZ_FIXTURES=$build/work/fixtures
for t in vhd vhdx locator xml vmcx; do
    inputs=($(ls -d "$build/work/seeds/$t"/* 2>/dev/null))
    # No input would make libFuzzer fuzz instead of replay.
    if [ ${#inputs[@]} -gt 0 ] &&
       "$build/fuzz-$t" -rss_limit_mb=2560 "${inputs[@]}" \
            > "$build/seeds-$t.log" 2>&1; then
        echo "ok   fuzz-$t: ${#inputs[@]} seed inputs under ASan+UBSan"
    else
        tail -n 40 "$build/seeds-$t.log"
        echo "FAIL fuzz-$t: an input fails ($build/seeds-$t.log)"
        status=1
    fi
done
exit $status
