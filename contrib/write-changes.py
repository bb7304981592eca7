#!/usr/bin/python3
"""Write to an NBD export only the 4 KiB pieces where NEW differs from OLD.

Used to turn a sequence of raw disk states into checkpoint layers: each
layer then holds just what changed, as a Hyper-V checkpoint would.
Usage: write-changes.py OLD.raw NEW.raw NBD-URI
"""
import sys
import nbd

CHUNK = 4096


def main(old_path, new_path, uri):
    h = nbd.NBD()
    h.connect_uri(uri)
    written = 0
    with open(old_path, "rb") as old, open(new_path, "rb") as new:
        offset = 0
        while True:
            a, b = old.read(CHUNK), new.read(CHUNK)
            if not b:
                break
            if a != b:
                h.pwrite(b, offset)
                written += len(b)
            offset += len(b)
    h.flush()
    h.shutdown()
    print(f"{written} bytes changed")


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
