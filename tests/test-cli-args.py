#!/usr/bin/python3
"""vhdchain's command line: bad arguments give one line on stderr and exit
status 2, help and version go to stdout with status 0.

Covered: no command, an unknown command, an unknown option, an option of
another command, a missing option argument, too few and too many
arguments, a malformed --drive, an unknown --format; --help, COMMAND --help
(for every command listed) and --version; options after the arguments.
"""

import os
import random
import re

import harness
import vhdchain_cli as cli
import vhdgen as g
from vhdgen import MiB

r = harness.Reporter('test-cli-args')


def commands():
    out = cli.ok('--help')
    return re.findall(r'^  ([a-z]+) [A-Z]', out, re.M)


def body():
    cli.require_tool()
    with harness.tempdir() as tmp:
        c = g.Chain(tmp, seed=91)
        c.base('base.vhd', 4 * MiB, writes=[(0, b'x' * 4096)])
        tip = c.write(expected=False)[-1].path

        cli.fails(r, [], 2, 'no command given', 'no command')
        cli.fails(r, ['frobnicate', tip], 2, 'frobnicate: unknown command',
                  'unknown command')
        cli.fails(r, ['info', '--bogus', tip], 2, 'unknown option --bogus',
                  'unknown long option')
        cli.fails(r, ['info', '-x', tip], 2, 'unknown option -x',
                  'unknown short option')
        cli.fails(r, ['info', '--verify', tip], 2, 'unknown option --verify',
                  'an option of another command')
        cli.fails(r, ['map', tip, '--svg'], 2, 'needs an argument',
                  'missing option argument')
        cli.fails(r, ['info'], 2, 'expected TIP, got 0 arguments',
                  'too few arguments')
        cli.fails(r, ['create', tip, 'a', 'b'], 2,
                  'expected PARENT CHILD, got 3 arguments',
                  'too many arguments')
        cli.fails(r, ['info', '--drive', 'C/mnt', tip], 2, '--drive C/mnt',
                  'malformed --drive')
        cli.fails(r, ['convert', '--format=qcow2', tip, 'x'], 2,
                  '--format qcow2', 'unknown --format')
        r.check(not os.path.exists('x'), 'nothing written on bad usage')

        out = cli.ok('--help')
        names = commands()
        r.equal(sorted(set(['info', 'check', 'map', 'create', 'merge',
                            'changed', 'convert']) - set(names)), [],
                '--help lists every command')
        for name in names:
            rc, out, err = cli.run(name, '--help')
            r.check(rc == 0 and out.startswith('Usage: vhdchain %s' % name)
                    and err == '', '%s --help' % name, err)
        rc, out, err = cli.run('--version')
        r.check(rc == 0 and re.match(r'vhdchain \d+\.\d+', out),
                '--version', out)
        r.equal(cli.json_of('info', tip, '--json')['depth'], 1,
                'options may follow the arguments')


r.main(body)
