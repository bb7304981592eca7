#!/bin/bash
# Build the libFuzzer targets and the sanitizer builds of the unit tests
# with clang, apart from the gcc build (tests/fuzz/README.md).
#
#   tests/fuzz/build.sh [BUILD]      default BUILD: tests/fuzz/build
#
# BUILD/fuzz-{vhd,vhdx,locator,xml,vmcx}: core/*.c and the target, with
#     -fsanitize=fuzzer,address,undefined (UBSan errors are fatal);
# BUILD/unit-{crc32c,vhdx,hyperv}: the unit tests with ASan+UBSan;
# BUILD/plugin-asan.so: the plugin with ASan+UBSan (clang, shared
#     runtime: nbdkit runs it with the runtime preloaded) and a leak check
#     when nbdkit unloads it (sanitize-unload.c);
# BUILD/plugin-tsan.so: the plugin with TSan (gcc: its libtsan.so.2 can be
#     preloaded into nbdkit; clang 14's dynamic TSan runtime cannot).
# Objects are rebuilt when their source is newer (no make dependency on
# headers: a header change wants "rm -rf BUILD").  A missing clang or
# libFuzzer runtime is an error (contrib/install-deps.sh installs them).
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$src/tests/fuzz/build}
mkdir -p "$build"
# test-fuzz.sh, test-sanitizers.sh and test-soak.py may run at once.
exec 9> "$build/.lock"
flock 9
CC=${FUZZ_CC:-}
if [ -z "$CC" ]; then
    for c in clang-14 clang; do
        command -v "$c" >/dev/null && { CC=$c; break; }
    done
fi
[ -n "$CC" ] || { echo "build.sh: clang is missing (apt-get install" \
                       "clang-14 libclang-rt-14-dev)" >&2; exit 1; }
rt=$("$CC" -print-file-name=libclang_rt.fuzzer-x86_64.a)
[ -f "$rt" ] || { echo "build.sh: the libFuzzer runtime is missing" \
                       "($rt; apt-get install libclang-rt-14-dev)" >&2; exit 1; }

san="-fsanitize=address,undefined -fno-sanitize-recover=all"
base="-g -O1 -fno-omit-frame-pointer -std=gnu11 -D_GNU_SOURCE -pthread
      -Wall -Wno-unused-parameter -I$src/core"
libs="-luring -luuid -pthread"
mkdir -p "$build/obj-fuzz" "$build/obj-asan"

# compile SRC OBJ FLAGS...: only when SRC is newer than OBJ.
compile () {
    local s=$1 o=$2; shift 2
    if [ ! -f "$o" ] || [ "$s" -nt "$o" ] || [ "$0" -nt "$o" ]; then
        "$CC" $base "$@" -c "$s" -o "$o"
    fi
}

core=()
for c in "$src"/core/*.c; do
    n=$(basename "$c" .c)
    # crc32c.c is a checksum loop: coverage feedback there guides nothing
    # and its per-byte comparisons cost more than the VHDX parser.
    cov=-fsanitize=fuzzer-no-link
    [ "$n" = crc32c ] && cov=
    compile "$c" "$build/obj-fuzz/$n.o" $san $cov &
    compile "$c" "$build/obj-asan/$n.o" $san &
    core+=("$n.o")
    # Two at a time: other builds and tests share the machine.
    [ $(( ${#core[@]} % 2 )) = 0 ] && wait
done
wait

fz=$src/tests/fuzz
for n in fuzz-common fuzz-vm fuzz-vhd fuzz-vhdx fuzz-locator fuzz-xml \
         fuzz-vmcx; do
    # No coverage instrumentation in the harness: its loops over read
    # buffers would cost more than core/ itself and guide nothing.
    compile "$fz/$n.c" "$build/obj-fuzz/$n.o" $san \
            -DFUZZ_FIXTURES="\"$build/work/fixtures\""
done
objs=("${core[@]/#/$build/obj-fuzz/}")
link () {
    local out=$1; shift
    "$CC" -g $san -fsanitize=fuzzer -o "$build/$out.tmp" "$@" "${objs[@]}" \
          "$build/obj-fuzz/fuzz-common.o" -Wl,--wrap=open $libs
    mv "$build/$out.tmp" "$build/$out"
}
link fuzz-vhd "$build/obj-fuzz/fuzz-vhd.o"
link fuzz-vhdx "$build/obj-fuzz/fuzz-vhdx.o"
link fuzz-locator "$build/obj-fuzz/fuzz-locator.o" -Wl,--wrap=opendir
link fuzz-xml "$build/obj-fuzz/fuzz-xml.o" "$build/obj-fuzz/fuzz-vm.o"
link fuzz-vmcx "$build/obj-fuzz/fuzz-vmcx.o" "$build/obj-fuzz/fuzz-vm.o"

# The unit tests under ASan+UBSan (run by tests/test-sanitizers.sh).
aobjs=("${core[@]/#/$build/obj-asan/}")
for t in unit-crc32c unit-vhdx unit-hyperv; do
    compile "$src/tests/$t.c" "$build/obj-asan/$t.o" $san
    "$CC" -g $san -o "$build/$t" "$build/obj-asan/$t.o" "${aobjs[@]}" $libs
done
# The plugin, for nbdkit (tests/test-soak.py).
psrc=("$src"/plugin/*.c)
newest=$(ls -t "${psrc[@]}" "$src"/core/*.c "$src"/core/*.h "$src"/plugin/*.h \
         "$fz/sanitize-unload.c" "$0" | head -n1)
pflags="-shared -fPIC -g -O1 -fno-omit-frame-pointer -std=gnu11
        -D_GNU_SOURCE -DPACKAGE_VERSION=\"sanitized\" -pthread -I$src/core
        -fvisibility=hidden"
if [ ! -f "$build/plugin-asan.so" ] || [ "$newest" -nt "$build/plugin-asan.so" ]
then
    "$CC" $pflags $san -shared-libsan -o "$build/plugin-asan.so.tmp" \
          "${psrc[@]}" "$src"/core/*.c "$fz/sanitize-unload.c" $libs
    mv "$build/plugin-asan.so.tmp" "$build/plugin-asan.so"
fi
if [ ! -f "$build/plugin-tsan.so" ] || [ "$newest" -nt "$build/plugin-tsan.so" ]
then
    gcc $pflags -fsanitize=thread -o "$build/plugin-tsan.so.tmp" \
        "${psrc[@]}" "$src"/core/*.c $libs
    mv "$build/plugin-tsan.so.tmp" "$build/plugin-tsan.so"
fi
echo "build.sh: built in $build with $CC (and gcc for TSan)"
