#!/usr/bin/python3
"""Parent resolution: search=, parent=, drive=, locators and header name.

Each scenario moves a chain's parent where the child's own hints do not
reach, then checks that nbdkit refuses without help ("parent not found",
naming the child) and reads the chain right with the parameter that should
find it (FORMATS.md 2.6: explicit list, W2ru, W2ku via the drive map, MacX,
header name, basenames in the child's folder, then search folders; a
candidate with the wrong id is reported and the next one tried).
"""

import os
import random

import harness
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-resolve')
SIZE, BS = 3 * MiB, 1 * MiB
WIN_DIR = 'C:\\Hyper-V\\Virtual Hard Disks'


def chain(folder, parent_name='base.vhd', seed=1, **child):
    """base <- child.avhd in folder; returns (base point, child point)."""
    rng = random.Random(seed)
    c = g.Chain(folder, seed=seed, win_dir=WIN_DIR)
    c.base(parent_name, SIZE, block_size=BS,
           writes=g.random_writes(rng, SIZE, 15, block_size=BS))
    c.child('child.avhd', writes=g.random_writes(rng, SIZE, 15, block_size=BS),
            **child)
    return c.write()


def move(path, folder, name=None):
    os.makedirs(folder, exist_ok=True)
    dst = os.path.join(folder, name or os.path.basename(path))
    os.rename(path, dst)
    return dst


def impostor(path, seed=99):
    """A valid VHD of the same size whose id is not the one wanted."""
    rng = random.Random(seed)
    v = g.VhdFile('dynamic', SIZE, rng=rng, block_size=BS)
    v.apply(g.random_writes(rng, SIZE, 5, block_size=BS))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return v.save(path)


# Each scenario: build(root) -> (tip, expected sha, [(params, must_open)]).

def scenario_search(root):
    base, child = chain(os.path.join(root, 'vm'))
    store = os.path.dirname(move(base.path, os.path.join(root, 'store')))
    empty = os.path.join(root, 'empty')
    os.makedirs(empty)
    return child.path, child.sha256, [
        ((), False),
        (('search=' + store,), True),
        (('search=' + empty, 'search=' + store), True),   # the second one
    ]


def scenario_explicit_parent(root):
    base, child = chain(os.path.join(root, 'vm'))
    renamed = move(base.path, os.path.join(root, 'elsewhere'), 'renamed.vhd')
    wrong = impostor(os.path.join(root, 'elsewhere', 'wrong.vhd'))
    return child.path, child.sha256, [
        ((), False),
        (('parent=' + renamed,), True),
        (('parent=' + wrong,), False),                   # id mismatch
        (('parent=' + wrong, 'parent=' + renamed), True),  # next one tried
    ]


def scenario_mismatch_then_next(root):
    # W2ru and the header name lead to an impostor beside the child; W2ku
    # (through the drive map) to the right file: the impostor is reported
    # and the next candidate tried.
    folder = os.path.join(root, 'vm')
    base, child = chain(folder, locators=[
        g.w2ru('.\\base.vhd', slot=0),
        g.w2ku('C:\\store\\base.vhd', slot=1)])
    move(base.path, os.path.join(root, 'store'))
    impostor(os.path.join(folder, 'base.vhd'))
    return child.path, child.sha256, [
        ((), False),
        (('drive=C:' + root,), True),
    ]


def scenario_drive(root):
    # Only W2ku and the header's full path know where the parent is.
    base, child = chain(os.path.join(root, 'vm'),
                        locators=[g.w2ku(WIN_DIR + '\\base.vhd')])
    move(base.path, os.path.join(root, 'Hyper-V', 'Virtual Hard Disks'))
    return child.path, child.sha256, [
        ((), False),
        (('drive=C:' + root,), True),
    ]


def scenario_case_drift(root):
    # Windows paths are case-insensitive: 'virtual hard disks\BASE.VHD'.
    base, child = chain(os.path.join(root, 'vm'), locators=[
        g.w2ku('c:\\hyper-v\\virtual hard disks\\BASE.VHD')])
    move(base.path, os.path.join(root, 'Hyper-V', 'Virtual Hard Disks'))
    return child.path, child.sha256, [
        (('drive=C:' + root,), True),
    ]


def scenario_w2ru_subfolder(root):
    folder = os.path.join(root, 'vm')
    base, child = chain(folder, locators=[g.w2ru('.\\disks\\base.vhd')],
                        parent_name='base.vhd')
    move(base.path, os.path.join(folder, 'disks'))
    return child.path, child.sha256, [((), True)]


def scenario_header_name_only(root):
    # No locators; the header holds a full Windows path (as Windows
    # writes): its basename in the child's folder is the parent.
    base, child = chain(os.path.join(root, 'vm'), locators=[])
    return child.path, child.sha256, [((), True)]


def scenario_w2ru_before_header_name(root):
    # Two files with the parent's id: W2ru names disks\base.vhd, the
    # header name's basename finds a stale copy (same id, other data)
    # beside the child.  FORMATS.md 2.6 order: W2ru wins.
    folder = os.path.join(root, 'vm')
    base, child = chain(folder, locators=[g.w2ru('.\\disks\\base.vhd')])
    move(base.path, os.path.join(folder, 'disks'))
    rng = random.Random(5)
    stale = g.VhdFile('dynamic', SIZE, rng=rng, block_size=BS, uid=base.uid)
    stale.apply(g.fill_writes(rng, SIZE))
    stale.save(os.path.join(folder, 'base.vhd'))
    return child.path, child.sha256, [((), True)]


SCENARIOS = [scenario_search, scenario_explicit_parent,
             scenario_mismatch_then_next, scenario_drive,
             scenario_case_drift, scenario_w2ru_subfolder,
             scenario_header_name_only, scenario_w2ru_before_header_name]


def check_run(tip, sha, params, must_open, what, tmp):
    if must_open:
        with harness.Nbdkit(tip, *params) as srv:
            got, _ = srv.copy_sha256(tmp)
        r.equal(got, sha, what + ': reads the chain right')
    else:
        rc, err = harness.start_must_fail(tip, *params)
        lines = harness.error_lines(err)
        r.check(rc == 1 and len(lines) == 1 and 'child.avhd' in lines[0]
                and 'parent' in lines[0].lower(),
                what + ': refused, one error naming child.avhd', err)


def check_scenario(fn, tmp):
    root = os.path.join(tmp, fn.__name__)
    tip, sha, runs = fn(root)
    for params, must_open in runs:
        what = '%s %s' % (fn.__name__, ' '.join(params) or '(no parameters)')
        r.run(check_run, tip, sha, params, must_open, what, tmp, what=what)


def main():
    harness.require_plugin()
    harness.require_tools('nbdcopy')
    with harness.tempdir() as tmp:
        for fn in SCENARIOS:
            r.run(check_scenario, fn, tmp, what=fn.__name__)


if __name__ == '__main__':
    r.main(main)
