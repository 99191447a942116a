# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Execute a TerritoryPlan, step by step in plan order, so that a kill at any instant loses nothing.

Private to the agor.persistence collection.  It runs as the account that owns the territory's
links (see _privsep), so everything it creates belongs to that account from its first instant.

Moves into the store first try rename(); across filesystems (always the case from an image
layer, which fails with EXDEV) the entry is copied into a private staging directory on the
store, the store's filesystem is synced, the copy is renamed into place, synced again, and only
then is the source removed, and only the parts recorded as copied and unchanged since.  A rerun
after a kill finds either the source intact (staging is discarded) or the copy in place, in
which case the source is an identical duplicate and is dropped.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _bookkeeping as B
from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils import _plan as P
from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError, LinkSpec, is_within

Action = P.Action


class Executor:
    """Runs the steps of a TerritoryPlan.  Holds descriptors; use it as a context manager."""

    def __init__(self, plan: P.TerritoryPlan, territory_fd: t.Optional[int]) -> None:
        self.plan = plan
        self.job = plan.job
        self.territory_root = os.path.join(self.job.store_root, *plan.territory.parts)
        self.territory_fd = territory_fd
        self.meta_path = os.path.join(self.territory_root, P.META_DIR_NAME)
        self.warnings: t.List[str] = []
        self._anchors: t.Dict[str, int] = {}
        self._staging_fd: t.Optional[int] = None
        self._staged = 0
        # Staging names start with a random token: a new container reuses PIDs (1, ...).
        self._stage_prefix = os.urandom(6).hex()
        self._handlers: t.Dict[Action, t.Callable[[P.Step, P.LinkPlan], None]] = {
            Action.BACKUP_VOLUME_ENTRY: lambda step, plan: self._move_all([step], plan.link),
            Action.CREATE_DIRECTORY: self._create_directory,
            Action.SET_GROUP: self._set_group,
            Action.CREATE_HOME_DIRECTORY: self._create_home_directory,
            Action.DROP_DUPLICATE: self._drop_duplicate,
            Action.SEED: self._seed,
            Action.CREATE_FILE: self._create_file,
            Action.LINK: self._link,
            Action.CLEAR_RESTORE: self._clear_restore,
            Action.RESTORE: self._restore,
            Action.CREATE_EMPTY: self._create_empty,
            Action.REMOVE_LINK: self._remove_link,
        }

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        for fd in self._anchors.values():
            os.close(fd)
        self._anchors.clear()
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None

    def run(self) -> None:
        for link_plan in self.plan.links:
            self._run_link(link_plan)

    def _run_link(self, link_plan: P.LinkPlan) -> None:
        """Each step in plan order; a run of consecutive moves and backups as one batch (one sync)."""
        batch: t.List[P.Step] = []
        for step in link_plan.steps:
            if step.action in P.BATCHED_ACTIONS:
                batch.append(step)
                continue
            if batch:
                self._move_all(batch, link_plan.link)
                batch = []
            self._handlers[step.action](step, link_plan)
        if batch:
            self._move_all(batch, link_plan.link)

    # -- resolving paths to (parent descriptor, name) without following links ------------------

    def _anchor(self, path: str) -> int:
        if path not in self._anchors:
            fd = _fs.open_anchor(path)
            if fd is None:
                raise AgentStateLinkError(f"{path}: does not exist")
            self._anchors[path] = fd
        return self._anchors[path]

    def _parent(self, path: str, link: LinkSpec, create: bool = False) -> t.Tuple[int, str]:
        """Open the parent of ``path`` (the caller closes it) by a no-follow walk from the root it
        hangs off: the bookkeeping directory, the territory, the seed store, or the link's home."""
        if is_within(path, self.meta_path):
            anchor_fd, root = self._meta_fd(), self.meta_path
        elif is_within(path, self.territory_root):
            anchor_fd, root = self._territory(), self.territory_root
        elif self.job.seed_store is not None and is_within(path, self.job.seed_store):
            anchor_fd, root = self._anchor(self.job.seed_store), self.job.seed_store
        else:
            root = os.path.dirname(link.path)
            anchor_fd = self._anchor(root)
        rel = os.path.relpath(os.path.dirname(path), root)
        fd = os.dup(anchor_fd)
        try:
            for part in [] if rel == "." else rel.split("/"):
                if create and _fs.lstat_at(fd, part) is None:
                    _fs.make_dir_at(fd, part, os.geteuid(), os.getegid(), 0o700)
                next_fd = _fs.open_dir_at(fd, part)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd, os.path.basename(path)

    @contextlib.contextmanager
    def _parent_of(self, path: str, link: LinkSpec, create: bool = False) -> t.Iterator[t.Tuple[int, str]]:
        fd, name = self._parent(path, link, create)
        try:
            yield fd, name
        finally:
            os.close(fd)

    def _territory(self) -> int:
        if self.territory_fd is None:  # root makes it before any step that needs it
            raise AgentStateLinkError(f"{self.territory_root}: does not exist")
        return self.territory_fd

    def _meta_fd(self) -> int:
        if self.meta_path not in self._anchors:
            self._anchors[self.meta_path] = B.ensure_private_dir(self._territory(), P.META_DIR_NAME)
        return self._anchors[self.meta_path]

    def _staging(self) -> int:
        if self._staging_fd is None:
            meta_fd = self._meta_fd()
            if _fs.lstat_at(meta_fd, B.STAGING_DIR_NAME) is None:
                _fs.make_dir_at(meta_fd, B.STAGING_DIR_NAME, os.geteuid(), os.getegid(), 0o700)
            self._staging_fd = _fs.open_dir_at(meta_fd, B.STAGING_DIR_NAME)
        return self._staging_fd

    def _stage_name(self) -> str:
        self._staged += 1
        return f"{self._stage_prefix}-{self._staged}"

    # -- state=present / prepared ---------------------------------------------------------------

    def _create_directory(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        mode = self.job.directory_mode if step.path == link_plan.store else 0o755
        with self._parent_of(step.path, link) as (parent_fd, name):
            _fs.make_dir_at(parent_fd, name, os.geteuid(), os.getegid(), mode)

    def _create_home_directory(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        parent_fd = _fs.open_anchor(os.path.dirname(step.path))
        if parent_fd is None:
            raise AgentStateLinkError(f"{step.path}: parent vanished; rerun")
        try:
            _fs.make_dir_at(parent_fd, os.path.basename(step.path), os.geteuid(), os.getegid(), 0o755)
        finally:
            os.close(parent_fd)

    def _set_group(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        with self._parent_of(step.path, link_plan.link) as (parent_fd, name):
            _fs.chown_at(parent_fd, name, -1, t.cast(int, link_plan.link.gid))

    def _drop_duplicate(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        """Remove a home entry only while it is unchanged and its twin still holds the same bytes."""
        with self._parent_of(step.path, link_plan.link) as (src_fd, src_name):
            with self._parent_of(step.dest, link_plan.link) as (dst_fd, dst_name):
                st = _fs.lstat_at(src_fd, src_name)
                if st is None:
                    return
                if _fs.identity(st) != step.identity or not _fs.same_content_at(src_fd, src_name, dst_fd, dst_name):
                    self.warnings.append(f"{step.path}: changed since it was compared with {step.dest}; left in place")
                    return
                _fs.make_writable(src_fd)  # a read-only directory of the account's own, being emptied
                os.unlink(src_name, dir_fd=src_fd)

    def _seed(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        copier = _fs.Copier(owner=(os.geteuid(), os.getegid()))
        with self._parent_of(step.path, link_plan.link) as (src_fd, src_name):
            name = self._stage_name()
            copier.copy(src_fd, src_name, self._staging(), name, source_path=step.path)
        self.warnings.extend(copier.notes)
        _fs.sync_filesystem(self._staging())
        self._rename_into_place(name, step.dest, link_plan.link)

    def _create_file(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        if link.initial_content is None:
            raise AssertionError("create_file planned without initial_content")
        name = self._stage_name()
        _fs.write_new_file_at(
            self._staging(), name, link.initial_content.encode("utf-8"), os.geteuid(), os.getegid(), self.job.file_mode
        )
        self._rename_into_place(name, step.path, link)

    def _link(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        with self._parent_of(step.path, link_plan.link) as (parent_fd, name):
            if P.entry_at(parent_fd, name).points_to(step.dest):
                return  # swapped in already, with the state file it replaces (see _move_state_file)
            st = _fs.lstat_at(parent_fd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                _fs.remove_emptied_dirs(parent_fd, name, step.path)
            _fs.replace_with_symlink(parent_fd, name, step.dest)

    # -- state=absent -------------------------------------------------------------------------

    def _clear_restore(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        """An interrupted rollback's copy of the target (the volume holds the original)."""
        with self._parent_of(step.path, link_plan.link) as (parent_fd, name):
            _fs.remove_tree_at(parent_fd, name)

    def _restore(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        """Put a copy of the target back at the path; the volume keeps its copy."""

        def copy_target(parent_fd: int, tmp: str) -> None:
            copier = _fs.Copier()
            with self._parent_of(step.dest, link_plan.link) as (src_fd, src_name):
                copier.copy(src_fd, src_name, parent_fd, tmp, source_path=step.dest)
            self.warnings.extend(copier.notes)
            _fs.sync_filesystem(parent_fd)

        self._replace_link_with(step, link_plan.link, copy_target)

    def _create_empty(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        mode = self.job.directory_mode
        self._replace_link_with(
            step, link_plan.link, lambda parent_fd, tmp: _fs.make_dir_at(parent_fd, tmp, os.geteuid(), os.getegid(), mode)
        )

    def _replace_link_with(self, step: P.Step, link: LinkSpec, fill: t.Callable[[int, str], None]) -> None:
        """Build the real entry under a temporary name beside the link, then swap it in, but only
        for the very link that was planned: whatever else stands there now (a file a program saved
        meanwhile) is kept and the copy is discarded."""
        with self._parent_of(step.path, link) as (parent_fd, name):
            tmp = P.restore_name(name)
            _fs.remove_tree_at(parent_fd, tmp)
            fill(parent_fd, tmp)
            try:
                if not self._is_planned_link(parent_fd, name, step):
                    raise AgentStateLinkError(f"{step.path}: is no longer the link the run planned to replace; left as it is, rerun")
                filled = _fs.lstat_at(parent_fd, tmp)
                if filled is None:
                    raise AgentStateLinkError(
                        f"{step.path}: the copy being put in its place was moved away meanwhile; the volume keeps the original, rerun"
                    )
                if step.identity is None or stat.S_ISDIR(filled.st_mode):
                    if step.identity is not None:
                        os.unlink(name, dir_fd=parent_fd)  # rename cannot put a directory over a link
                    _fs.rename_noreplace_at(parent_fd, tmp, parent_fd, name)
                    return
                replaced = _fs.swap_at(parent_fd, tmp, name)
                if replaced is not None and not (stat.S_ISLNK(replaced.st_mode) and _fs.identity(replaced) == step.identity):
                    _fs.swap_at(parent_fd, tmp, name)  # saved between the check and the swap: put it back
                    raise AgentStateLinkError(f"{step.path}: a program saved it while the run restored it; kept the save, rerun")
            finally:
                _fs.remove_tree_at(parent_fd, tmp)

    @staticmethod
    def _is_planned_link(parent_fd: int, name: str, step: P.Step) -> bool:
        st = _fs.lstat_at(parent_fd, name)
        if st is None:
            return step.identity is None
        return stat.S_ISLNK(st.st_mode) and _fs.identity(st) == step.identity

    def _remove_link(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        with self._parent_of(step.path, link_plan.link) as (parent_fd, name):
            if self._is_planned_link(parent_fd, name, step) and step.identity is not None:
                os.unlink(name, dir_fd=parent_fd)

    # -- moving and copying ---------------------------------------------------------------------

    def _move_all(self, steps: t.Sequence[P.Step], link: LinkSpec) -> None:
        """Move entries to their destinations: rename where possible, else a durable copy."""
        staged: t.List[t.Tuple[str, P.Step, _fs.Manifest]] = []
        copier = _fs.Copier()
        for step in steps:
            with self._parent_of(step.path, link) as (src_fd, src_name):
                with self._parent_of(step.dest, link, create=step.action is not Action.MOVE) as (dst_fd, dst_name):
                    try:
                        _fs.move_at(src_fd, src_name, dst_fd, dst_name)
                        continue
                    except FileExistsError:
                        raise AgentStateLinkError(f"{step.dest}: appeared while migrating {step.path}; nothing lost, rerun") from None
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                if (step.action is Action.MOVE and step.path == link.path and link.kind == "file"
                        and self._move_state_file(step, link, src_fd, src_name)):
                    continue
                name = self._stage_name()
                staged.append((name, step, copier.copy(src_fd, src_name, self._staging(), name, source_path=step.path)))
        self.warnings.extend(copier.notes)
        if not staged:
            return
        _fs.sync_filesystem(self._staging())  # every copy durable before it becomes visible
        for name, step, _manifest in staged:
            self._rename_into_place(name, step.dest, link)
        _fs.sync_filesystem(self._staging())  # every copy durable in place before any source goes
        for _name, step, manifest in staged:
            with self._parent_of(step.path, link) as (src_fd, src_name):
                if _fs.remove_copied(src_fd, src_name, manifest):
                    continue
                if step.path == link.path and link.kind == "file":
                    self._retract(step, link, "written to while it was being moved")
                self.warnings.append(f"{step.path}: changed after it was copied to {step.dest}; the rest is left in place")

    def _move_state_file(self, step: P.Step, link: LinkSpec, src_fd: int, src_name: str) -> bool:
        """Move a state file to another filesystem while programs may write to it: copy it, then
        swap the link in for it, all under a read lease that tells whether any program opened the
        file for writing meanwhile (its write would go to the old file).  If one did, the file goes
        back and the run stops: nothing written is ever lost.  False where leases or atomic exchange
        are not available (the caller then moves it like any entry)."""
        st = _fs.lstat_at(src_fd, src_name)
        if st is None or not stat.S_ISREG(st.st_mode):
            return False
        with _fs.read_lease(src_fd, src_name, _fs.identity(st)) as leased:
            if leased is None:
                return False
            name = self._stage_name()
            copier = _fs.Copier()
            manifest = copier.copy(src_fd, src_name, self._staging(), name, source_path=step.path)
            self.warnings.extend(copier.notes)
            _fs.sync_filesystem(self._staging())
            self._rename_into_place(name, step.dest, link)
            _fs.sync_filesystem(self._staging())
            tmp = _fs.stale_link_name(src_name)
            _fs.remove_stale_link(src_fd, src_name)
            os.symlink(link.target, tmp, dir_fd=src_fd)
            if not _fs.exchange_at(src_fd, tmp, src_name):
                os.unlink(tmp, dir_fd=src_fd)
                self._retract(step, link, "cannot be swapped atomically here")
            old = _fs.lstat_at(src_fd, tmp)
            if _fs.lease_broken(leased) or old is None or _fs.identity(old) != manifest.identity:
                _fs.exchange_at(src_fd, tmp, src_name)  # the file back at its path, as the writer expects
                os.unlink(tmp, dir_fd=src_fd)
                self._retract(step, link, "written to while it was being moved")
            os.unlink(tmp, dir_fd=src_fd)  # the old file: unchanged, and nobody opened it for writing
        return True

    def _retract(self, step: P.Step, link: LinkSpec, why: str) -> t.NoReturn:
        """A state file written to while it was copied: take the now stale copy back out of the
        volume (the home keeps the newer file) and stop, so that the rerun migrates the new one."""
        with self._parent_of(step.dest, link) as (dst_fd, dst_name):
            st = _fs.lstat_at(dst_fd, dst_name)
            if st is not None and stat.S_ISREG(st.st_mode):
                aside = self._stage_name()
                os.rename(dst_name, aside, src_dir_fd=dst_fd, dst_dir_fd=self._staging())
                _fs.remove_tree_at(self._staging(), aside)
        raise AgentStateLinkError(f"{step.path}: {why} to {step.dest}; nothing was replaced or lost, rerun")

    def _rename_into_place(self, staged_name: str, dest: str, link: LinkSpec) -> None:
        with self._parent_of(dest, link, create=is_within(dest, self.meta_path)) as (dst_fd, dst_name):
            try:
                _fs.move_at(self._staging(), staged_name, dst_fd, dst_name)
            except FileExistsError:
                raise AgentStateLinkError(f"{dest}: appeared while it was being filled; nothing lost, rerun") from None
