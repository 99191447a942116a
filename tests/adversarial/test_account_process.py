# SPDX-License-Identifier: GPL-3.0-or-later
"""The process that acts as the agents' user is a fork of root's (of the module process, or of the
Ansible worker over the local connection): while it works, that user must not be able to read its
memory, its environment or its descriptors, nor may the process get root back.

The kernel resets a process's dumpable flag from fs.suid_dumpable when it changes ids; with the
setting at 1 (allowed, and used for debugging) it would stay traceable by the user.  So the test also
runs with the setting at 1, where only the engine's own prctl(PR_SET_DUMPABLE, 0) protects it.
"""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from attacker import ATTACKER

from ansible_collections.agor.persistence.plugins.module_utils._privsep import Account, run_as

SUID_DUMPABLE = "/proc/sys/fs/suid_dumpable"
PR_GET_DUMPABLE = 3


@pytest.fixture(params=["as configured", "1"])
def suid_dumpable(request):
    if os.geteuid() != 0:
        pytest.skip("needs root: the engine drops from root to the account")
    with open(SUID_DUMPABLE, encoding="ascii") as handle:
        configured = handle.read().strip()
    if request.param == "as configured":
        yield configured
        return
    try:
        with open(SUID_DUMPABLE, "w", encoding="ascii") as handle:
            handle.write(request.param)
    except OSError as exc:
        pytest.skip(f"cannot set fs.suid_dumpable here: {exc}")
    try:
        yield request.param
    finally:
        with open(SUID_DUMPABLE, "w", encoding="ascii") as handle:
            handle.write(configured)


# The attacker: a fresh process of the account's (exec'd, so dumpable itself), reading the acting
# process's /proc entries; prints one line per attempt, what and OK or the errno's name.
ATTACK = """
import errno, os, sys
pid = sys.argv[1]
for what in ("mem", "environ", "fd"):
    path = "/proc/%s/%s" % (pid, what)
    try:
        if what == "fd":
            os.listdir(path)
        else:
            with open(path, "rb") as handle:
                handle.read(1)
        print(what, "OK")
    except OSError as exc:
        print(what, errno.errorcode.get(exc.errno, exc.errno))
"""
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def test_the_account_cannot_read_or_regain_root_from_its_process(suid_dumpable):
    def acting_as_account():
        dumpable = ctypes.CDLL(None, use_errno=True).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        try:
            os.setuid(0)
            regained = True
        except PermissionError:
            regained = False
        # While this process works, the account attacks it from a process of its own.
        read_fd, write_fd = os.pipe()
        acting = os.getpid()
        attacker = os.fork()
        if attacker == 0:
            os.dup2(write_fd, 1)
            os.execv(PYTHON, [PYTHON, "-I", "-c", ATTACK, str(acting)])
        os.close(write_fd)
        with os.fdopen(read_fd) as handle:
            attempts = dict(line.split(" ", 1) for line in handle.read().splitlines())
        os.waitpid(attacker, 0)
        return {"uid": os.getresuid(), "dumpable": dumpable, "regained_root": regained, "attempts": attempts}

    answer = run_as(Account(ATTACKER, ATTACKER), acting_as_account)

    assert answer["uid"] == [ATTACKER] * 3
    assert answer["regained_root"] is False
    assert answer["dumpable"] == 0, f"fs.suid_dumpable={suid_dumpable}: the account's process is dumpable"
    assert answer["attempts"] == {"mem": "EACCES", "environ": "EACCES", "fd": "EACCES"}, answer["attempts"]
