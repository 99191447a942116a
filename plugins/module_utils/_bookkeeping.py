# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The engine's bookkeeping: the store's lock, each account's private directory, staging, backups.

Private to the agor.persistence collection.

The lock is a flock(2) on the store's root directory itself, taken by the process that starts the
run: no file of root's is ever created where the agents' user could move it.  Everything else lives
in ``<territory>/.agent-state-link/``, made by and owned by the account whose links the run handles
there, so one account's copies and backups are never in another's reach:

- ``staging/``: copies in flight; whatever a killed run left there is discarded by the next run;
- ``backups/<UTC stamp>/<absolute path>``: conflicting entries moved out of the way;
- ``pending-backup``: names the backup directory of a run that was interrupted, so that its rerun
  completes the same backup instead of starting a second copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils._spec import META_DIR_NAME, AgentStateLinkError

STAGING_DIR_NAME = "staging"
BACKUPS_DIR_NAME = "backups"
PENDING_BACKUP_NAME = "pending-backup"


@contextlib.contextmanager
def store_lock(store_fd: int, store: str, shared: bool, timeout: float) -> t.Iterator[None]:
    """Hold the store's lock: exclusive for a run that changes things, shared for check mode, so
    that an audit never reads a tree that a start is migrating."""
    lock_fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=store_fd)
    try:
        deadline = time.monotonic() + timeout
        operation = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(lock_fd, operation | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise AgentStateLinkError(
                        f"lock_timeout: another agent_state_link run still holds the lock on {store} after {timeout:g} s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(lock_fd)  # releases the lock


def ensure_private_dir(parent_fd: int, name: str) -> int:
    """Open (creating if needed) a directory only this process's user can write.

    Anything else found under that name (a link, a file, a directory somebody else owns or can
    write) is renamed aside, never followed or deleted, and a fresh directory takes its place.
    """
    fd = _fs.open_private_dir(parent_fd, name)
    if fd is not None:
        return fd
    if _fs.lstat_at(parent_fd, name) is not None:
        aside = f"{name}.untrusted-{os.urandom(6).hex()}"
        os.rename(name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    try:
        _fs.make_dir_at(parent_fd, name, os.geteuid(), os.getegid(), 0o700)
    except FileExistsError:
        pass  # a concurrent run made it first
    fd = _fs.open_private_dir(parent_fd, name)
    if fd is None:
        raise AgentStateLinkError(f"{name}: could not create a private bookkeeping directory")
    return fd


def open_meta(territory_fd: t.Optional[int]) -> t.Optional[int]:
    """The territory's bookkeeping directory, when it exists and only this account can write it."""
    return None if territory_fd is None else _fs.open_private_dir(territory_fd, META_DIR_NAME)


def clear_staging(meta_fd: int) -> None:
    """Discard copies an interrupted run left in staging; their sources are still in place."""
    if _fs.kind_of(_fs.lstat_at(meta_fd, STAGING_DIR_NAME)) != "directory":
        return
    staging_fd = _fs.open_dir_at(meta_fd, STAGING_DIR_NAME)
    try:
        for name in _fs.list_dir(staging_fd):
            _fs.remove_tree_at(staging_fd, name)
    finally:
        os.close(staging_fd)


def read_pending_backup(meta_fd: t.Optional[int]) -> t.Optional[str]:
    """The stamp of an interrupted run's backup directory, if one was recorded."""
    if meta_fd is None:
        return None
    try:
        with open(PENDING_BACKUP_NAME, encoding="utf-8", opener=_nofollow_opener(meta_fd)) as pending:
            return pending.read().strip() or None
    except FileNotFoundError:
        return None


def new_backup_stamp() -> str:
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


@contextlib.contextmanager
def pending_backup(meta_fd: int, stamp: str) -> t.Iterator[None]:
    """Record the backup directory while a run that backs things up is in flight; the record goes
    once the run completes (left in place, it would send later runs' backups there too)."""
    with open(PENDING_BACKUP_NAME, "w", encoding="utf-8", opener=_nofollow_opener(meta_fd)) as pending:
        pending.write(stamp)
        pending.flush()
        os.fsync(pending.fileno())
    yield
    discard_pending_backup(meta_fd)


def discard_pending_backup(meta_fd: int) -> None:
    try:
        os.unlink(PENDING_BACKUP_NAME, dir_fd=meta_fd)
    except FileNotFoundError:
        pass


def _nofollow_opener(dir_fd: int) -> t.Callable[[str, int], int]:
    return lambda name, flags: os.open(name, flags | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
