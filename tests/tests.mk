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
