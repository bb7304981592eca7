# Included by Makefile.am.  Each test is one executable file; the harness
# counts it as passed (exit 0) or failed (anything else).  No test skips:
# a missing tool is a failure (see README).
