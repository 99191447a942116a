# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Run a function as another account, in a child process that cannot become root again.

Private to the agor.persistence collection.  The start step runs as root over directories that the
agents' user can write; whatever is done inside them runs here, with that user's uid, gid and
groups, so a planted link or a swapped directory gains the user nothing it could not do itself.

The child imports nothing: it may not be allowed to read the interpreter's files or the module's
own payload (Ansible's temporary directory is root's, 0700), so every module it runs is imported
before the fork, at the top of the engine's modules, and text it reads is bytes or UTF-8.

The child's answer comes back as JSON, never pickle: a process running as the user is the user's to
tamper with, and root must not execute what it sends.  (The kernel also marks a process that changed
its credentials as not dumpable, so the user cannot ptrace it.)
"""

from __future__ import annotations

import ctypes
import grp
import json
import os
import pwd
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError


class Account(t.NamedTuple):
    """The credentials a child process takes: uid, primary gid and supplementary groups."""

    uid: int
    gid: int

    def groups(self) -> t.List[int]:
        """The account's groups from the databases; only its primary group when it has no entry."""
        try:
            name = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return [self.gid]
        try:
            return sorted(set(os.getgrouplist(name, self.gid)))
        except (KeyError, OSError):
            return [self.gid] + [entry.gr_gid for entry in grp.getgrall() if name in entry.gr_mem]

    def is_current(self) -> bool:
        return (self.uid, self.gid) == (os.geteuid(), os.getegid())


class AccountProcessCrash(Exception):
    """An engine bug met in an account's process: raised in root's process like any other bug
    (a traceback, never a refusal that reads as the user's doing), carrying the child's traceback."""


def run_as(account: Account, function: t.Callable[[], t.Any]) -> t.Any:
    """Return ``function()`` computed as ``account``: in this process when it already runs as that
    account, else in a child that has dropped to it for good.  ``function`` returns JSON data;
    an AgentStateLinkError raised in the child is raised here with the same message, any other
    exception as an AccountProcessCrash."""
    if account.is_current():
        return function()
    if os.geteuid() != 0:
        raise AgentStateLinkError(
            f"running as uid {os.geteuid()}, the run must act as uid {account.uid}: run it as root "
            "(the container's start step runs as root, e.g. RAILWAY_RUN_UID=0, and drops privileges afterwards)"
        )
    groups = account.groups()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read_fd)
        _child(account, groups, function, write_fd)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as answer:
        data = answer.read()
    status = os.waitpid(pid, 0)[1]
    if not data:
        raise AgentStateLinkError(
            f"the process acting as uid {account.uid} ended without an answer ({_describe_status(status)})"
        )
    message = json.loads(data.decode("utf-8"))
    if "error" in message:
        raise AgentStateLinkError(message["error"])
    if "crash" in message:
        raise AccountProcessCrash(f"the process acting as uid {account.uid} crashed:\n{message['crash']}")
    return message["result"]


def _child(account: Account, groups: t.List[int], function: t.Callable[[], t.Any], write_fd: int) -> t.NoReturn:
    code = 1
    try:
        # Only the answer pipe crosses over: descriptors root opened stay root's.
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, _max_fd())
        drop_privileges(account, groups)
        try:
            answer: t.Dict[str, t.Any] = {"result": function()}
        except AgentStateLinkError as exc:
            answer = {"error": str(exc)}
        except Exception as exc:  # an engine bug: report it whole rather than as a silent child death
            answer = {"crash": _describe_crash(exc)}
        data = json.dumps(answer).encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
        code = 0
    finally:
        os._exit(code)


def _describe_crash(exc: BaseException) -> str:
    """``exc`` as a traceback without source lines: traceback.format_exc would cost every start
    the import of traceback, linecache and textwrap, for a path taken only by a bug."""
    lines = ["Traceback (most recent call last):"]
    frame = exc.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {frame.tb_lineno}, in {code.co_name}')
        frame = frame.tb_next
    lines.append(f"{type(exc).__name__}: {exc}")
    return "\n".join(lines)


PR_SET_DUMPABLE = 4  # linux/prctl.h

_DROPPED = []  # set in a child once it has dropped (see dropped_privileges)


def dropped_privileges() -> bool:
    """Whether this process is a child that root started and that dropped to an account."""
    return bool(_DROPPED)


def drop_privileges(account: Account, groups: t.Sequence[int]) -> None:
    """Become ``account`` for good (real, effective and saved ids), and check there is no way back."""
    _DROPPED.append(account.uid)
    os.setgroups(list(groups))
    os.setresgid(account.gid, account.gid, account.gid)
    os.setresuid(account.uid, account.uid, account.uid)
    # Changing ids has just reset the process's dumpable flag from fs.suid_dumpable, which may be 1:
    # clear it whatever that says, so the account cannot ptrace this copy of root's memory.
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise AgentStateLinkError(f"could not make the process acting as uid {account.uid} non-dumpable")
    if account.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise AgentStateLinkError(f"could not drop root privileges to uid {account.uid}")


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        return 1024


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"
