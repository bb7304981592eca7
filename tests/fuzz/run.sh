#!/bin/bash
# Build the fuzz targets, replay the kept regressions, then fuzz each
# target for FUZZ_SECONDS (tests/fuzz/README.md).
#
#   tests/fuzz/run.sh [TARGET...]       targets: vhd vhdx locator xml vmcx
#
# Environment:
#   FUZZ_SECONDS  seconds per target (default 60; 0: replay only)
#   FUZZ_BUILD    build and work folder (default tests/fuzz/build)
#   FUZZ_JOBS     targets fuzzed at once (default 1)
#   FUZZ_ARGS     more libFuzzer options
#
# The corpora grow in FUZZ_BUILD/work/corpus/<target> from run to run;
# seeds (FUZZ_BUILD/work/seeds, made by mkcorpus.py), the committed
# tests/fuzz/corpus/<target> and tests/fuzz/regressions/<target> are read
# too.  Each run appends "target seconds execs exec/s crashes" lines to
# FUZZ_BUILD/work/stats.tsv and prints the totals.  A crash, leak,
# timeout or out-of-memory leaves its input in FUZZ_BUILD/work/artifacts
# and fails the run: keep it in tests/fuzz/regressions/<target>/ once
# fixed.  Exit status 0 only if nothing was found.
set -uo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
fz=$src/tests/fuzz
build=${FUZZ_BUILD:-$fz/build}
seconds=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-1}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(vhd vhdx locator xml vmcx)
work=$build/work
export VHDCHAIN_FUZZ_FIXTURES=$work/fixtures
# The system python3 has what the generators need; PATH as README says.
export PATH=/usr/bin:/bin:/usr/sbin:/sbin:$PATH

"$fz/build.sh" "$build" || { echo "run.sh: build failed"; exit 1; }
mkdir -p "$work/artifacts"
# Fixtures and seeds: made once per change of a generator.
stamp=$work/.made
if [ ! -f "$stamp" ] || [ -n "$(find "$fz/mkcorpus.py" "$src/tests/vhdgen.py" \
        "$src/tests/vhdxgen.py" "$src/tests/hypervgen.py" -newer "$stamp")" ]
then
    cli=$src/contrib/vhdchain
    [ -x "$cli" ] || cli=
    /usr/bin/python3 "$fz/mkcorpus.py" "$work" $cli || exit 1
    touch "$stamp"
fi

status=0
fail () { echo "FAIL $*"; status=1; }

# 1. Regressions: every kept input once, through the current build.
for t in "${targets[@]}"; do
    reg=("$fz/regressions/$t"/*)
    [ -e "${reg[0]}" ] || continue
    if "$build/fuzz-$t" -rss_limit_mb=2560 "${reg[@]}" \
            > "$work/replay-$t.log" 2>&1; then
        echo "ok   $t: ${#reg[@]} regression input(s) replayed"
    else
        tail -n 40 "$work/replay-$t.log"
        fail "$t: a regression input fails again ($work/replay-$t.log)"
    fi
done
[ "$seconds" -gt 0 ] || exit $status

# 2. Fuzzing.
fuzz_one () {
    local t=$1 dirs=() log=$work/fuzz-$1.log extra=()
    mkdir -p "$work/corpus/$t"
    for d in "$work/corpus/$t" "$work/seeds/$t" "$fz/corpus/$t" \
             "$fz/regressions/$t"; do
        [ -d "$d" ] && dirs+=("$d")
    done
    [ "$t" = locator ] && extra=(-max_len=4096)
    [ -f "$fz/$t.dict" ] && extra+=(-dict="$fz/$t.dict")
    "$build/fuzz-$t" -max_total_time="$seconds" -timeout=30 \
        -rss_limit_mb=2560 -malloc_limit_mb=2560 -print_final_stats=1 \
        -artifact_prefix="$work/artifacts/$t-" "${extra[@]}" \
        ${FUZZ_ARGS:-} "${dirs[@]}" > "$log" 2>&1
    echo $? > "$log.rc"
}
running=0
for t in "${targets[@]}"; do
    fuzz_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

stat () { sed -n "s/^stat::$1: *//p" "$2" | tail -n1; }
printf '%-8s %8s %12s %8s %s\n' target seconds executions exec/s result
for t in "${targets[@]}"; do
    log=$work/fuzz-$t.log
    n=$(stat number_of_executed_units "$log"); r=$(stat average_exec_per_sec "$log")
    rc=$(cat "$log.rc" 2>/dev/null || echo "?")
    what=clean
    if [ "$rc" != 0 ] || grep -qE "^SUMMARY: |ERROR: libFuzzer|runtime error" "$log"
    then
        what="FOUND: $(grep -m1 -oE "(SUMMARY: [A-Za-z]+: [a-z-]+|ERROR: libFuzzer: [a-z-]+|runtime error: .*|property failed: .*)" "$log")"
        fail "$t: $what; input: $(sed -n "s/.*Test unit written to //p" "$log" | tail -n1) (log $log)"
        grep -m1 -B2 -A25 -E "ERROR:|runtime error|property failed" "$log"
    fi
    printf '%-8s %8s %12s %8s %s\n' "$t" "$seconds" "${n:-0}" "${r:-0}" "$what"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(date -u +%FT%TZ)" "$t" "$seconds" \
        "${n:-0}" "${r:-0}" "$what" >> "$work/stats.tsv"
done
awk -F'\t' '{ n[$2] += $4; s[$2] += $3; all += $4 }
    END { for (t in n) printf "total    %-8s %12d executions in %d s\n", t, n[t], s[t];
          printf "total    all      %12d executions (work/stats.tsv)\n", all }' \
    "$work/stats.tsv" | sort
exit $status
