# SPDX-License-Identifier: GPL-3.0-or-later
"""ansible-pull with the avoidable part of its child-process helper removed (a measurement tool).

ansible-pull runs its two children (``ansible -m git`` to update the checkout, then
``ansible-playbook``) through ``ansible.utils.cmd_functions.run_cmd``, which reads their output
10 bytes at a time in a ``select()`` loop with a one-second timeout.  When a child closes its
pipes before it has exited (the usual order), the loop waits for the exit and then calls
``select()`` on no descriptors at all, which sleeps the full second: 0-1 s per child, 0-2 s per
pull.  This wrapper swaps in a helper that waits for the exit instead and reads 64 KiB at a time;
the rest of ansible-pull is unchanged.  Usage: the same arguments as ansible-pull.
"""

from __future__ import annotations

import os
import select
import shlex
import subprocess
import sys

from ansible.cli import pull
from ansible.module_utils.common.text.converters import to_bytes


def run_cmd(cmd: str, live: bool = False, readsize: int = 65536):  # noqa: ARG001 - same signature
    p = subprocess.Popen([to_bytes(a, errors="surrogate_or_strict") for a in shlex.split(cmd)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = {p.stdout: b"", p.stderr: b""}
    pipes = [p.stdout, p.stderr]
    while pipes:
        readable = select.select(pipes, [], [])[0]
        for pipe in readable:
            data = os.read(pipe.fileno(), 65536)
            if live:
                sys.stdout.buffer.write(data)
            out[pipe] += data
            if not data:
                pipes.remove(pipe)
    p.wait()
    return p.returncode, out[p.stdout], out[p.stderr]


if __name__ == "__main__":
    pull.run_cmd = run_cmd
    sys.argv[0] = os.path.join(os.path.dirname(sys.executable), "ansible-pull")  # where it finds ansible, ansible-playbook
    sys.exit(pull.main())
