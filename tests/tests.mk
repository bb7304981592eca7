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

# vhdchain merge and convert on VHDX chains (issue 9): merges into
# differencing and dynamic VHDX parents (vhdxgen chains, 512 and 4096-byte
# sectors, Windows-made samples, children made by vhdchain), the parent's
# new identity and the child's parent_linkage2, refusals, a crash at every
# step; convert to dynamic VHDX read by qemu-img, libvhdi and the plugin.
TESTS += tests/test-cli-vhdx.py
EXTRA_DIST += tests/test-cli-vhdx.py

# End to end with the real programs (issue 7): boot a VM from a checkpoint
# through SeaBIOS over nbd+unix:// (a Debian kernel + busybox disk built by
# tests/e2e/build-bootdisk.sh, cached in /var/tmp/vhdchain-vmimage), attach
# one as a block device (nbdfuse + loop + partx, contrib/vhdchain-attach,
# nbd-client -l), back one up while a writer keeps writing (nbdcopy,
# qemu-img convert, fio --verify_only over 4 connections), and serve one
# through the systemd socket-activated units.  The commands of
# docs/recipes.md run as they stand.  Root (loop devices, mounts).
TESTS += \
	tests/test-e2e-boot.py \
	tests/test-e2e-attach.py \
	tests/test-e2e-backup.py \
	tests/test-e2e-socket.py
EXTRA_DIST += \
	tests/test-e2e-boot.py \
	tests/test-e2e-attach.py \
	tests/test-e2e-backup.py \
	tests/test-e2e-socket.py \
	tests/e2e/build-bootdisk.sh \
	tests/e2e/e2elib.py \
	tests/e2e/writer.py \
	docs/recipes.md \
	contrib/vhdchain-attach \
	contrib/vhdchain@.socket \
	contrib/vhdchain@.service

# Hostile images, crashes and load (issue 8; tests/fuzz/README.md and
# docs/security.md).  test-hostile: every malformed image (its own cases
# and those of test-malformed and test-vhdx-malformed) refused with one
# line under strace and an address-space limit, nothing outside the
# allowed folders opened.  test-crash-multi: kill -9 at 100 moments of a
# 3-connection write/zero/trim/flush workload, vhdchain check after each.
# test-io-errors: a failing disk under the layer (nbdkit error filter,
# nbdfuse, loop, ext4: this kernel has no device-mapper), chain files
# shrinking, vanishing or on a dying FUSE mount.  test-soak: 8-connection
# fio verify with the plugin under ASan+UBSan, then TSan.  test-fuzz: the
# libFuzzer targets, FUZZ_SECONDS each (default 60).  test-sanitizers:
# the unit tests and every fuzz seed under ASan+UBSan.  The sanitizer
# builds use clang (and gcc's TSan) apart from the main build:
# tests/fuzz/build.sh, into tests/fuzz/build.
TESTS += \
	tests/test-hostile.py \
	tests/test-crash-multi.py \
	tests/test-io-errors.py \
	tests/test-soak.py \
	tests/test-fuzz.sh \
	tests/test-sanitizers.sh
EXTRA_DIST += \
	tests/test-hostile.py \
	tests/test-crash-multi.py \
	tests/test-io-errors.py \
	tests/test-soak.py \
	tests/test-fuzz.sh \
	tests/test-sanitizers.sh \
	tests/fuzz/README.md \
	tests/fuzz/build.sh \
	tests/fuzz/run.sh \
	tests/fuzz/mkcorpus.py \
	tests/fuzz/fuzz.h \
	tests/fuzz/fuzz-common.c \
	tests/fuzz/fuzz-vm.c \
	tests/fuzz/fuzz-vhd.c \
	tests/fuzz/fuzz-vhdx.c \
	tests/fuzz/fuzz-locator.c \
	tests/fuzz/fuzz-xml.c \
	tests/fuzz/fuzz-vmcx.c \
	tests/fuzz/sanitize-unload.c \
	tests/fuzz/vhd.dict \
	tests/fuzz/vhdx.dict \
	tests/fuzz/locator.dict \
	tests/fuzz/xml.dict \
	tests/fuzz/vmcx.dict \
	tests/fuzz/regressions

# make fuzz: each target for FUZZ_SECONDS (default 60; FUZZ_JOBS at
# once), the corpora growing in tests/fuzz/build/work from run to run.
# make soak: the sanitizer soak for SOAK_SECONDS (default 600) each.
FUZZ_SECONDS ?= 60
SOAK_SECONDS ?= 600
fuzz:
	$(AM_TESTS_ENVIRONMENT) FUZZ_SECONDS=$(FUZZ_SECONDS) \
	  FUZZ_BUILD='$(abs_top_builddir)/tests/fuzz/build' \
	  $(abs_top_srcdir)/tests/fuzz/run.sh
soak: all
	$(AM_TESTS_ENVIRONMENT) SOAK_SECONDS=$(SOAK_SECONDS) \
	  FUZZ_BUILD='$(abs_top_builddir)/tests/fuzz/build' \
	  /usr/bin/python3 $(abs_top_srcdir)/tests/test-soak.py
clean-fuzz:
	rm -rf tests/fuzz/build
.PHONY: fuzz soak clean-fuzz

# make check-asan: the whole suite again on an ASan+UBSan build of the
# plugin, the tool and the unit tests, in tests/asan (CI runs it after
# make check; see contrib/run-tests-asan.sh).
check-asan:
	$(abs_top_srcdir)/contrib/run-tests-asan.sh
.PHONY: check-asan
EXTRA_DIST += contrib/run-tests-asan.sh tests/asan-preload.c
