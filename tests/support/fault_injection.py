# SPDX-License-Identifier: GPL-3.0-or-later
"""Kill the engine at a chosen filesystem call, from outside the collection's code.

``run_with_faults`` runs the engine in a forked child process whose ``os`` functions that change
the filesystem (or its metadata) are wrapped: each call is counted, and with ``kill_before=N`` the
child sends itself SIGKILL just before the Nth call (calls 1..N-1 happened, N did not; no cleanup,
no ``finally``, as when the container is killed).  ``start_with_faults`` can also stop it there
(SIGSTOP), to act while it holds the lock mid-run.  The calls are the real system calls on real
filesystems; nothing is simulated.

Forking instead of starting a new interpreter keeps each trial at a few milliseconds, so that a
test can kill the engine before every single call of a run in turn.

The engine forks too (each account's part runs in a process of that account, which closes every
descriptor it inherits): the calls are counted in shared memory, so that the Nth call is the Nth
of the whole run, and the signal goes to the whole process group, as a container's kill does.
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
import typing as t

# Every os function the engine (or the standard library under it) could use to change what is on
# disk or its metadata.  os.open counts only when it can create or truncate.  (Syncs are not state
# changes: a kill just before one leaves what a kill just after the previous call leaves.)
WRAPPED = (
    "rename", "replace", "unlink", "remove", "rmdir", "mkdir", "symlink", "link", "fchown", "chown", "lchown",
    "fchmod", "chmod", "utime", "sendfile", "write", "truncate", "ftruncate", "fsync", "fdatasync",
)
WRITING_OPEN = os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_RDWR


class Child:
    """The engine running in a forked child process (see start_with_faults)."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid, self._pipe = pid, pipe
        self.error = ""  # after wait(): why it failed (exit code 1), as "ExceptionType: message"

    def wait(self) -> t.Tuple[int, t.List[str]]:
        """Its exit code (-9 when killed) and, when it ran to its end, the names of its calls, in order."""
        with os.fdopen(self._pipe, "rb") as pipe:
            names, _sep, self.error = pipe.read().decode().partition("\0")
        _pid, status = os.waitpid(self.pid, 0)
        return os.waitstatus_to_exitcode(status), names.split()


def start_with_faults(
    params: t.Mapping[str, t.Any], kill_before: t.Optional[int] = None, stop_before: t.Optional[int] = None,
    check_mode: bool = False, pid: t.Optional[int] = None,
) -> Child:
    """Start the engine in a child process that sends itself SIGKILL (``kill_before``) or SIGSTOP
    (``stop_before``: it waits there, holding whatever it holds, until sent SIGCONT) just before
    its Nth filesystem call.  With ``pid``, os.getpid() tells the engine that number (every
    container's first process is PID 1: a run there sees the PID of the one killed before it)."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never returns into the test
        code = 70
        try:
            os.close(read_fd)
            os.setpgid(0, 0)
            calls = _SharedCalls()
            _install({kill_before: signal.SIGKILL, stop_before: signal.SIGSTOP}, calls)
            if pid is not None:
                os.getpid = lambda: pid
            from agent_tree import run_engine

            error = ""
            try:
                run_engine(params, check_mode=check_mode)
                code = 0
            except Exception as exc:  # a refusal or a failure: exit 1, like the module
                code, error = 1, f"{type(exc).__name__}: {exc}"
            if calls.pending():  # an account's process was killed and could not kill root's: now
                os.killpg(0, calls.pending())
            data = ("\n".join(calls.names()) + ("\0" + error if error else "")).encode()
            while data:
                data = data[_WRITE(write_fd, data):]
        finally:
            os._exit(code)
    os.close(write_fd)
    return Child(child, read_fd)


def run_with_faults(
    params: t.Mapping[str, t.Any], kill_before: t.Optional[int] = None, check_mode: bool = False,
    pid: t.Optional[int] = None,
) -> t.Tuple[int, t.List[str]]:
    """Run the engine in a child process to its end or its kill; see Child.wait."""
    return start_with_faults(params, kill_before=kill_before, check_mode=check_mode, pid=pid).wait()


_WRITE = os.write


class _SharedCalls:
    """The names of the calls made, in order, in memory shared with the processes the engine forks
    (one of them runs at a time: the engine waits for each account's process)."""

    SIZE = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, self.SIZE)  # anonymous and shared: survives fork and closed descriptors

    HEADER = 24  # calls made, bytes of names, the signal an account's process could not send to root's

    def append(self, name: str) -> int:
        count, end, pending = struct.unpack_from("QQQ", self._memory, 0)
        data = name.encode() + b"\n"
        self._memory[self.HEADER + end:self.HEADER + end + len(data)] = data
        struct.pack_into("QQQ", self._memory, 0, count + 1, end + len(data), pending)
        return count + 1

    def names(self) -> t.List[str]:
        end = struct.unpack_from("QQQ", self._memory, 0)[1]
        return self._memory[self.HEADER:self.HEADER + end].decode().split()

    def request(self, signum: int) -> None:
        struct.pack_into("Q", self._memory, 16, signum)

    def pending(self) -> int:
        return struct.unpack_from("Q", self._memory, 16)[0]


def _install(signals: t.Mapping[t.Optional[int], int], calls: _SharedCalls) -> None:
    group = os.getpgid(0)

    def counted(name: str, real: t.Callable[..., t.Any], counts: t.Callable[..., bool]) -> t.Callable[..., t.Any]:
        def wrapper(*args: t.Any, **kwargs: t.Any) -> t.Any:
            if counts(*args, **kwargs):
                number = calls.append(name)
                if number in signals:
                    if os.geteuid() != 0 and signals[number] == signal.SIGKILL:
                        calls.request(signals[number])  # an account's process may not kill root's: root's follows at once
                    os.killpg(group, signals[number])
            return real(*args, **kwargs)
        return wrapper

    for name in WRAPPED:
        setattr(os, name, counted(name, getattr(os, name), lambda *a, **k: True))
    os.open = counted("open", os.open, lambda path, flags, *a, **k: bool(flags & WRITING_OPEN))
