# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Read the filesystem (never writing, never following links) and plan every link as data.

Private to the agor.persistence collection.  The same plan serves check mode, diff mode, the
audit report and the real run, which executes the steps in plan order (see _apply).

Planning runs as the account that owns the links it plans (see _privsep): it reads only what that
account can read, and a directory on the way to a target that another account could write or own
is refused, never entered.
"""

from __future__ import annotations

import enum
import os
import stat
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _bookkeeping as B
from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils._spec import (
    META_DIR_NAME,
    AgentStateLinkError,
    Job,
    LinkSpec,
)


class Action(str, enum.Enum):
    """What a step does, listed in the order a link's steps run."""

    BACKUP_VOLUME_ENTRY = "backup_volume_entry"      # a link or wrong-kind entry stands where a target (or its parent) goes
    CREATE_DIRECTORY = "create_directory"            # a missing target or parent below the territory's root
    SET_GROUP = "set_group"                          # an existing target of the link's owner with another group
    CREATE_HOME_DIRECTORY = "create_home_directory"  # a missing parent of the state path
    MOVE = "move"                                    # home entry -> store (rename, or copy+verify+remove)
    BACKUP = "backup"                                # conflicting home entry -> backup location
    DROP_DUPLICATE = "drop_duplicate"                # home entry already identical in the store: remove it
    SEED = "seed"                                    # image default -> empty target
    CREATE_FILE = "create_file"                      # file target from initial_content
    LINK = "link"                                    # the state path becomes the symlink
    CLEAR_RESTORE = "clear_restore"                  # state=absent: an interrupted restore's leftover copy
    RESTORE = "restore"                              # state=absent: copy of the target back at the path
    CREATE_EMPTY = "create_empty"                    # state=absent: empty directory at the path
    REMOVE_LINK = "remove_link"                      # state=absent: a link whose file target never existed

    def __str__(self) -> str:
        return self.value


CONFLICT_ACTIONS = (Action.BACKUP_VOLUME_ENTRY, Action.BACKUP)
# Moves run as one batch per link, so that one sync covers every copy of the batch.
BATCHED_ACTIONS = (Action.MOVE, Action.BACKUP)


class Kind(str, enum.Enum):
    MISSING = "missing"
    DIRECTORY = "directory"
    FILE = "file"
    LINK = "link"
    OTHER = "other"  # a socket, FIFO or device


class Entry(t.NamedTuple):
    """What stands at a path: its kind, and for a symlink the text it holds."""

    kind: Kind
    link_text: str = ""

    def __str__(self) -> str:
        return f"link to {self.link_text}" if self.kind is Kind.LINK else self.kind.value

    def points_to(self, target: str) -> bool:
        return self.kind is Kind.LINK and os.path.normpath(self.link_text) == target


MISSING = Entry(Kind.MISSING)


def entry_at(dir_fd: t.Optional[int], name: str) -> Entry:
    if dir_fd is None:
        return MISSING
    kind = Kind(_fs.kind_of(_fs.lstat_at(dir_fd, name)))
    return Entry(kind, os.readlink(name, dir_fd=dir_fd) if kind is Kind.LINK else "")


class Step(t.NamedTuple):
    action: Action
    path: str
    dest: str = ""
    # For drop_duplicate: the source's identity when it was compared, re-checked before removal.
    # For restore: the link's identity when it was planned, re-checked before it is replaced.
    identity: t.Optional[_fs.Identity] = None

    def as_dict(self) -> t.Dict[str, str]:
        result = {"action": self.action.value, "path": self.path}
        if self.dest:
            result["dest"] = self.dest
        return result


class Territory(t.NamedTuple):
    """The links of one account, and where below the store root it keeps them: the store root
    itself for the store root's owner, ``users/<name>`` for any other account."""

    uid: int
    gid: int
    parts: t.Tuple[str, ...]
    links: t.Tuple[LinkSpec, ...]


class LinkPlan:
    """What to do for one link: planned first, then shown (check mode, diff, audit) or applied."""

    __slots__ = ("link", "store", "before", "target_before", "steps")

    def __init__(self, link: LinkSpec, store: str, before: Entry, target_before: t.Optional[Entry]) -> None:
        self.link = link
        self.store = store  # where the content lives for this run: the target, or its place in the seed store
        self.before = before  # what stood at the path
        self.target_before = target_before  # what stood at the target; None when not inspected (prepared, nothing to keep)
        self.steps: t.List[Step] = []

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def actions(self) -> t.List[str]:
        seen: t.List[str] = []
        for step in self.steps:
            if step.action.value not in seen:
                seen.append(step.action.value)
        return seen

    def conflicts(self) -> t.List[Step]:
        return [step for step in self.steps if step.action in CONFLICT_ACTIONS]


class TerritoryPlan:
    """The plans of one account's links."""

    __slots__ = ("job", "territory", "links", "backup_dir")

    def __init__(self, job: Job, territory: Territory, links: t.List[LinkPlan], backup_dir: str) -> None:
        self.job = job
        self.territory = territory
        self.links = links
        self.backup_dir = backup_dir

    @property
    def changed(self) -> bool:
        return any(plan.changed for plan in self.links)


def backup_location(backup_dir: str, path: str) -> str:
    return os.path.join(backup_dir, path.lstrip("/"))


def _first_name(dir_fd: int, name: str, usable: t.Callable[[t.Optional[os.stat_result]], bool]) -> t.Tuple[str, t.Optional[os.stat_result]]:
    """``name``, else the first ``<name>.<n>`` in ``dir_fd`` whose entry (None: missing) is usable; with that entry."""
    candidate, number = name, 0
    st = _fs.lstat_at(dir_fd, candidate)
    while not usable(st):
        number += 1
        candidate = f"{name}.{number}"
        st = _fs.lstat_at(dir_fd, candidate)
    return candidate, st


def _free_place(parent_fd: int, dest: str) -> str:
    """``dest``, or the first ``<dest>.<n>`` free in ``parent_fd`` (its directory)."""
    name, _st = _first_name(parent_fd, os.path.basename(dest), lambda st: st is None)
    return os.path.join(os.path.dirname(dest), name)


def open_territory(job: Job, territory: Territory) -> t.Optional[int]:
    """Open the territory's root below the store root, checking that the account may trust it:
    ``users`` owned by root and writable by nobody else, ``users/<name>`` owned by the account.
    None when it does not exist yet (check mode, or a first image build)."""
    store_fd = _fs.open_anchor(job.store_root)
    if store_fd is None:
        return None
    fd = store_fd
    try:
        path = job.store_root
        for index, part in enumerate(territory.parts):
            path = os.path.join(path, part)
            try:
                next_fd = _fs.open_dir_at(fd, part)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = next_fd
            owner = territory.uid if index == len(territory.parts) - 1 else 0
            check_safe_dir(fd, path, (owner,))
        return fd
    except BaseException:
        os.close(fd)
        raise


def check_safe_dir(fd: int, path: str, owners: t.Sequence[int]) -> None:
    """Refuse a directory on the way to a target that another account owns or can write."""
    st = os.fstat(fd)
    if st.st_uid not in owners or st.st_mode & 0o022:
        allowed = " or ".join(f"uid {uid}" for uid in owners)
        raise AgentStateLinkError(
            f"{path}: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):04o}; a directory on the way to a "
            f"target must be owned by {allowed} and writable by nobody else (another account could redirect the "
            "state there); fix its owner and mode or move it away"
        )


class Planner:
    """Plans one territory.  Holds the descriptors it opened; close() releases them."""

    def __init__(self, job: Job, territory: Territory, territory_fd: t.Optional[int], backup_dir: str) -> None:
        self.job = job
        self.territory = territory
        self.backup_dir = backup_dir
        self.store_root = job.store_root
        self.territory_root = os.path.join(job.store_root, *territory.parts)
        self.territory_fd = territory_fd
        self.meta_path = os.path.join(self.territory_root, META_DIR_NAME)
        self._anchors: t.Dict[str, t.Optional[int]] = {}
        # Directories created or entries backed up by an earlier link's steps: links can share
        # parents (e.g. .local/ for .local/share/opencode), and each change must be planned once.
        self._shared: t.Set[t.Tuple[Action, str]] = set()

    def close(self) -> None:
        for fd in self._anchors.values():
            if fd is not None:
                os.close(fd)
        self._anchors.clear()

    def __enter__(self) -> "Planner":
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    def anchor(self, path: str) -> t.Optional[int]:
        if path not in self._anchors:
            self._anchors[path] = _fs.open_anchor(path)
        return self._anchors[path]

    def meta_fd(self) -> t.Optional[int]:
        """The territory's bookkeeping directory, when it exists and nobody but us could have written it."""
        if self.meta_path not in self._anchors:
            self._anchors[self.meta_path] = B.open_meta(self.territory_fd)
        return self._anchors[self.meta_path]

    def _once(self, step: Step) -> t.List[Step]:
        """The step, unless an earlier link already planned it."""
        key = (step.action, step.path)
        if key in self._shared:
            return []
        self._shared.add(key)
        return [step]

    def store_path(self, link: LinkSpec) -> str:
        return os.path.join(self.store_root, self.job.relative_target(link))

    def territory_parts(self, link: LinkSpec) -> t.List[str]:
        """The target's path components below the territory's root."""
        return self.job.relative_target(link).split("/")[len(self.territory.parts):]

    def plan(self) -> TerritoryPlan:
        plans = [self._plan_link(link) for link in self.territory.links]
        return TerritoryPlan(job=self.job, territory=self.territory, links=plans, backup_dir=self.backup_dir)

    def _plan_link(self, link: LinkSpec) -> LinkPlan:
        home_dir, name = os.path.split(link.path)
        home_fd = self.anchor(home_dir)
        plan = LinkPlan(link=link, store=self.store_path(link), before=entry_at(home_fd, name), target_before=MISSING)
        if plan.before.kind in (Kind.DIRECTORY, Kind.FILE) and _fs.is_mount_point_at(t.cast(int, home_fd), name):
            raise AgentStateLinkError(
                f"{link.field_name('path')}: {link.path} is a mount point; it cannot be moved into the volume or replaced "
                "by a link: unmount it, or drop this link"
            )
        if self.job.state == "absent":
            self._plan_absent(plan, home_fd, name)
        else:
            self._plan_present(plan, home_fd, name)
        return plan

    # -- state=present / prepared ------------------------------------------------------------

    def _plan_present(self, plan: LinkPlan, home_fd: t.Optional[int], name: str) -> None:
        link = plan.link
        in_place = plan.before.points_to(link.target)
        home_kind = plan.before.kind
        if self.job.state == "prepared" and home_kind not in (Kind.DIRECTORY, Kind.FILE):
            # Image build with nothing to keep: only the (dangling) link is made, no seed entry.
            store_exists = False
            plan.target_before = None
        else:
            store_exists = self._plan_store(plan)
        if home_fd is None:
            plan.steps.extend(self._missing_directories(os.path.dirname(link.path), Action.CREATE_HOME_DIRECTORY))
        migrated = False
        if home_kind.value == link.kind and not in_place:
            migrated = self._plan_migration(plan, home_fd, name, store_exists)
        elif home_kind is Kind.OTHER:
            self._refuse_unmovable(home_fd, name, os.path.dirname(link.path))
        elif home_kind in (Kind.DIRECTORY, Kind.FILE):
            plan.steps.extend(self._plan_backup(home_fd, name, link.path))
        if not migrated and self.job.state == "present":
            plan.steps.extend(self._plan_fill(plan, store_exists))
        if link.kind == "file" and home_fd is not None:
            plan.steps.extend(self._plan_swapped_out(plan, home_fd, name))
        if not in_place:
            plan.steps.append(Step(Action.LINK, link.path, link.target))

    def _plan_store(self, plan: LinkPlan) -> bool:
        """Plan the target chain below the territory's root; return whether the target already exists."""
        link = plan.link
        parts = self.territory_parts(link)
        fd = None if self.territory_fd is None else os.dup(self.territory_fd)
        current = self.territory_root
        try:
            for index, part in enumerate(parts):
                current = os.path.join(current, part)
                is_target = index == len(parts) - 1
                st = None if fd is None else _fs.lstat_at(fd, part)
                entry = MISSING if fd is None else entry_at(fd, part)
                if is_target:
                    plan.target_before = entry
                wanted = Kind(link.kind) if is_target else Kind.DIRECTORY
                if is_target and entry.kind in (Kind.DIRECTORY, Kind.FILE) and _fs.is_mount_point_at(t.cast(int, fd), part):
                    raise AgentStateLinkError(
                        f"{link.field_name('target')}: {current} is a mount point; a target must be an ordinary entry of the "
                        "volume (mount the volume at or above the target's parent instead)"
                    )
                if entry.kind not in (Kind.MISSING, wanted):
                    plan.steps.extend(self._once(Step(Action.BACKUP_VOLUME_ENTRY, current, self._free_backup_location(current))))
                    st = None
                if st is None:
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    if not is_target or link.kind == "directory":
                        plan.steps.extend(self._once(Step(Action.CREATE_DIRECTORY, current)))
                    continue
                if st.st_uid != link.uid:
                    raise AgentStateLinkError(
                        f"{link.field_name('target')}: {current} is owned by uid {st.st_uid}, not by the link's owner uid "
                        f"{link.uid}: it was made or moved there by another account; move it away (or give it to uid "
                        f"{link.uid}) and rerun"
                    )
                if is_target:
                    if st.st_gid != link.gid:
                        plan.steps.append(Step(Action.SET_GROUP, current))
                    return True
                next_fd = _fs.open_dir_at(t.cast(int, fd), part)
                os.close(t.cast(int, fd))
                fd = next_fd
                check_safe_dir(fd, current, (0, t.cast(int, link.uid)))
            return False
        finally:
            if fd is not None:
                os.close(fd)

    def _plan_swapped_out(self, plan: LinkPlan, home_fd: int, name: str) -> t.List[Step]:
        """A state file a killed run had swapped out for its link (see _apply's _move_state_file)
        stands beside the path under the temporary link's name: dropped when the volume holds the
        same bytes, else backed up."""
        leftover = _fs.stale_link_name(name)
        if entry_at(home_fd, leftover).kind is not Kind.FILE:
            return []
        leftover_path = os.path.join(os.path.dirname(plan.link.path), leftover)
        parts = self.territory_parts(plan.link)
        parent_fd = None if self.territory_fd is None else _fs.walk_at(self.territory_fd, parts[:-1])
        if parent_fd is None:
            return self._plan_backup(home_fd, leftover, leftover_path)
        try:
            steps = self._plan_existing(home_fd, leftover, leftover_path, parent_fd, parts[-1], plan.store)
        finally:
            os.close(parent_fd)
        return self._plan_backup(home_fd, leftover, leftover_path) if steps is None else steps

    def _missing_directories(self, path: str, action: Action) -> t.List[Step]:
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
                plan.steps.append(Step(Action.MOVE, link.path, plan.store))
                return True
            plan.steps.extend(self._plan_entry(home_fd, name, link.path, plan.store))
            return False
        store_fd = self._open_store(plan) if store_exists else None
        try:
            steps = self._plan_dir_merge(home_fd, name, store_fd, link.path, plan.store)
        finally:
            if store_fd is not None:
                os.close(store_fd)
        plan.steps.extend(steps)
        return any(step.action is Action.MOVE for step in steps)

    def _open_store(self, plan: LinkPlan) -> int:
        fd = None if self.territory_fd is None else _fs.walk_at(self.territory_fd, self.territory_parts(plan.link))
        if fd is None:  # removed by somebody else since it was seen: refuse, nothing changed yet
            raise AgentStateLinkError(f"{self.store_path(plan.link)}: vanished while the run was planned; rerun")
        return fd

    def _plan_dir_merge(
        self, parent_fd: int, name: str, dst_fd: t.Optional[int], src_path: str, dst_path: str,
    ) -> t.List[Step]:
        """Plan merging the home directory ``name`` into the store directory ``dst_fd``: moves and
        backups first, in the order found, then the duplicates to drop (the order they run in).
        Directories both hold are walked into however deep (see _fs.walk_merge)."""
        moves: t.List[Step] = []
        drops: t.List[Step] = []
        src_fd = _fs.open_dir_at(parent_fd, name)
        try:
            for entry in _fs.walk_merge(src_fd, dst_fd):
                src_child, dst_child = os.path.join(src_path, *entry.parts), os.path.join(dst_path, *entry.parts)
                if entry.dst_kind == "missing":
                    self._refuse_unmovable(entry.src_dir, entry.name, os.path.dirname(src_child))
                    moves.append(Step(Action.MOVE, src_child, dst_child))
                    continue
                src_st = _fs.lstat_at(entry.src_dir, entry.name)
                if Kind(_fs.kind_of(src_st)) is Kind.OTHER:
                    self._refuse_unmovable(entry.src_dir, entry.name, os.path.dirname(src_child))
                if src_st is not None and _fs.same_content_at(entry.src_dir, entry.name, t.cast(int, entry.dst_dir), entry.name):
                    drops.append(Step(Action.DROP_DUPLICATE, src_child, dst_child, _fs.identity(src_st)))
                    continue
                for step in self._plan_backup(entry.src_dir, entry.name, src_child):
                    (drops if step.action is Action.DROP_DUPLICATE else moves).append(step)
        finally:
            os.close(src_fd)
        return moves + drops

    def _plan_entry(self, src_fd: int, name: str, src_path: str, dst_path: str) -> t.List[Step]:
        """Plan a home entry whose name exists in the store: merge, drop a duplicate, or back up."""
        parent_fd = self._open_parent_in_territory(dst_path)
        try:
            steps = self._plan_existing(src_fd, name, src_path, parent_fd, os.path.basename(dst_path), dst_path)
        finally:
            os.close(parent_fd)
        return self._plan_backup(src_fd, name, src_path) if steps is None else steps

    def _plan_existing(
        self, src_fd: int, name: str, src_path: str, dst_fd: int, dst_name: str, dst_path: str,
    ) -> t.Optional[t.List[Step]]:
        """Plan a home entry against an existing entry of the same name: merge two directories or
        drop an identical duplicate.  None when they conflict."""
        src_st = _fs.lstat_at(src_fd, name)
        src_kind, dst_kind = Kind(_fs.kind_of(src_st)), entry_at(dst_fd, dst_name).kind
        if src_kind is Kind.OTHER:
            self._refuse_unmovable(src_fd, name, os.path.dirname(src_path))
        if src_kind is dst_kind is Kind.DIRECTORY:
            dst_child_fd = _fs.open_dir_at(dst_fd, dst_name)
            try:
                return self._plan_dir_merge(src_fd, name, dst_child_fd, src_path, dst_path)
            finally:
                os.close(dst_child_fd)
        if src_st is not None and _fs.same_content_at(src_fd, name, dst_fd, dst_name):
            return [Step(Action.DROP_DUPLICATE, src_path, dst_path, _fs.identity(src_st))]
        return None

    @staticmethod
    def _refuse_unmovable(parent_fd: t.Optional[int], name: str, parent_path: str) -> None:
        """Refuse, before any change, a tree holding what cannot be copied to another filesystem."""
        found = None if parent_fd is None else _fs.find_unmovable(parent_fd, name)
        if found is not None:
            raise AgentStateLinkError(
                f"{os.path.join(parent_path, found)}: is a socket, FIFO or device; move it away, it cannot be migrated"
            )

    def _open_parent_in_territory(self, path: str) -> int:
        rel = os.path.relpath(os.path.dirname(path), self.territory_root)
        fd = None if self.territory_fd is None else _fs.walk_at(self.territory_fd, [] if rel == "." else rel.split("/"))
        if fd is None:
            raise AgentStateLinkError(f"{path}: parent vanished while planning; rerun")
        return fd

    def _plan_backup(self, src_fd: int, name: str, src_path: str) -> t.List[Step]:
        """Back up a home entry; an earlier interrupted run's partial backup is completed, not repeated."""
        dest, parent_fd = self._backup_place(src_path)
        if parent_fd is None or _fs.lstat_at(parent_fd, name) is None:
            if parent_fd is not None:
                os.close(parent_fd)
            self._refuse_unmovable(src_fd, name, os.path.dirname(src_path))
            return [Step(Action.BACKUP, src_path, dest)]
        try:
            steps = self._plan_existing(src_fd, name, src_path, parent_fd, name, dest)
            if steps is None:  # an earlier run that failed left other content there: never refuse (every rerun would)
                self._refuse_unmovable(src_fd, name, os.path.dirname(src_path))
                return [Step(Action.BACKUP, src_path, _free_place(parent_fd, dest))]
        finally:
            os.close(parent_fd)
        return steps

    def _backup_place(self, path: str) -> t.Tuple[str, t.Optional[int]]:
        """Where ``path`` is backed up, and a descriptor of that place's directory when it exists
        already (a run that failed before finishing left its backup directory for the rerun, see
        _bookkeeping).  A directory on the way that such a run filled with something else (a link
        it backed up from the volume, say, where a path with children is backed up now) gives way to
        the first ``<name>.<n>`` that is free or a directory: else every later run would refuse."""
        dest = backup_location(self.backup_dir, path)
        rel = os.path.relpath(os.path.dirname(dest), self.backup_dir)
        parts = [] if rel == "." else rel.split("/")
        meta_fd = self.meta_fd()
        backup_fd = None if meta_fd is None else _fs.walk_at(meta_fd, os.path.relpath(self.backup_dir, self.meta_path).split("/"))

        def open_next(fd: int, index: int, part: str) -> t.Optional[int]:
            parts[index], st = _first_name(fd, part, lambda st: st is None or stat.S_ISDIR(st.st_mode))
            return None if st is None else _fs.open_dir_at(fd, parts[index])

        fd = None if backup_fd is None else _fs.descend(backup_fd, parts, open_next)
        return os.path.join(self.backup_dir, *parts, os.path.basename(dest)), fd

    def _free_backup_location(self, path: str) -> str:
        """``path``'s place in the backup directory or, when a run that failed before finishing
        left something there, the first free ``<place>.<n>``: found by
        tests/reliability/test_hostile_volume.py, where a link planted again after a failed run
        made every later run refuse."""
        dest, parent_fd = self._backup_place(path)
        if parent_fd is None:
            return dest
        try:
            return _free_place(parent_fd, dest)
        finally:
            os.close(parent_fd)

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
            return [Step(Action.CREATE_FILE, plan.store)]
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
                return [Step(Action.SEED, seed_path, plan.store)]
            fd = _fs.open_dir_at(parent_fd, name)
            try:
                names = sorted(_fs.list_dir(fd))
            finally:
                os.close(fd)
            return [Step(Action.SEED, os.path.join(seed_path, child), os.path.join(plan.store, child)) for child in names]
        finally:
            os.close(parent_fd)

    # -- state=absent ---------------------------------------------------------------------

    def _plan_absent(self, plan: LinkPlan, home_fd: t.Optional[int], name: str) -> None:
        link = plan.link
        parts = self.territory_parts(link)
        parent_fd = None if self.territory_fd is None else _fs.walk_at(self.territory_fd, parts[:-1])
        try:
            plan.target_before = entry_at(parent_fd, parts[-1])
            if plan.target_before.kind.value == link.kind:
                # Checked before any change, as present does: a FIFO in the volume cannot be copied back.
                self._refuse_unmovable(parent_fd, parts[-1], os.path.dirname(link.target))
        finally:
            if parent_fd is not None:
                os.close(parent_fd)
        if home_fd is not None and _fs.lstat_at(home_fd, restore_name(name)) is not None:
            plan.steps.append(Step(Action.CLEAR_RESTORE, os.path.join(os.path.dirname(link.path), restore_name(name))))
        ours = plan.before.kind is Kind.MISSING or plan.before.points_to(link.target)
        if not ours:
            return  # a real directory or file already, or a link this module did not make: leave it
        if plan.before.kind is Kind.MISSING and plan.target_before.kind.value != link.kind:
            return
        if home_fd is None:
            plan.steps.extend(self._missing_directories(os.path.dirname(link.path), Action.CREATE_HOME_DIRECTORY))
        link_st = None if home_fd is None else _fs.lstat_at(home_fd, name)
        planned = None if link_st is None else _fs.identity(link_st)
        if plan.target_before.kind.value == link.kind:
            plan.steps.append(Step(Action.RESTORE, link.path, link.target, planned))
        elif link.kind == "directory":
            plan.steps.append(Step(Action.CREATE_EMPTY, link.path, identity=planned))
        elif plan.before.kind is not Kind.MISSING:
            plan.steps.append(Step(Action.REMOVE_LINK, link.path, identity=planned))


def restore_name(name: str) -> str:
    """The temporary name beside a path under which state=absent builds the entry it restores."""
    return f".{name}.agent-state-link.restore"
