#!/usr/bin/python3
"""The manual pages document every plugin parameter and every vhdchain
command and option, and are built.

- docs/nbdkit-vhdchain-plugin.pod has an item B<key=...> for every
  parameter `nbdkit PLUGIN --help` lists;
- docs/vhdchain.pod has a section "vhdchain COMMAND" for every command
  `vhdchain --help` lists, every option of `vhdchain COMMAND --help` in that
  section (B<--option>, and B<-x> for short forms), every option common to
  all commands in OPTIONS FOR EVERY COMMAND, and the exit statuses 0, 1, 2;
- both pass podchecker without warnings, and make built both man pages
  (pod2man) into docs/*.1 of the build tree.
"""

import os
import re
import subprocess

import harness
import vhdchain_cli as cli

r = harness.Reporter('test-cli-docs')
DOCS = os.path.join(harness.TOP_SRCDIR, 'docs')
OPTION = re.compile(r'^\s+(?:(-[A-Za-z]), )?(--[a-z][a-z-]*)', re.M)


def pod(name):
    with open(os.path.join(DOCS, name)) as f:
        return f.read()


def section(text, head):
    """The text of the POD section starting with the line `head`, up to the
    next heading of the same or a higher level."""
    level = head.split()[0]
    start = text.find(head + '\n')
    if start < 0:
        start = text.find(head + ' ')
    if start < 0:
        return ''
    stops = ['\n=head1 '] + (['\n=head2 '] if level == '=head2' else [])
    ends = [text.find(s, start + len(head)) for s in stops]
    ends = [e for e in ends if e >= 0]
    return text[start:min(ends) if ends else len(text)]


def plugin_parameters():
    harness.require_plugin()
    p = harness.run(['nbdkit', harness.PLUGIN, '--help'])
    text = p.stdout.decode()
    text = text[text.index('plugin: vhdchain'):]
    return re.findall(r'^([a-z][a-z0-9-]*)=', text, re.M)


def check_plugin_pod():
    text = pod('nbdkit-vhdchain-plugin.pod')
    params = plugin_parameters()
    r.check(len(params) >= 9, 'the plugin lists its parameters', params)
    for key in params:
        r.check('B<%s=' % key in section(text, '=head1 PARAMETERS'),
                'plugin parameter %s= is documented' % key)


def own_and_common(help_text):
    """(options of the command, common options) from COMMAND --help."""
    common_at = help_text.find('Options for every command')
    own = OPTION.findall(help_text[:common_at])
    common = OPTION.findall(help_text[common_at:])
    return own, common


def check_cli_pod():
    text = pod('vhdchain.pod')
    top = cli.ok('--help')
    names = re.findall(r'^  ([a-z]+) [A-Z]', top, re.M)
    r.check(len(names) >= 7, 'vhdchain lists its commands', names)
    common_doc = section(text, '=head1 OPTIONS FOR EVERY COMMAND')
    for short, long in OPTION.findall(top):
        for opt in filter(None, (short, long)):
            r.check('B<%s>' % opt in common_doc,
                    'common option %s is documented' % opt)
    for name in names:
        own, common = own_and_common(cli.ok(name, '--help'))
        doc = section(text, '=head2 vhdchain %s' % name)
        r.check(doc != '', 'command %s has a section' % name)
        for short, long in own:
            for opt in filter(None, (short, long)):
                r.check('B<%s>' % opt in doc,
                        '%s: option %s is documented' % (name, opt))
        for short, long in common:
            r.check('B<%s>' % long in common_doc,
                    '%s: common option %s is documented' % (name, long))
    status = section(text, '=head1 EXIT STATUS')
    r.check(all('=item B<%d>' % n in status for n in (0, 1, 2)),
            'exit statuses 0, 1 and 2 are documented')


def check_built():
    harness.require_tools('podchecker')
    for name in ('vhdchain', 'nbdkit-vhdchain-plugin'):
        p = subprocess.run(['podchecker', os.path.join(DOCS, name + '.pod')],
                           capture_output=True)
        msg = (p.stdout + p.stderr).decode()
        r.check(p.returncode == 0 and 'WARNING' not in msg,
                '%s.pod passes podchecker' % name, msg)
        man = os.path.join(harness.TOP_BUILDDIR, 'docs', name + '.1')
        ok = os.path.isfile(man) and '.TH %s 1 ' % name.upper() in \
            open(man).read()
        r.check(ok, '%s.1 was built by make' % name)


def body():
    cli.require_tool()
    check_plugin_pod()
    check_cli_pod()
    check_built()


r.main(body)
