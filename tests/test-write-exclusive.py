#!/usr/bin/python3
"""One kept layer, one writer: a second server must not write it too.

Server A serves a chain writable with overlay=PATH and has written and
flushed.  Server B is started on the same tip with the same overlay=PATH
while A still runs.  Two processes appending blocks to one VHD each keep
their own idea of the file's end and of the BAT, so they allocate the same
space and overwrite each other's BAT sectors: acknowledged, flushed writes
disappear.  So B must refuse (at start or at its writable connection) with
an error naming the file.  Whatever happens, after both exit the layer must
be a sound VHD holding every write that a completed flush acknowledged, on
either server; and once A is gone, the layer can be continued again.
"""

import os
import random

import harness
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-write-exclusive')

SIZE = 8 * MiB


def main():
    harness.require_plugin()
    import nbd
    rng = random.Random(8)
    with harness.tempdir() as tmp:
        c = g.Chain(os.path.join(tmp, 'chain'), seed=8)
        c.base('base.vhd', SIZE, writes=g.fill_writes(rng, SIZE))
        c.child('snap1.avhd', writes=g.random_writes(rng, SIZE, 30))
        points = c.write()
        tip = points[-1]
        keep = os.path.join(tmp, 'chain', 'keep.avhd')
        model = bytearray(tip.expected())
        acked = []                     # (offset, data) acknowledged by flush

        def write(h, off, data):
            h.pwrite(data, off)
            h.flush()
            model[off:off + len(data)] = data
            acked.append((off, data))

        with harness.Nbdkit(tip.path, 'overlay=' + keep,
                            readonly=False) as a:
            ha = a.connect()
            write(ha, 0, b'A' * 4096)
            outcome, stderr = None, ''
            try:
                with harness.Nbdkit(tip.path, 'overlay=' + keep,
                                    readonly=False) as b:
                    try:
                        hb = b.connect()
                    except nbd.Error as e:
                        outcome = 'connection refused: %s' % e
                    else:
                        outcome = 'accepted'
                        try:
                            write(hb, 2 * MiB, b'B' * 4096)
                            # A writes on: a new block of its own.
                            write(ha, 4 * MiB, b'C' * 4096)
                            write(hb, 6 * MiB, b'D' * 4096)
                        except nbd.Error as e:
                            outcome = 'accepted, then failed: %s' % e
                        hb.shutdown()
                stderr = b.stderr
            except harness.StartError as e:
                outcome, stderr = 'start refused', e.stderr
            write(ha, 1 * MiB, b'E' * 4096)
            ha.shutdown()
        refused = outcome == 'start refused' or \
            outcome.startswith('connection refused')
        r.check(refused, 'a second writable server on a layer in use is '
                'refused', 'outcome: %s' % outcome)
        r.check(not refused or any(keep in l for l in
                                   harness.error_lines(stderr)),
                'the refusal names the layer', stderr)

        bad = harness.vhd_structure_problems(keep, parent=tip.path)
        r.check(not bad, 'the layer is a sound VHD child', '\n'.join(bad))
        with harness.Nbdkit(keep) as srv:
            h = srv.connect()
            image = harness.read_all(h, SIZE)
            h.shutdown()
        lost = [(off, data[:1]) for off, data in acked
                if image[off:off + len(data)] != data]
        r.check(not lost, 'every write acknowledged by a flush is in the '
                'layer (%d writes)' % len(acked),
                'lost (offset, byte): %s' % lost)
        r.check(image == model, 'the layer equals the model',
                'first difference at %s'
                % harness.first_difference(image, model))

        # A has gone: the layer can be continued again.
        with harness.Nbdkit(tip.path, 'overlay=' + keep,
                            readonly=False) as b:
            hb = b.connect()
            write(hb, 3 * MiB, b'F' * 4096)
            hb.shutdown()
        with harness.Nbdkit(keep) as srv:
            h = srv.connect()
            r.check(h.pread(4096, 3 * MiB) == b'F' * 4096,
                    'continued after the first writer left')
            h.shutdown()


if __name__ == '__main__':
    r.main(main)
