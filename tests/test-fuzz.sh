#!/bin/bash
# The libFuzzer targets (issue 8, "Fuzzing"; tests/fuzz/README.md): build
# them with clang (tests/fuzz/build.sh), replay every kept regression
# input, then fuzz each target for FUZZ_SECONDS (default 60).  Fails on
# any crash, sanitizer report, leak, timeout or property failure, or if a
# tool is missing; prints executions per second and totals per target.
set -uo pipefail
src=${top_srcdir:-$(cd "$(dirname "$0")/.." && pwd)}
export FUZZ_BUILD=${FUZZ_BUILD:-${top_builddir:-$src}/tests/fuzz/build}
export FUZZ_SECONDS=${FUZZ_SECONDS:-60}
exec "$src/tests/fuzz/run.sh"
