# SPDX-License-Identifier: GPL-3.0-or-later
"""The attacker's side of the adversarial tests: the engine runs as root, the agents' user
(uid ATTACKER, no passwd entry needed) owns the home and the volume root, and another user
(uid VICTIM) has state of its own.

What every adversarial run is checked against (the user-visible guarantees of issue 9):

- it completes, or refuses with an AgentStateLinkError (run_or_refuse: anything else, such as an
  AttributeError, escapes and fails the test with its traceback);
- nothing outside the allowed paths changes owner, mode or content (snapshots of what is protected);
- no entry in a directory a non-root user can write is owned by root, at any instant
  (find_root_owned after each run, and RootWatch scanning in a process of its own during runs);
- the attacker gains no entry that was root's or another user's (owners_by_inode /
  taken_over) and cannot read a root-only secret (hashes_readable_by).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import typing as t

from agent_tree import Tree, run_engine, snapshot
from mounts import ImageSandbox, Mounts

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

ATTACKER = 1001
VICTIM = 2002
SUPPORT = os.path.dirname(os.path.abspath(__file__))
ROOT_WATCH = os.path.join(SUPPORT, "root_watch.py")
RACER = os.path.join(SUPPORT, "racer.py")
# A stand-in for /etc/shadow (no real hash is copied anywhere): root's, mode 0600.
SHADOW = "root:$6$adversarial$notarealhashbutrootsonly:19700:0:99999:7:::\n"
VICTIM_HOME = "/home/victim"
VICTIM_FILES = {
    ".claude/projects/-work/session.jsonl": "victim's session",
    ".claude/settings.json": '{"model": "victim"}',
    ".config/opencode/auth.json": "victim's opencode token",
    ".codex/auth.json": "victim's codex token",
    ".ssh/id_ed25519": "victim's key",
}

# Root-owned entries the security model allows in a directory a user can write, by the end of their
# path (every sandbox's volume is <home>/.agor).  Issue 9: "Nothing the run leaves in a user-writable
# directory is owned by root, at any instant", except "<volume>/users is root-owned 0755" (the primary
# user can rename it, and further users trust that user: the security model says so).  Should the
# model come to allow another (say, the bookkeeping directory), it is named here and in SECURITY.md.
ROOT_MAY_OWN: t.Tuple[str, ...] = ("/.agor/users",)


def run_or_refuse(params: t.Mapping[str, t.Any], check_mode: bool = False) -> t.Tuple[t.Optional[t.Dict[str, t.Any]], t.Optional[str]]:
    """(result, None) when the run completes, (None, message) when it refuses with the module's
    clear error; any other exception escapes (a traceback is a failure, never a refusal)."""
    try:
        return run_engine(params, check_mode=check_mode), None
    except AgentStateLinkError as exc:
        return None, str(exc)


def as_user(uid: int, function: t.Callable[..., t.Any], *args: t.Any) -> bool:
    """Run ``function(*args)`` in a child process as ``uid`` (its gid the same, no groups); True when it returned."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            function(*args)
            os._exit(0)
        except BaseException:  # pylint: disable=broad-exception-caught
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def user_argv(uid: int, *argv: str) -> t.List[str]:
    """argv running ``argv`` as ``uid`` (gid the same, no supplementary groups)."""
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", *argv]


# -- root-owned entries where a user can move them ---------------------------------------------


def _allowed(st: os.stat_result, uid: int, bit: int) -> bool:
    """Whether ``uid`` (gid the same, no groups) has permission ``bit`` (4 read, 2 write, 1 search)."""
    if uid == st.st_uid:
        return bool(st.st_mode & (bit << 6))
    if uid == st.st_gid:
        return bool(st.st_mode & (bit << 3))
    return bool(st.st_mode & bit)


Inode = t.Tuple[int, int]


def find_root_owned(roots: t.Iterable[str], users: t.Sequence[int] = (ATTACKER, VICTIM),
                    planted: t.Collection[Inode] = ()) -> t.List[str]:
    """Root-owned entries in a directory that one of ``users`` can reach and write (so could rename
    away, keeping root's entry): each as "path (mode)".  ``planted`` names (device, inode) of the
    test's own root-owned plants (hard links to a root-only file), not the run's doing.

    Walked through descriptors opened without following links: a racer swapping a directory for a
    link to /etc must not make /etc's entries look as if they stood in the volume."""
    found: t.List[str] = []
    stack = []
    for root in roots:
        with contextlib.suppress(OSError):
            stack.append((os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW), root, tuple(users)))
    while stack:
        fd, directory, reaching = stack.pop()
        try:
            _scan(fd, directory, reaching, planted, found, stack)
        finally:
            os.close(fd)
    return sorted(found)


def _scan(fd: int, directory: str, reaching: t.Tuple[int, ...], planted: t.Collection[Inode], found: t.List[str],
          stack: t.List[t.Tuple[int, str, t.Tuple[int, ...]]]) -> None:
    dir_st = os.fstat(fd)
    writers = [uid for uid in reaching if _allowed(dir_st, uid, 2) and _allowed(dir_st, uid, 1)]
    searchers = tuple(uid for uid in reaching if _allowed(dir_st, uid, 1))
    for name in os.listdir(fd):
        path = os.path.join(directory, name)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue  # renamed or removed while looked at
        if writers and st.st_uid == 0 and not path.endswith(ROOT_MAY_OWN) and (st.st_dev, st.st_ino) not in planted:
            found.append(f"{path} ({stat.filemode(st.st_mode)} root, in a directory uid {writers[0]} can write)")
        if stat.S_ISDIR(st.st_mode) and searchers:
            with contextlib.suppress(OSError):  # gone, or swapped for a link meanwhile: not followed
                stack.append((os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd), path, searchers))


class RootWatch:
    """find_root_owned, over and over in a process of its own while runs happen (root-owned
    entries may exist only for an instant).  stop() returns every distinct finding."""

    def __init__(self, roots: t.Sequence[str], users: t.Sequence[int] = (ATTACKER, VICTIM), planted: t.Collection[Inode] = ()) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([SUPPORT, os.environ.get("ANSIBLE_COLLECTIONS_PATH", "")]))
        scope = {"roots": list(roots), "users": list(users), "planted": [list(inode) for inode in planted]}
        self._process = subprocess.Popen(
            [sys.executable, ROOT_WATCH, json.dumps(scope)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert self._process.stdout is not None
        assert self._process.stdout.readline().strip() == "ready", self._process.stderr.read() if self._process.stderr else ""

    def stop(self) -> t.List[str]:
        self._process.send_signal(signal.SIGTERM)
        out, err = self._process.communicate()
        assert self._process.returncode == 0, err
        lines = out.splitlines()
        return sorted(set(lines[:-1])) if lines and lines[-1].startswith("scans ") else sorted(set(lines))


@contextlib.contextmanager
def root_watch(roots: t.Sequence[str], users: t.Sequence[int] = (ATTACKER, VICTIM),
               planted: t.Collection[Inode] = ()) -> t.Iterator[t.List[str]]:
    """``with root_watch(roots) as seen:`` ... after the block, ``seen`` holds what the watcher found."""
    watch = RootWatch(roots, users, planted)
    seen: t.List[str] = []
    try:
        yield seen
    finally:
        seen.extend(watch.stop())


# -- the racer: a process of the attacker's --------------------------------------------------------


class Racer:
    """tests/support/racer.py running as ``uid`` with a JSON description of its moves (see there);
    stop() returns its report (counts, and every root-owned entry it caught)."""

    def __init__(self, moves: t.Sequence[t.Mapping[str, t.Any]], uid: int = ATTACKER) -> None:
        self._process = subprocess.Popen(
            user_argv(uid, sys.executable, RACER, json.dumps(moves)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._process.stdout is not None
        ready = self._process.stdout.readline().strip()
        assert ready == "ready", ready + (self._process.stderr.read() if self._process.stderr else "")

    def stop(self) -> t.Dict[str, t.Any]:
        self._process.send_signal(signal.SIGTERM)
        out, err = self._process.communicate()
        assert self._process.returncode == 0, err
        return t.cast(t.Dict[str, t.Any], json.loads(out.splitlines()[-1]))


@contextlib.contextmanager
def racing(moves: t.Sequence[t.Mapping[str, t.Any]], uid: int = ATTACKER) -> t.Iterator[t.Dict[str, t.Any]]:
    """``with racing(moves) as report:`` ... after the block, ``report`` holds the racer's report."""
    racer = Racer(moves, uid)
    report: t.Dict[str, t.Any] = {}
    try:
        yield report
    finally:
        report.update(racer.stop())


# -- what the attacker gains ---------------------------------------------------------------------


def owners_by_inode(*roots: str) -> t.Dict[t.Tuple[int, int], t.Tuple[int, str]]:
    """(device, inode) -> (owner, path) of every entry below the roots (links not followed)."""
    found = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for path in [dirpath] + [os.path.join(dirpath, entry) for entry in dirnames + filenames]:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                found[(st.st_dev, st.st_ino)] = (st.st_uid, path)
    return found


def taken_over(before: t.Mapping[t.Tuple[int, int], t.Tuple[int, str]], after: t.Mapping[t.Tuple[int, int], t.Tuple[int, str]],
               uid: int = ATTACKER) -> t.List[str]:
    """Entries owned by somebody else before and by ``uid`` after: what a run handed over."""
    return sorted(f"{was} (uid {before[key][0]}) is now {after[key][1]}, owned by uid {uid}"
                  for key, (owner, _path) in after.items() if owner == uid and key in before
                  for was in [before[key][1]] if before[key][0] != uid)


def hashes_readable_by(uid: int, *roots: str) -> t.Set[str]:
    """sha256 of every regular file below the roots that ``uid`` can open and read (walked as that
    user, links not followed): what the attacker could take away."""
    read_fd, write_fd = os.pipe()

    def walk() -> None:
        found = []
        for root in roots:
            for dirpath, _dirnames, filenames in os.walk(root):
                for name in filenames:
                    try:
                        fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                    except OSError:
                        continue
                    with os.fdopen(fd, "rb") as handle:
                        if stat.S_ISREG(os.fstat(fd).st_mode):
                            found.append(hashlib.sha256(handle.read()).hexdigest())
        data = "\n".join(found).encode()
        while data:
            data = data[os.write(write_fd, data):]

    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
        try:
            walk()
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        hashes = set(pipe.read().decode().split())
    os.waitpid(pid, 0)
    return hashes


def protected(tree, *, victim=True):
    """What no run may change: /etc's sensitive files, its listing and /etc/opencode, the
    root-only stand-in for /etc/shadow, and (unless the victim's own state is being linked) the
    victim's home."""
    state = {path: snapshot(path).get("") for path in ("/etc/shadow", "/etc/passwd", "/etc/group")}
    st = os.lstat("/etc")
    state["/etc"] = (st.st_mode, st.st_uid, st.st_gid, tuple(sorted(os.listdir("/etc"))))
    state["/etc/opencode"] = snapshot("/etc/opencode")
    state["outside"] = snapshot(tree.outside)
    if victim:
        state[VICTIM_HOME] = snapshot(VICTIM_HOME)
    return state


def changed_keys(before: t.Mapping[str, t.Any], after: t.Mapping[str, t.Any]) -> t.List[str]:
    """What differs between two protected() states, down to the entries of a snapshot that changed:
    what an assertion message should name."""
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(f"{key}/{rel}: {old.get(rel)} -> {new.get(rel)}" for rel in sorted(set(old) | set(new)) if old.get(rel) != new.get(rel))
        else:
            changed.append(f"{key}: {old} -> {new}")
    return changed


def assert_refusal_names(refusal: str, *paths: str) -> None:
    """A refusal must name the offending path (one of ``paths``, or a component below it)."""
    assert any(path in refusal or os.path.basename(path) in refusal for path in paths), (
        f"the refusal does not name the offending path ({', '.join(paths)}): {refusal}")


def assert_no_root_owned(roots: t.Sequence[str], seen: t.Sequence[str] = (), when: str = "after the run",
                         planted: t.Collection[Inode] = ()) -> None:
    """No root-owned entry where a user can move it: neither now (find_root_owned) nor in what a
    RootWatch saw during the runs (``seen``)."""
    for found, moment in ((list(seen), "during the runs"), (find_root_owned(roots, planted=planted), when)):
        assert not found, f"{len(found)} root-owned entries where a user can move them, {moment}:\n" + "\n".join(found[:12])


class AttackersContainer(ImageSandbox):
    """An ImageSandbox owned by the agents' user (see ImageSandbox's ``owner``); reset() also
    removes the seed store (outside the home, on the base directory's filesystem)."""

    def __init__(self, base: str, mounts: Mounts, image: t.Mapping[str, t.Any] = (), volume: t.Mapping[str, t.Any] = ()) -> None:
        super().__init__(base, mounts, image=image, volume=volume, owner=ATTACKER)

    def reset(self) -> Tree:
        tree = super().reset()
        if os.path.lexists(tree.seed_store):
            shutil.rmtree(tree.seed_store)
        return tree
