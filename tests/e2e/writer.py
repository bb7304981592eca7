#!/usr/bin/python3
"""The running VM of tests/test-e2e-backup.py: keeps writing into a
vhdchain export until SIGTERM.

    writer.py URI SIZE SEED PROGRESS LOG

Writes whole 64 KiB chunks at random 64 KiB-aligned offsets (so the last
write of a chunk is its content), flushes every 16 writes and then puts the
count of writes done in PROGRESS; on SIGTERM it flushes and writes LOG, a
JSON object {"writes": N, "chunks": {offset: write number}}.  The content
of write n is chunk_data(n).
"""
import hashlib
import json
import os
import random
import signal
import sys
import time

CHUNK = 65536


def chunk_data(n):
    return hashlib.sha256(b'vm write %d' % n).digest() * (CHUNK // 32)


def main(uri, size, seed, progress, log):
    import nbd
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    h = nbd.NBD()
    h.connect_uri(uri)
    rng = random.Random(int(seed))
    chunks = {}
    n = 0
    while not stop:
        off = rng.randrange(int(size) // CHUNK) * CHUNK
        n += 1
        h.pwrite(chunk_data(n), off)
        chunks[off] = n
        if n % 16 == 0:
            h.flush()
            with open(progress + '.tmp', 'w') as f:
                f.write(str(n))
            os.replace(progress + '.tmp', progress)
        time.sleep(0.003)
    h.flush()
    h.shutdown()
    with open(log, 'w') as f:
        json.dump({'writes': n, 'chunks': chunks}, f)


if __name__ == '__main__':
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(*sys.argv[1:])
