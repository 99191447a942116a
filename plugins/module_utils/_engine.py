# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""agent_state_link's engine: validate, check the mount, lock, plan, apply, report.

Private to the agor.persistence collection.  ``run()`` needs no Ansible and is what the module,
the tests and the benchmarks call.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import time
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils import _plan as P
from ansible_collections.agor.persistence.plugins.module_utils._apply import Executor, clear_staging, ensure_private_dir
from ansible_collections.agor.persistence.plugins.module_utils._spec import (
    META_DIR_NAME,
    AgentStateLinkError,
    Job,
    build_job,
    is_within,
    printable,
)

LOCK_NAME = "lock"
# Names the backup directory of a run that was interrupted, so that its rerun completes the same
# backup instead of starting a second copy.
PENDING_BACKUP_NAME = "pending-backup"


def run(params: t.Mapping[str, t.Any], check_mode: bool = False) -> t.Dict[str, t.Any]:
    """Bring every link to the requested state (or, in check mode, report what that would do)."""
    job = build_job(params)
    try:
        return _run(job, check_mode)
    except OSError as exc:  # taking the lock, planning or a step: name the cause (no space, read-only, permission)
        raise AgentStateLinkError(describe_os_error(exc)) from exc


def _run(job: Job, check_mode: bool) -> t.Dict[str, t.Any]:
    if job.require_mount and job.state != "prepared":
        check_mounted(job.volume)
    lock_fd = None if check_mode or job.state == "prepared" else _lock(job)
    shared_fd = _share_lock(job) if check_mode and job.state != "prepared" else None
    try:
        meta_fd = None if lock_fd is None else lock_fd[1]
        try:
            plan = _plan(job, meta_fd)
        except OSError:
            if not check_mode or shared_fd is not None:
                raise
            # The tree changed under an audit: a first start took the lock meanwhile. Wait for it, plan again.
            shared_fd = _share_lock(job)
            if shared_fd is None:
                raise
            plan = _plan(job, meta_fd)
        _refuse_conflicts(plan)
        warnings: t.List[str] = []
        if not check_mode and plan.changed:
            executor = Executor(plan)
            try:
                _with_pending_backup(plan, meta_fd, executor.run)
            finally:
                warnings = executor.warnings
                executor.close()
        if meta_fd is not None:
            _discard_pending_backup(meta_fd)  # an interrupted run's backup is complete once a run succeeds
        return report(plan, warnings)
    finally:
        if lock_fd is not None:
            os.close(lock_fd[0])
            os.close(lock_fd[1])
        if shared_fd is not None:
            os.close(shared_fd)


def _plan(job: Job, meta_fd: t.Optional[int]) -> P.JobPlan:
    planner = P.Planner(job, _backup_dir(job, meta_fd))
    try:
        return planner.plan()
    finally:
        planner.close()


def check_mounted(volume: str) -> None:
    """Refuse a volume that lies on the container's root filesystem: nothing there persists."""
    if not os.path.isdir(volume):
        raise AgentStateLinkError(
            f"volume: {volume} does not exist (or is not a directory); mount the persistent volume there, "
            "persistence would be lost at the next restart"
        )
    mount = mount_point_of(os.path.realpath(volume))
    if mount == "/":
        raise AgentStateLinkError(
            f"volume: {volume} is not on a mounted volume (it lies on the root filesystem); "
            "persistence would be lost at the next restart. Mount the persistent volume there or at a "
            "parent directory, or set require_mount=false (image builds, tests)."
        )


def mount_point_of(path: str) -> str:
    """The mount point of the filesystem holding ``path``, from /proc/self/mountinfo."""
    best = "/"
    with open("/proc/self/mountinfo", "rb") as mountinfo:  # bytes: mount points need not be UTF-8
        for line in mountinfo:
            point = _unescape(line.split()[4])
            if is_within(path, point) and len(point) > len(best):
                best = point
    return best


def _unescape(field: bytes) -> str:
    """mountinfo escapes space, tab, newline and backslash as a backslash and three octal digits;
    the rest is the path's bytes, decoded as os functions decode paths."""
    return os.fsdecode(re.sub(rb"\\([0-7]{3})", lambda match: bytes([int(match.group(1), 8)]), field))


def _lock(job: Job) -> t.Tuple[int, int]:
    """Take the volume's lock, so concurrent runs serialize; return (lock fd, meta dir fd)."""
    volume_fd = _fs.open_anchor(job.volume)
    if volume_fd is None:
        raise AgentStateLinkError(f"volume: {job.volume} does not exist")
    try:
        meta_fd = ensure_private_dir(volume_fd, META_DIR_NAME)
    finally:
        os.close(volume_fd)
    try:
        lock_fd = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=meta_fd)
    except BaseException:
        os.close(meta_fd)
        raise
    try:
        _wait_for_lock(job, lock_fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(lock_fd)
        os.close(meta_fd)
        raise
    clear_staging(meta_fd)
    return lock_fd, meta_fd


def _share_lock(job: Job) -> t.Optional[int]:
    """Check mode: wait until no run holds the volume's lock, then hold it shared while planning, so
    that an audit never reads a tree that a start is migrating.  Creates nothing (check mode changes
    nothing): without a bookkeeping directory of ours and a lock in it, returns None."""
    volume_fd = _fs.open_anchor(job.volume)
    if volume_fd is None:
        return None
    try:
        meta_fd = _fs.open_private_dir(volume_fd, META_DIR_NAME)
    finally:
        os.close(volume_fd)
    if meta_fd is None:
        return None
    try:
        lock_fd = os.open(LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=meta_fd)
    except FileNotFoundError:
        return None
    finally:
        os.close(meta_fd)
    try:
        _wait_for_lock(job, lock_fd, fcntl.LOCK_SH)
    except BaseException:
        os.close(lock_fd)
        raise
    return lock_fd


def _wait_for_lock(job: Job, lock_fd: int, operation: int) -> None:
    deadline = time.monotonic() + job.lock_timeout
    while True:
        try:
            fcntl.flock(lock_fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise AgentStateLinkError(
                    f"lock_timeout: another agent_state_link run still holds {job.volume}/{META_DIR_NAME}/{LOCK_NAME} "
                    f"after {job.lock_timeout:g} s"
                ) from None
            time.sleep(0.05)


def _backup_dir(job: Job, meta_fd: t.Optional[int]) -> str:
    store_root = job.seed_store if job.state == "prepared" else job.volume
    if store_root is None:
        raise AssertionError("state=prepared without seed_store")
    stamp = None
    peek_fd = None
    if meta_fd is None:  # check mode: read (only) what the real run will read, to predict it exactly
        root_fd = _fs.open_anchor(store_root)
        if root_fd is not None:
            try:
                peek_fd = meta_fd = _fs.open_private_dir(root_fd, META_DIR_NAME)
            finally:
                os.close(root_fd)
    try:
        if meta_fd is not None:
            with open(PENDING_BACKUP_NAME, encoding="utf-8", opener=_nofollow_opener(meta_fd)) as pending:
                stamp = pending.read().strip() or None
    except FileNotFoundError:
        pass
    finally:
        if peek_fd is not None:
            os.close(peek_fd)
    if stamp is None:
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    return os.path.join(store_root, META_DIR_NAME, "backups", stamp)


def _nofollow_opener(dir_fd: int) -> t.Callable[[str, int], int]:
    return lambda name, flags: os.open(name, flags | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)


def _with_pending_backup(plan: P.JobPlan, meta_fd: t.Optional[int], action: t.Callable[[], None]) -> None:
    """Record the backup directory while a run that backs things up is in flight."""
    backs_up = any(plan_link.conflicts() for plan_link in plan.links)
    if meta_fd is None or not backs_up:
        action()
        return
    with open(PENDING_BACKUP_NAME, "w", encoding="utf-8", opener=_nofollow_opener(meta_fd)) as pending:
        pending.write(os.path.basename(plan.backup_dir))
        pending.flush()
        os.fsync(pending.fileno())
    action()
    os.unlink(PENDING_BACKUP_NAME, dir_fd=meta_fd)


def _discard_pending_backup(meta_fd: int) -> None:
    """Left in place, a record would send every later run's backups into the same directory,
    where a second conflict on the same path would then refuse the run."""
    try:
        os.unlink(PENDING_BACKUP_NAME, dir_fd=meta_fd)
    except FileNotFoundError:
        pass


def _refuse_conflicts(plan: P.JobPlan) -> None:
    if plan.job.conflict != "fail":
        return
    conflicts = [step for link_plan in plan.links for step in link_plan.conflicts()]
    if conflicts:
        listed = "; ".join(
            f"{step.path} ({'volume entry in the way' if step.action == P.BACKUP_VOLUME_ENTRY else 'differs from the volume copy'})"
            for step in conflicts
        )
        raise AgentStateLinkError(f"conflict=fail: {len(conflicts)} conflict(s), nothing changed: {listed}")


def describe_os_error(exc: OSError) -> str:
    """Name the cause a user can act on: no space, read-only, permission."""
    causes = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only filesystem",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        # Somebody changed the tree while the run used it (a link planted between check and use, ...).
        errno.ELOOP: "a symlink stands where a directory was expected (not followed)",
        errno.ENOTDIR: "a symlink or a file stands where a directory was expected (not followed)",
        errno.EEXIST: "an entry appeared there while the run was using the name",
        errno.ENOTEMPTY: "a directory there is not empty (changed while the run was using it)",
    }
    cause = causes.get(exc.errno or 0, exc.strerror or str(exc))
    where = f" at {exc.filename}" if exc.filename else ""
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
        where += f" (running as uid {os.geteuid()}: run the start step as root, e.g. RAILWAY_RUN_UID=0 on Railway)"
    return f"{cause}{where}; everything not yet in the volume is still at its path, fix the cause and rerun ({exc})"


def report(plan: P.JobPlan, warnings: t.Sequence[str]) -> t.Dict[str, t.Any]:
    """The module result: changed, per-link records, and a diff per changed link."""
    links = [_link_record(link_plan) for link_plan in plan.links]
    diff = [_link_diff(link_plan, plan.job.state) for link_plan in plan.links if link_plan.changed]
    if plan.volume_owner is not None:
        diff.insert(0, {
            "before_header": plan.job.volume, "after_header": plan.job.volume,
            "before": {"path": plan.job.volume, "owner": "other"},
            "after": {"path": plan.job.volume, "owner": f"{plan.volume_owner[0]}:{plan.volume_owner[1]}"},
        })
    backups = sorted({step.dest for link_plan in plan.links for step in link_plan.steps if step.action in P.CONFLICT_ACTIONS})
    return printable({
        "changed": plan.changed,
        "links": links,
        "backup_dir": plan.backup_dir if backups else None,
        "volume_owner_changed": plan.volume_owner is not None,
        "diff": diff,
        "warnings": list(warnings),
    })


def _link_record(link_plan: P.LinkPlan) -> t.Dict[str, t.Any]:
    link = link_plan.link

    def paths(*actions: str) -> t.List[str]:
        return [step.path for step in link_plan.steps if step.action in actions]

    return {
        "path": link.path,
        "target": link.target,
        "kind": link.kind,
        "before": link_plan.before,
        "target_before": link_plan.target_before,
        "changed": link_plan.changed,
        "actions": link_plan.actions(),
        "steps": [step.as_dict() for step in link_plan.steps],
        "migrated": paths(P.MOVE),
        "duplicates_removed": paths(P.DROP_DUPLICATE),
        "backups": [{"path": step.path, "backup": step.dest} for step in link_plan.conflicts()],
    }


def _link_diff(link_plan: P.LinkPlan, state: str) -> t.Dict[str, t.Any]:
    """Before and after of the path and of the target, the shape ansible.builtin.file uses."""
    link = link_plan.link
    if state == "absent":
        restored = any(step.action in (P.RESTORE, P.CREATE_EMPTY) for step in link_plan.steps)
        after = {"path": link.kind if restored else "missing", "target": link_plan.target_before}
    else:
        filled = link.kind == "directory" or link_plan.target_before == "file" or _fills_file_target(link_plan)
        after = {"path": f"link to {link.target}", "target": link.kind if filled else "missing"}
    return {
        "before_header": link.path,
        "after_header": link.path,
        "before": {"path": link_plan.before, "target": link_plan.target_before},
        "after": after,
    }


def _fills_file_target(link_plan: P.LinkPlan) -> bool:
    """Whether a step puts content at a file target (which is otherwise left missing)."""
    for step in link_plan.steps:
        written = step.path if step.action == P.CREATE_FILE else step.dest
        if step.action in (P.MOVE, P.SEED, P.CREATE_FILE) and written == link_plan.store:
            return True
    return False
