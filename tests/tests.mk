# Included by Makefile.am.  Each test is one executable file; the harness
# counts it as passed (exit 0) or failed (anything else).  No test skips:
# a missing tool is a failure (see README).

# VHD chain tests (python, system python3 with python3-libnbd).  vhdgen.py
# is an independent VHD writer; test-vhdgen-qemu.py checks it against
# qemu-img and libvhdi before the other tests trust it.
TESTS += \
	tests/test-vhdgen-qemu.py \
	tests/test-chain-read.py \
	tests/test-samples.py \
	tests/test-malformed.py \
	tests/test-resolve.py
EXTRA_DIST += \
	tests/vhdgen.py \
	tests/harness.py \
	tests/test-vhdgen-qemu.py \
	tests/test-chain-read.py \
	tests/test-samples.py \
	tests/test-malformed.py \
	tests/test-resolve.py

# The pread fallback where io_uring is refused (seccomp helper).
check_PROGRAMS += tests/no-uring
tests_no_uring_SOURCES = tests/no-uring.c
TESTS += tests/test-no-uring.py
EXTRA_DIST += tests/test-no-uring.py

# A Hyper-V VM folder copied to Linux, as is.
TESTS += tests/test-vmfolder.py
EXTRA_DIST += tests/test-vmfolder.py

# Block status.
TESTS += tests/test-extents.py
EXTRA_DIST += tests/test-extents.py

# VHDX reader unit tests (C): CRC-32C and GUIDs; the VHDX parsers against
# the libvhdi fragments, the DiscUtils samples, qemu-img images and images
# the test builds itself (4096-byte sectors, differencing, dirty logs,
# malformed structures).
check_PROGRAMS += tests/unit-crc32c tests/unit-vhdx
tests_unit_crc32c_SOURCES = tests/unit-crc32c.c
tests_unit_crc32c_LDADD = libvhdcore.la
tests_unit_vhdx_SOURCES = tests/unit-vhdx.c
tests_unit_vhdx_LDADD = libvhdcore.la
TESTS += tests/unit-crc32c tests/unit-vhdx

# make bench: speed as ratios against references run side by side (never
# timed assertions; see tests/bench/bench.py).  The chains are built once
# into BENCH_DIR (default /var/tmp/vhdchain-bench) and reused.
bench: all
	$(AM_TESTS_ENVIRONMENT) /usr/bin/python3 $(srcdir)/tests/bench/bench.py
.PHONY: bench
EXTRA_DIST += \
	tests/bench/bench.py \
	tests/bench/chains.py

# The writable layer (issue 3): a model of random writes, zeroes, trims and
# flushes (temporary, kept, continued, foreign child; libvhdi; $TMPDIR;
# overlay= refusals), fio with crc32c verify over parallel jobs, kill -9 at
# random moments, a file system that fills up (root: mounts), and one
# writer per kept layer.
TESTS += \
	tests/test-write-model.py \
	tests/test-write-fio.py \
	tests/test-crash.py \
	tests/test-enospc.py \
	tests/test-write-exclusive.py
EXTRA_DIST += \
	tests/test-write-model.py \
	tests/test-write-fio.py \
	tests/test-crash.py \
	tests/test-enospc.py \
	tests/test-write-exclusive.py

# Hyper-V VM folders (issue 6): the .vmcx and XML configuration readers
# against the real .vmcx sample, damaged copies and hand-written XML
# (unit-hyperv); VM folders the tests build in the 2008 - 2012 R2 layout
# (XML) and the 2016+ layout (VHDX, VMCX, and no configuration at all),
# each with a branched checkpoint tree, every checkpoint's state served
# by the plugin and compared byte for byte (test-hyperv-*.py).
check_PROGRAMS += tests/unit-hyperv
tests_unit_hyperv_SOURCES = tests/unit-hyperv.c
tests_unit_hyperv_LDADD = libvhdcore.la
TESTS += tests/unit-hyperv
TESTS += \
	tests/test-hyperv-2008.py \
	tests/test-hyperv-2016.py
EXTRA_DIST += \
	tests/hypervgen.py \
	tests/test-hyperv-2008.py \
	tests/test-hyperv-2016.py

# The vhdchain command (contrib/vhdchain, issue 9): every command on
# generated chains against vhdgen, the plugin, libvhdi and qemu-img; bad
# arguments; the manual pages document every option and parameter.
TESTS += \
	tests/test-cli-args.py \
	tests/test-cli-info.py \
	tests/test-cli-check.py \
	tests/test-cli-map.py \
	tests/test-cli-create.py \
	tests/test-cli-merge.py \
	tests/test-cli-changed.py \
	tests/test-cli-convert.py \
	tests/test-cli-docs.py
EXTRA_DIST += \
	tests/vhdchain_cli.py \
	tests/test-cli-args.py \
	tests/test-cli-info.py \
	tests/test-cli-check.py \
	tests/test-cli-map.py \
	tests/test-cli-create.py \
	tests/test-cli-merge.py \
	tests/test-cli-changed.py \
	tests/test-cli-convert.py \
	tests/test-cli-docs.py

# VHDX chains (issue 5).  vhdxgen.py is an independent VHDX writer (and a
# small reader for checking what the plugin writes); the tests: samples
# made by Windows and qemu-img, vhdxgen chains at every point, writes to
# VHDX children (kept, continued, foreign, libvhdi, 4 GiB chunks), kill -9
# while writing one, and malformed files.
TESTS += \
	tests/test-vhdx-samples.py \
	tests/test-vhdx-chain.py \
	tests/test-vhdx-write.py \
	tests/test-vhdx-crash.py \
	tests/test-vhdx-malformed.py
EXTRA_DIST += \
	tests/vhdxgen.py \
	tests/test-vhdx-samples.py \
	tests/test-vhdx-chain.py \
	tests/test-vhdx-write.py \
	tests/test-vhdx-crash.py \
	tests/test-vhdx-malformed.py

# vm=FOLDER: one export per checkpoint.
TESTS += tests/test-vm-exports.py
EXTRA_DIST += tests/test-vm-exports.py

# Shared by the C unit tests.
EXTRA_DIST += tests/unit.h

# direct=true: O_DIRECT reads through bounce buffers.
TESTS += tests/test-direct.py
EXTRA_DIST += tests/test-direct.py
