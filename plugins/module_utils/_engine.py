# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""agent_state_link's engine: validate, check the mount, lock, plan, apply, report.

Private to the agor.persistence collection.  ``run()`` needs no Ansible and is what the module,
the tests and the benchmarks call.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _bookkeeping as B
from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils import _plan as P
from ansible_collections.agor.persistence.plugins.module_utils._apply import Executor
from ansible_collections.agor.persistence.plugins.module_utils._privsep import Account, dropped_privileges, run_as
from ansible_collections.agor.persistence.plugins.module_utils._report import conflicts, report, territory_report
from ansible_collections.agor.persistence.plugins.module_utils._spec import (
    META_DIR_NAME,
    USERS_DIR_NAME,
    AgentStateLinkError,
    Job,
    LinkSpec,
    build_job,
    is_within,
    relabel,
)


def run(params: t.Mapping[str, t.Any], check_mode: bool = False) -> t.Dict[str, t.Any]:
    """Bring every link to the requested state (or, in check mode, report what that would do)."""
    job = build_job(params)
    try:
        return _run(job, check_mode)
    except OSError as exc:  # taking the lock, planning or a step: name the cause (no space, read-only, permission)
        raise AgentStateLinkError(describe_os_error(exc)) from exc


def run_reporting_refusal(params: t.Mapping[str, t.Any], check_mode: bool = False) -> t.Dict[str, t.Any]:
    """run()'s result, or a refusal as a failed result in the caller's terms (O(labels)): what the module
    and its action plugin both return."""
    try:
        return run(params, check_mode)
    except AgentStateLinkError as exc:
        return {"failed": True, "changed": False, "msg": relabel(str(exc), params["labels"])}


class RootPlan:
    """What only root does, before any account's links are handled."""

    __slots__ = ("store_owner", "store_owner_before", "directories", "steps", "territories")

    def __init__(self) -> None:
        self.store_owner: t.Optional[t.Tuple[int, int]] = None  # set when the store root must be re-owned
        self.store_owner_before: t.Tuple[int, int] = (0, 0)
        # (path, uid, gid, mode) of directories root creates: the seed store's missing ancestors, and
        # <store>/users and <store>/users/<name> for accounts other than the store root's owner.
        self.directories: t.List[t.Tuple[str, int, int, int]] = []
        # Steps shown on the link that needs them, by link index.
        self.steps: t.Dict[int, t.List[t.Dict[str, str]]] = {}
        self.territories: t.List[P.Territory] = []

    @property
    def store_owner_change(self) -> t.Optional[t.Tuple[t.Tuple[int, int], t.Tuple[int, int]]]:
        return None if self.store_owner is None else (self.store_owner_before, self.store_owner)


def _run(job: Job, check_mode: bool) -> t.Dict[str, t.Any]:
    """Root's part: resolve owners, check the volume, lock, re-own the store root and make the
    directories only root may make; then each account's links in a process of that account."""
    job = resolve_owners(job)
    if job.state != "prepared":
        _check_volume(job)
    store_fd = _fs.open_anchor(job.store_root)
    if store_fd is None and job.state != "prepared":
        raise AgentStateLinkError(f"volume: {job.volume} does not exist")
    try:
        with B.store_lock(store_fd, job.store_root, check_mode, job.lock_timeout) if store_fd is not None else _nothing():
            root = plan_root(job, store_fd)
            if not check_mode:
                if store_fd is not None and root.store_owner is not None:
                    # Handed over first (what manage_volume_root asks): the previews below run as
                    # the accounts, which must be able to enter a volume root that was root's 0700.
                    os.fchown(store_fd, *root.store_owner)
                if root.directories or job.conflict == "fail":
                    # Every account's refusals (and with conflict=fail its conflicts) are known
                    # before root makes a directory; a run with none to make needs no preview.
                    previews = [_as_owner(territory, job, True) for territory in root.territories]
                    if job.conflict == "fail":
                        _refuse_conflicts(previews)
                if root.directories:
                    store_fd = apply_root(job, root, store_fd)
            results = [_as_owner(territory, job, check_mode) for territory in root.territories]
            _refuse_conflicts(results)
    finally:
        if store_fd is not None:
            os.close(store_fd)
    return report(job, root.store_owner_change, root.steps, results)


@contextlib.contextmanager
def _nothing() -> t.Iterator[None]:
    yield


def _as_owner(territory: P.Territory, job: Job, check_mode: bool) -> t.Dict[str, t.Any]:
    return t.cast(t.Dict[str, t.Any], run_as(Account(territory.uid, territory.gid), lambda: run_territory(job, territory, check_mode)))


def resolve_owners(job: Job) -> Job:
    """Give each link without an owner the owner of the directory that holds its path (the home):
    the state is that account's, and it is that account that will handle it."""
    if all(link.uid is not None for link in job.links):
        return job
    owners: t.Dict[str, os.stat_result] = {}
    links = []
    for link in job.links:
        if link.uid is None:
            home = os.path.dirname(link.path)
            if home not in owners:
                owners[home] = _nearest_existing_status(home)
            st = owners[home]
            link = link._replace(uid=st.st_uid, gid=st.st_gid if link.gid is None else link.gid)
        links.append(link)
    return job._replace(links=tuple(links))


def _nearest_existing_status(path: str) -> os.stat_result:
    while True:
        fd = _fs.open_anchor(path)
        if fd is not None:
            try:
                return os.fstat(fd)
            finally:
                os.close(fd)
        path = os.path.dirname(path)


def _check_volume(job: Job) -> None:
    """The volume must exist, then (unless told otherwise) be a mounted filesystem."""
    fd = _fs.open_anchor(job.volume)
    if fd is None:
        raise AgentStateLinkError(
            f"volume: {job.volume} does not exist; mount the persistent volume there, persistence would be lost at the "
            "next restart"
        )
    os.close(fd)
    if job.require_mount:
        check_mounted(job.volume)


def plan_root(job: Job, store_fd: t.Optional[int]) -> RootPlan:
    """Plan root's part: who owns the store root, which accounts work where, which directories
    only root may create; refuse a territory another account could have redirected."""
    root = RootPlan()
    first = job.links[0]
    primary = (job.uid, job.gid) if job.uid is not None else (t.cast(int, first.uid), t.cast(int, first.gid))
    if primary[1] is None:
        primary = (primary[0], t.cast(int, first.gid))
    if store_fd is None:  # a first image build: root makes the seed store if anything is to be kept there
        for directory in _missing_ancestors(job.store_root) if _keeps_anything(job) else []:
            root.directories.append((directory, 0, 0, 0o755))
            root.steps.setdefault(first.index, []).append({"action": "create_directory", "path": directory})
        root.store_owner = primary if primary != (0, 0) and root.directories else None
        owner = primary
    else:
        st = os.fstat(store_fd)
        owner = root.store_owner_before = (st.st_uid, st.st_gid)
        if job.state == "prepared" or (job.manage_volume_root and job.state == "present"):
            if owner != primary:
                root.store_owner = primary
            owner = primary
    territories: t.Dict[t.Tuple[int, int, t.Tuple[str, ...]], t.List[LinkSpec]] = {}
    for link in job.links:
        parts = _territory_parts(job, link, owner[0])
        territories.setdefault((t.cast(int, link.uid), t.cast(int, link.gid), parts), []).append(link)
    for (uid, gid, parts), links in territories.items():
        root.territories.append(P.Territory(uid=uid, gid=gid, parts=parts, links=tuple(links)))
        if parts:
            _plan_users_dirs(job, root, store_fd, parts, uid, gid, links[0].index)
    return root


def _keeps_anything(job: Job) -> bool:
    """Whether a directory or file stands at any path (state=prepared keeps them in the seed store)."""
    for link in job.links:
        home_fd = _fs.open_anchor(os.path.dirname(link.path))
        if home_fd is not None:
            try:
                if P.entry_at(home_fd, os.path.basename(link.path)).kind in (P.Kind.DIRECTORY, P.Kind.FILE):
                    return True
            finally:
                os.close(home_fd)
    return False


def _missing_ancestors(path: str) -> t.List[str]:
    """``path`` and its missing ancestors, outermost first."""
    missing: t.List[str] = []
    while True:
        fd = _fs.open_anchor(path)
        if fd is not None:
            os.close(fd)
            return missing
        missing.insert(0, path)
        path = os.path.dirname(path)


def _territory_parts(job: Job, link: LinkSpec, store_uid: int) -> t.Tuple[str, ...]:
    if link.uid == store_uid:
        return ()
    rel = job.relative_target(link).split("/")
    if os.geteuid() not in (0, link.uid):
        raise AgentStateLinkError(
            f"volume: {job.store_root} is owned by uid {store_uid}, and this run (uid {os.geteuid()}) cannot act for uid "
            f"{link.uid}: run the start step as root (e.g. RAILWAY_RUN_UID=0 on Railway), with manage_volume_root=true"
        )
    if os.geteuid() != 0 and (len(rel) < 3 or rel[0] != USERS_DIR_NAME):
        raise AgentStateLinkError(
            f"volume: {job.store_root} is owned by uid {store_uid}, not by uid {link.uid} that runs this: run the start "
            "step as root (e.g. RAILWAY_RUN_UID=0 on Railway), with manage_volume_root=true to give the volume root to it"
        )
    if len(rel) < 3 or rel[0] != USERS_DIR_NAME:
        raise AgentStateLinkError(
            f"{link.field_name('target')}: {link.target} belongs to uid {link.uid}, but {job.store_root} is owned by uid "
            f"{store_uid}: the state of an account other than the volume root's owner lives below "
            f"{os.path.join(job.store_root, USERS_DIR_NAME)}/<name>/ (or set manage_volume_root=true to give the volume "
            "root to the primary account)"
        )
    return (rel[0], rel[1])


def _plan_users_dirs(
    job: Job, root: RootPlan, store_fd: t.Optional[int], parts: t.Tuple[str, ...], uid: int, gid: int, index: int,
) -> None:
    """<store>/users (root's, 0755) and <store>/users/<name> (the account's, 0700): check them, or
    plan to create them.  Anything else under those names is refused, never re-owned."""
    users_path = os.path.join(job.store_root, parts[0])
    account_path = os.path.join(users_path, parts[1])
    users_fd = None if store_fd is None else _open_dir_or_none(store_fd, parts[0], users_path)
    try:
        if users_fd is None:
            if (users_path, 0, 0, 0o755) not in root.directories:
                root.directories.append((users_path, 0, 0, 0o755))
                root.steps.setdefault(index, []).append({"action": "create_directory", "path": users_path})
        else:
            P.check_safe_dir(users_fd, users_path, (0,))
        account_fd = None if users_fd is None else _open_dir_or_none(users_fd, parts[1], account_path)
        if account_fd is None:
            root.directories.append((account_path, uid, gid, 0o700))
            root.steps.setdefault(index, []).append({"action": "create_directory", "path": account_path})
        else:
            try:
                P.check_safe_dir(account_fd, account_path, (uid,))
            finally:
                os.close(account_fd)
    finally:
        if users_fd is not None:
            os.close(users_fd)


def _open_dir_or_none(parent_fd: int, name: str, path: str) -> t.Optional[int]:
    st = _fs.lstat_at(parent_fd, name)
    if st is None:
        return None
    if not stat.S_ISDIR(st.st_mode):
        raise AgentStateLinkError(
            f"{path}: a {_fs.kind_of(st)} owned by uid {st.st_uid} stands where the engine keeps accounts' state; "
            "move it away and rerun"
        )
    return _fs.open_dir_at(parent_fd, name)


def apply_root(job: Job, root: RootPlan, store_fd: t.Optional[int]) -> int:
    """Do root's part of the plan; return the store root's descriptor (made now at a first build).

    Root creates directories only in directories that root owns and nobody else can write, or
    through a descriptor of the store root it has checked; each appears with its final owner and
    mode (see _fs.make_dir_at)."""
    made_store_root = store_fd is None
    for path, uid, gid, mode in root.directories:
        parent = os.path.dirname(path)
        if store_fd is not None and is_within(parent, job.store_root):
            parts = os.path.relpath(parent, job.store_root).split("/")
            parent_fd = _fs.walk_at(store_fd, [] if parts == ["."] else parts)
        else:
            parent_fd = _fs.open_anchor(parent)
        if parent_fd is None:
            raise AgentStateLinkError(f"{parent}: vanished while the run was planned; rerun")
        try:
            _fs.make_dir_at(parent_fd, os.path.basename(path), uid, gid, mode)
        finally:
            os.close(parent_fd)
        if path == job.store_root:
            store_fd = _fs.open_anchor(path)
    if store_fd is None:
        raise AgentStateLinkError(f"{job.store_root}: could not be created")
    if made_store_root and root.store_owner is not None:  # an existing one was handed over already (_run)
        os.fchown(store_fd, *root.store_owner)
    return store_fd


def run_territory(job: Job, territory: P.Territory, check_mode: bool) -> t.Dict[str, t.Any]:
    """One account's part, run as that account: plan its links and, unless in check mode, apply."""
    try:
        territory_fd = P.open_territory(job, territory)  # None: not made yet (check mode, or nothing kept at build)
        try:
            return _run_territory(job, territory, territory_fd, check_mode)
        finally:
            if territory_fd is not None:
                os.close(territory_fd)
    except OSError as exc:
        message = describe_os_error(exc)
        if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() == territory.uid != 0:
            message += (
                f" [the links of uid {territory.uid} are handled by a process of that account: an entry it cannot read,"
                " move or remove belongs to another account; give it to that account or move it away]"
            )
        raise AgentStateLinkError(message) from exc


def _run_territory(job: Job, territory: P.Territory, territory_fd: t.Optional[int], check_mode: bool) -> t.Dict[str, t.Any]:
    meta_fd = B.open_meta(territory_fd)
    try:
        if meta_fd is not None and not check_mode:
            B.clear_staging(meta_fd)
        stamp = B.read_pending_backup(meta_fd) or B.new_backup_stamp()
    finally:
        if meta_fd is not None:
            os.close(meta_fd)
    territory_root = os.path.join(job.store_root, *territory.parts)
    backup_dir = os.path.join(territory_root, META_DIR_NAME, B.BACKUPS_DIR_NAME, stamp)
    with P.Planner(job, territory, territory_fd, backup_dir) as planner:
        plan = planner.plan()
    warnings: t.List[str] = []
    if not check_mode and not (job.conflict == "fail" and conflicts(plan)):
        if plan.changed:
            with Executor(plan, territory_fd) as executor:
                try:
                    if any(link_plan.conflicts() for link_plan in plan.links):
                        with B.pending_backup(executor._meta_fd(), stamp):
                            executor.run()
                    else:
                        executor.run()
                finally:
                    warnings = executor.warnings
        meta_fd = B.open_meta(territory_fd)
        if meta_fd is not None:  # an interrupted run's backup is complete once a run succeeds
            B.discard_pending_backup(meta_fd)
            os.close(meta_fd)
    return territory_report(plan, warnings)


def check_mounted(volume: str) -> None:
    """Refuse a volume that lies on the container's root filesystem: nothing there persists."""
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


def _refuse_conflicts(results: t.Sequence[t.Mapping[str, t.Any]]) -> None:
    conflicts = [conflict for result in results for conflict in result["conflicts"]]
    if results and results[0]["conflict_policy"] == "fail" and conflicts:
        listed = "; ".join(f"{conflict['path']} ({conflict['why']})" for conflict in conflicts)
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
    if exc.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0 and not dropped_privileges():
        where += f" (running as uid {os.geteuid()}: run the start step as root, e.g. RAILWAY_RUN_UID=0 on Railway)"
    return f"{cause}{where}; everything not yet in the volume is still at its path, fix the cause and rerun ({exc})"
