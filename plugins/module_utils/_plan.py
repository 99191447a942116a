# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read the filesystem (never writing, never following links) and plan every link as data.

Private to the agor.persistence collection.  The same plan serves check mode, diff mode, the
audit report and the real run, which executes the steps in order (see _apply).
"""

from __future__ import annotations

import os
import typing as t
from dataclasses import dataclass, field

from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils._spec import (
    META_DIR_NAME,
    AgentStateLinkError,
    Job,
    LinkSpec,
)

# Step actions, in the order a link's steps run.
BACKUP_VOLUME_ENTRY = "backup_volume_entry"  # a link or wrong-kind entry stands where a target (or its parent) goes
CREATE_DIRECTORY = "create_directory"        # a missing target or parent below the volume
SET_OWNER = "set_owner"                      # an existing target owned by somebody else (not recursive)
CREATE_HOME_DIRECTORY = "create_home_directory"  # a missing parent of the state path
MOVE = "move"                                # home entry -> volume (rename, or copy+verify+remove)
BACKUP = "backup"                            # conflicting home entry -> backup location in the volume
DROP_DUPLICATE = "drop_duplicate"            # home entry already identical in the volume: remove it
SEED = "seed"                                # image default -> empty target
CREATE_FILE = "create_file"                  # file target from initial_content
LINK = "link"                                # the state path becomes the symlink
RESTORE = "restore"                          # state=absent: copy of the target back at the path
CREATE_EMPTY = "create_empty"                # state=absent: empty directory at the path
REMOVE_LINK = "remove_link"                  # state=absent: a link whose file target never existed

CONFLICT_ACTIONS = (BACKUP_VOLUME_ENTRY, BACKUP)
MIGRATION_ACTIONS = (MOVE, BACKUP, DROP_DUPLICATE)


@dataclass(frozen=True)
class Step:
    action: str
    path: str
    dest: str = ""
    # For drop_duplicate: the source's identity when it was compared, re-checked before removal.
    identity: t.Optional[_fs.Identity] = None

    def as_dict(self) -> t.Dict[str, str]:
        result = {"action": self.action, "path": self.path}
        if self.dest:
            result["dest"] = self.dest
        return result


@dataclass
class LinkPlan:
    link: LinkSpec
    store: str          # where the content lives for this run: the target, or its place in the seed store
    before: str         # what stood at the path: missing, directory, file, other, or "link to X"
    target_before: str  # what stood at the target
    steps: t.List[Step] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def actions(self) -> t.List[str]:
        seen: t.List[str] = []
        for step in self.steps:
            if step.action not in seen:
                seen.append(step.action)
        return seen

    def conflicts(self) -> t.List[Step]:
        return [step for step in self.steps if step.action in CONFLICT_ACTIONS]


@dataclass
class JobPlan:
    job: Job
    links: t.List[LinkPlan]
    backup_dir: str
    volume_owner: t.Optional[t.Tuple[int, int]] = None  # set when the volume root must be re-owned

    @property
    def changed(self) -> bool:
        return self.volume_owner is not None or any(plan.changed for plan in self.links)


def describe_at(dir_fd: t.Optional[int], name: str) -> str:
    if dir_fd is None:
        return "missing"
    st = _fs.lstat_at(dir_fd, name)
    kind = _fs.kind_of(st)
    if kind == "link":
        return f"link to {os.readlink(name, dir_fd=dir_fd)}"
    return kind


def backup_location(backup_dir: str, path: str) -> str:
    return os.path.join(backup_dir, path.lstrip("/"))


class Planner:
    """Plans one job.  Holds the anchor descriptors it opened; close() releases them."""

    def __init__(self, job: Job, backup_dir: str) -> None:
        self.job = job
        self.backup_dir = backup_dir
        self.store_root = job.seed_store if job.state == "prepared" else job.volume
        self._anchors: t.Dict[str, t.Optional[int]] = {}
        # Directories created or entries backed up by an earlier link's steps: links can share
        # parents (e.g. users/<name>/ in the volume), and each change must be planned once.
        self._shared: t.Set[t.Tuple[str, str]] = set()

    def close(self) -> None:
        for fd in self._anchors.values():
            if fd is not None:
                os.close(fd)
        self._anchors.clear()

    def anchor(self, path: str) -> t.Optional[int]:
        if path not in self._anchors:
            self._anchors[path] = _fs.open_anchor(path)
        return self._anchors[path]

    def meta_fd(self) -> t.Optional[int]:
        """The store's bookkeeping directory, when it exists and nobody but us could have written it."""
        key = os.path.join(self.store_root, META_DIR_NAME)
        if key not in self._anchors:
            root_fd = self.anchor(self.store_root)
            self._anchors[key] = None if root_fd is None else _fs.open_private_dir(root_fd, META_DIR_NAME)
        return self._anchors[key]

    def _once(self, step: Step) -> t.List[Step]:
        """The step, unless an earlier link already planned it."""
        key = (step.action, step.path)
        if key in self._shared:
            return []
        self._shared.add(key)
        return [step]

    def store_path(self, link: LinkSpec) -> str:
        return os.path.join(self.store_root, self.job.relative_target(link))

    def plan(self) -> JobPlan:
        plans = [self._plan_link(link) for link in self.job.links]
        result = JobPlan(job=self.job, links=plans, backup_dir=self.backup_dir)
        if self.job.manage_volume_root and self.job.state == "present":
            st = os.fstat(self._require_anchor(self.job.volume, "volume"))
            if (st.st_uid, st.st_gid) != (self.job.uid, self.job.gid):
                result.volume_owner = (self.job.uid, self.job.gid)
        return result

    def _require_anchor(self, path: str, name: str) -> int:
        fd = self.anchor(path)
        if fd is None:
            raise AgentStateLinkError(f"{name}: {path} does not exist")
        return fd

    def _plan_link(self, link: LinkSpec) -> LinkPlan:
        home_dir, name = os.path.split(link.path)
        home_fd = self.anchor(home_dir)
        plan = LinkPlan(link=link, store=self.store_path(link), before=describe_at(home_fd, name), target_before="missing")
        if self.job.state == "absent":
            self._plan_absent(plan, home_fd, name)
        else:
            self._plan_present(plan, home_fd, name)
        return plan

    # -- state=present / prepared ------------------------------------------------------------

    def _plan_present(self, plan: LinkPlan, home_fd: t.Optional[int], name: str) -> None:
        link = plan.link
        home_kind = "link" if plan.before.startswith("link to ") else plan.before  # described once, in _plan_link
        if self.job.state == "prepared" and home_kind not in ("directory", "file"):
            # Image build with nothing to keep: only the (dangling) link is made, no seed entry.
            store_exists = False
            plan.target_before = "not inspected (state=prepared)"
        else:
            store_exists = self._plan_store(plan)
        if home_fd is None:
            plan.steps.extend(self._missing_directories(os.path.dirname(link.path), CREATE_HOME_DIRECTORY))
        migrated = False
        if plan.before == f"link to {link.target}":
            home_kind = "link"  # already in place: nothing to migrate or relink, the target may still need content
        if home_kind == link.kind:
            migrated = self._plan_migration(plan, home_fd, name, store_exists)
        elif home_kind == "other":
            self._refuse_unmovable(home_fd, name, os.path.dirname(link.path))
        elif home_kind in ("directory", "file"):
            plan.steps.extend(self._plan_backup(home_fd, name, link.path))
        if not migrated and self.job.state == "present":
            plan.steps.extend(self._plan_fill(plan, store_exists))
        if plan.before != f"link to {link.target}":
            plan.steps.append(Step(LINK, link.path, link.target))

    def _plan_store(self, plan: LinkPlan) -> bool:
        """Plan the target chain below the store root; return whether the target already exists."""
        link = plan.link
        root_fd = self.anchor(self.store_root)
        if root_fd is None:
            if self.job.state == "present":
                raise AgentStateLinkError(f"volume: {self.job.volume} does not exist")
            plan.steps.extend(self._missing_directories(self.store_root, CREATE_DIRECTORY))
        parts = self.job.relative_target(link).split("/")
        fd = None if root_fd is None else os.dup(root_fd)
        current = self.store_root
        try:
            for index, part in enumerate(parts):
                current = os.path.join(current, part)
                is_target = index == len(parts) - 1
                st = None if fd is None else _fs.lstat_at(fd, part)
                kind = _fs.kind_of(st)
                if is_target:
                    # describe_at(fd, part), from the status just taken
                    plan.target_before = f"link to {os.readlink(part, dir_fd=fd)}" if kind == "link" and fd is not None else kind
                wanted = link.kind if is_target else "directory"
                if kind not in ("missing", wanted):
                    plan.steps.extend(self._once(Step(BACKUP_VOLUME_ENTRY, current, self._free_backup_location(current))))
                    kind = "missing"
                if kind == "missing":
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    if not is_target or link.kind == "directory":
                        plan.steps.extend(self._once(Step(CREATE_DIRECTORY, current)))
                    continue
                if is_target:
                    if st is None or fd is None:
                        raise AssertionError("target reached without its status")
                    if (st.st_uid, st.st_gid) != (link.uid, link.gid):
                        plan.steps.append(Step(SET_OWNER, current))
                    return True
                next_fd = _fs.open_dir_at(fd, part)
                os.close(fd)
                fd = next_fd
            return False
        finally:
            if fd is not None:
                os.close(fd)

    def _missing_directories(self, path: str, action: str) -> t.List[Step]:
        """Steps creating ``path`` and its missing ancestors, outermost first."""
        missing: t.List[str] = []
        while self.anchor(path) is None:
            missing.insert(0, path)
            path = os.path.dirname(path)
        return [step for directory in missing for step in self._once(Step(action, directory))]

    def _plan_migration(self, plan: LinkPlan, home_fd: t.Optional[int], name: str, store_exists: bool) -> bool:
        """Plan moving the home copy into the store; return True when anything moves in."""
        if home_fd is None:
            raise AssertionError("migration planned without the home directory")
        link = plan.link
        if link.kind == "file":
            if not store_exists:
                plan.steps.append(Step(MOVE, link.path, plan.store))
                st = _fs.lstat_at(home_fd, name)
                if st is not None and (st.st_uid, st.st_gid) != (link.uid, link.gid):
                    # The moved file is the target now: owned by the link's owner, or the next run re-owns it.
                    plan.steps.append(Step(SET_OWNER, plan.store))
                return True
            plan.steps.extend(self._plan_entry(home_fd, name, link.path, plan.store))
            return False
        store_fd = self._open_store(plan) if store_exists else None
        try:
            src_fd = _fs.open_dir_at(home_fd, name)
            try:
                steps = self._plan_dir_merge(src_fd, store_fd, link.path, plan.store)
            finally:
                os.close(src_fd)
        finally:
            if store_fd is not None:
                os.close(store_fd)
        plan.steps.extend(steps)
        return any(step.action == MOVE for step in steps)

    def _open_store(self, plan: LinkPlan) -> int:
        fd = _fs.walk_at(self._require_anchor(self.store_root, "volume"), self.job.relative_target(plan.link).split("/"))
        if fd is None:  # removed by somebody else since it was seen: refuse, nothing changed yet
            raise AgentStateLinkError(f"{self.store_path(plan.link)}: vanished while the run was planned; rerun")
        return fd

    def _plan_dir_merge(self, src_fd: int, dst_fd: t.Optional[int], src_path: str, dst_path: str) -> t.List[Step]:
        steps: t.List[Step] = []
        for entry in _fs.walk_merge(src_fd, dst_fd):  # walks into the directories both hold, however deep
            src_child, dst_child = os.path.join(src_path, *entry.parts), os.path.join(dst_path, *entry.parts)
            if entry.dst_kind == "missing":
                self._refuse_unmovable(entry.src_dir, entry.name, os.path.dirname(src_child))
                steps.append(Step(MOVE, src_child, dst_child))
            else:
                steps.extend(self._plan_entry(entry.src_dir, entry.name, src_child, dst_child, entry.dst_dir))
        return steps

    def _plan_entry(
        self, src_fd: int, name: str, src_path: str, dst_path: str, dst_fd: t.Optional[int] = None,
    ) -> t.List[Step]:
        """Plan a home entry whose name exists in the store: recurse, drop a duplicate, or back up."""
        if dst_fd is None:
            parent_fd = self._open_parent_in_store(dst_path)
            try:
                return self._plan_entry(src_fd, name, src_path, dst_path, parent_fd)
            finally:
                os.close(parent_fd)
        steps = self._plan_existing(src_fd, name, src_path, dst_fd, os.path.basename(dst_path), dst_path)
        return self._plan_backup(src_fd, name, src_path) if steps is None else steps

    def _plan_existing(
        self, src_fd: int, name: str, src_path: str, dst_fd: int, dst_name: str, dst_path: str,
    ) -> t.Optional[t.List[Step]]:
        """Plan a home entry against an existing entry of the same name: merge two directories or
        drop an identical duplicate.  None when they conflict."""
        src_st = _fs.lstat_at(src_fd, name)
        src_kind, dst_kind = _fs.kind_of(src_st), _fs.kind_of(_fs.lstat_at(dst_fd, dst_name))
        if src_kind == "other":
            self._refuse_unmovable(src_fd, name, os.path.dirname(src_path))
        if src_kind == dst_kind == "directory":
            src_child_fd = _fs.open_dir_at(src_fd, name)
            try:
                dst_child_fd = _fs.open_dir_at(dst_fd, dst_name)
                try:
                    return self._plan_dir_merge(src_child_fd, dst_child_fd, src_path, dst_path)
                finally:
                    os.close(dst_child_fd)
            finally:
                os.close(src_child_fd)
        if src_st is not None and _fs.same_content_at(src_fd, name, dst_fd, dst_name):
            return [Step(DROP_DUPLICATE, src_path, dst_path, _fs.identity(src_st))]
        return None

    @staticmethod
    def _refuse_unmovable(parent_fd: int, name: str, parent_path: str) -> None:
        """Refuse, before any change, a tree holding what cannot be copied to another filesystem."""
        found = _fs.find_unmovable(parent_fd, name)
        if found is not None:
            raise AgentStateLinkError(
                f"{os.path.join(parent_path, found)}: is a socket, FIFO or device; move it away, it cannot be migrated"
            )

    def _open_parent_in_store(self, path: str) -> int:
        rel = os.path.relpath(os.path.dirname(path), self.store_root)
        fd = _fs.walk_at(self._require_anchor(self.store_root, "volume"), [] if rel == "." else rel.split("/"))
        if fd is None:
            raise AgentStateLinkError(f"{path}: parent vanished while planning; rerun")
        return fd

    def _plan_backup(self, src_fd: int, name: str, src_path: str) -> t.List[Step]:
        """Back up a home entry; an earlier interrupted run's partial backup is completed, not repeated."""
        dest = backup_location(self.backup_dir, src_path)
        parent_fd = self._backup_parent(dest)
        if parent_fd is None or _fs.lstat_at(parent_fd, name) is None:
            if parent_fd is not None:
                os.close(parent_fd)
            self._refuse_unmovable(src_fd, name, os.path.dirname(src_path))
            return [Step(BACKUP, src_path, dest)]
        try:
            steps = self._plan_existing(src_fd, name, src_path, parent_fd, name, dest)
        finally:
            os.close(parent_fd)
        if steps is None:  # an earlier run that failed left other content there: never refuse (every rerun would)
            self._refuse_unmovable(src_fd, name, os.path.dirname(src_path))
            return [Step(BACKUP, src_path, self._free_backup_location(src_path))]
        return steps

    def _backup_parent(self, dest: str) -> t.Optional[int]:
        """The directory a backup goes to, when it exists already (an unfinished run's backup)."""
        rel_parts = os.path.relpath(os.path.dirname(dest), os.path.join(self.store_root, META_DIR_NAME)).split("/")
        meta_fd = self.meta_fd()
        return None if meta_fd is None else _fs.walk_at(meta_fd, rel_parts)

    def _free_backup_location(self, path: str) -> str:
        """``path``'s place in the backup directory or, when a run that failed before finishing
        (its backup directory is reused, see _engine) left something there, the first free
        ``<place>.<n>``: found by tests/reliability/test_hostile_volume.py, where a link planted
        again after a failed run made every later run refuse."""
        dest = backup_location(self.backup_dir, path)
        parent_fd = self._backup_parent(dest)
        if parent_fd is None:
            return dest
        name, number = os.path.basename(dest), 0
        try:
            while _fs.lstat_at(parent_fd, f"{name}.{number}" if number else name) is not None:
                number += 1
        finally:
            os.close(parent_fd)
        return f"{dest}.{number}" if number else dest

    def _plan_fill(self, plan: LinkPlan, store_exists: bool) -> t.List[Step]:
        """Give an empty target its first content: the image's defaults, else initial_content."""
        link = plan.link
        if store_exists and link.kind == "file":
            return []
        seed = self._seed_steps(plan)
        if store_exists:
            # Only an empty directory is filled, and only from a seed: without one (the usual case
            # at every start) its content need not be looked at.
            return seed if seed and self._store_is_empty(plan) else []
        if seed:
            return seed
        if link.kind == "file" and link.initial_content is not None:
            return [Step(CREATE_FILE, plan.store)]
        return []

    def _store_is_empty(self, plan: LinkPlan) -> bool:
        fd = self._open_store(plan)
        try:
            return _fs.is_empty_dir(fd)
        finally:
            os.close(fd)

    def _seed_steps(self, plan: LinkPlan) -> t.List[Step]:
        if self.job.seed_store is None:
            return []
        seed_fd = self.anchor(self.job.seed_store)
        parts = self.job.relative_target(plan.link).split("/")
        parent_fd = None if seed_fd is None else _fs.walk_at(seed_fd, parts[:-1])
        if parent_fd is None:
            return []
        try:
            name = parts[-1]
            kind = _fs.kind_of(_fs.lstat_at(parent_fd, name))
            seed_path = os.path.join(self.job.seed_store, *parts)
            if kind != plan.link.kind:
                return []
            if kind == "file":
                return [Step(SEED, seed_path, plan.store)]
            fd = _fs.open_dir_at(parent_fd, name)
            try:
                names = sorted(_fs.list_dir(fd))
            finally:
                os.close(fd)
            return [Step(SEED, os.path.join(seed_path, child), os.path.join(plan.store, child)) for child in names]
        finally:
            os.close(parent_fd)

    # -- state=absent ---------------------------------------------------------------------

    def _plan_absent(self, plan: LinkPlan, home_fd: t.Optional[int], name: str) -> None:
        link = plan.link
        root_fd = self.anchor(self.job.volume)
        parts = self.job.relative_target(link).split("/")
        parent_fd = None if root_fd is None else _fs.walk_at(root_fd, parts[:-1])
        try:
            plan.target_before = describe_at(parent_fd, parts[-1])
        finally:
            if parent_fd is not None:
                os.close(parent_fd)
        ours = plan.before == "missing" or (plan.before.startswith("link to ") and _points_to(plan.before, link.target))
        if not ours:
            return  # a real directory or file already, or a link this module did not make: leave it
        if plan.before == "missing" and plan.target_before != link.kind:
            return
        if home_fd is None:
            plan.steps.extend(self._missing_directories(os.path.dirname(link.path), CREATE_HOME_DIRECTORY))
        if plan.target_before == link.kind:
            plan.steps.append(Step(RESTORE, link.path, link.target))
        elif link.kind == "directory":
            plan.steps.append(Step(CREATE_EMPTY, link.path))
        elif plan.before != "missing":
            plan.steps.append(Step(REMOVE_LINK, link.path))


def _points_to(description: str, target: str) -> bool:
    return os.path.normpath(description[len("link to "):]) == target
