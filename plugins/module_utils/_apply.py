# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Execute a JobPlan, step by step, so that a kill at any instant loses nothing.

Private to the agor.persistence collection.

Moves into the volume first try rename(); across filesystems (always the case from an image
layer, which fails with EXDEV) the entry is copied into a private staging directory on the
volume, the volume's filesystem is synced, the copy is renamed into place, synced again, and only then
is the source removed, and only the parts recorded as copied and unchanged since.  A rerun
after a kill finds either the source intact (staging is discarded) or the copy in place, in
which case the source is an identical duplicate and is dropped.
"""

from __future__ import annotations

import errno
import os
import stat
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils import _plan as P
from ansible_collections.agor.persistence.plugins.module_utils._spec import (
    META_DIR_NAME,
    AgentStateLinkError,
    LinkSpec,
    is_within,
)

STAGING_DIR_NAME = "staging"
RESTORE_SUFFIX = ".agent-state-link.restore"


class Executor:
    """Runs the steps of a JobPlan.  Holds descriptors; close() releases them."""

    def __init__(self, plan: P.JobPlan) -> None:
        self.plan = plan
        self.job = plan.job
        self.store_root = self.job.seed_store if self.job.state == "prepared" else self.job.volume
        self.meta_path = os.path.join(self.store_root, META_DIR_NAME)
        self.warnings: t.List[str] = []
        self._anchors: t.Dict[str, int] = {}
        self._staging_fd: t.Optional[int] = None
        self._staged = 0

    def close(self) -> None:
        for fd in self._anchors.values():
            os.close(fd)
        self._anchors.clear()
        if self._staging_fd is not None:
            os.close(self._staging_fd)
            self._staging_fd = None

    def run(self) -> None:
        if self.plan.volume_owner is not None:
            os.fchown(self._anchor(self.job.volume), *self.plan.volume_owner)
        for link_plan in self.plan.links:
            self._run_link(link_plan)

    # -- resolving paths to (parent descriptor, name) without following links ------------------

    def _anchor(self, path: str) -> int:
        if path not in self._anchors:
            fd = _fs.open_anchor(path)
            if fd is None:
                raise AgentStateLinkError(f"{path}: does not exist")
            self._anchors[path] = fd
        return self._anchors[path]

    def _parent(self, path: str, link: LinkSpec, create: bool = False) -> t.Tuple[int, str]:
        """Open the parent of ``path`` (the caller closes it) by a no-follow walk from its anchor."""
        if is_within(path, self.meta_path):
            anchor_fd, rel = self._meta_fd(), os.path.relpath(os.path.dirname(path), self.meta_path)
        else:
            # Below the store, the seed store or the link's home directory; else (the store's own
            # missing ancestors, at image build time) the parent itself, reached from "/".
            anchor = next(
                (root for root in (self.store_root, self.job.seed_store, os.path.dirname(link.path))
                 if root is not None and is_within(path, root) and path != root),
                os.path.dirname(path),
            )
            anchor_fd, rel = self._anchor(anchor), os.path.relpath(os.path.dirname(path), anchor)
        parts = [] if rel == "." else rel.split("/")
        fd = os.dup(anchor_fd)
        try:
            for part in parts:
                if create and _fs.lstat_at(fd, part) is None:
                    _fs.make_dir_at(fd, part, os.geteuid(), os.getegid(), 0o700)
                next_fd = _fs.open_dir_at(fd, part)
                os.close(fd)
                fd = next_fd
        except BaseException:
            os.close(fd)
            raise
        return fd, os.path.basename(path)

    def _meta_fd(self) -> int:
        key = self.meta_path
        if key not in self._anchors:
            self._anchors[key] = ensure_private_dir(self._anchor(self.store_root), META_DIR_NAME)
        return self._anchors[key]

    def _staging(self) -> int:
        if self._staging_fd is None:
            meta_fd = self._meta_fd()
            if _fs.lstat_at(meta_fd, STAGING_DIR_NAME) is None:
                _fs.make_dir_at(meta_fd, STAGING_DIR_NAME, os.geteuid(), os.getegid(), 0o700)
            self._staging_fd = _fs.open_dir_at(meta_fd, STAGING_DIR_NAME)
        return self._staging_fd

    def _stage_name(self) -> str:
        self._staged += 1
        return f"{os.getpid()}-{self._staged}"

    # -- one link ---------------------------------------------------------------------------

    def _run_link(self, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        moves = [step for step in link_plan.steps if step.action in (P.MOVE, P.BACKUP)]
        moves_done = False
        for step in link_plan.steps:
            if step.action in (P.MOVE, P.BACKUP):
                if not moves_done:
                    self._move_all(moves, link)
                    moves_done = True
            elif step.action == P.BACKUP_VOLUME_ENTRY:
                self._move_all([step], link)
            else:
                getattr(self, "_" + step.action)(step, link_plan)

    def _create_directory(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        parent_fd, name = self._parent(step.path, link)
        try:
            if step.path == link_plan.store:
                _fs.make_dir_at(parent_fd, name, link.uid, link.gid, self.job.directory_mode)
            elif is_within(self.store_root, step.path):  # the seed store itself, image build time
                _fs.make_dir_at(parent_fd, name, os.geteuid(), os.getegid(), 0o755)
            else:
                _fs.make_dir_at(parent_fd, name, link.uid, link.gid, 0o755)
        finally:
            os.close(parent_fd)

    def _create_home_directory(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        parent_fd = _fs.open_anchor(os.path.dirname(step.path))
        if parent_fd is None:
            raise AgentStateLinkError(f"{step.path}: parent vanished; rerun")
        try:
            _fs.make_dir_at(parent_fd, os.path.basename(step.path), link.uid, link.gid, 0o755)
        finally:
            os.close(parent_fd)

    def _set_owner(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        parent_fd, name = self._parent(step.path, link_plan.link)
        try:
            _fs.chown_at(parent_fd, name, link_plan.link.uid, link_plan.link.gid)
        finally:
            os.close(parent_fd)

    def _drop_duplicate(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        """Remove a home entry only while it is unchanged and its twin still holds the same bytes."""
        src_fd, src_name = self._parent(step.path, link_plan.link)
        try:
            dst_fd, dst_name = self._parent(step.dest, link_plan.link)
            try:
                st = _fs.lstat_at(src_fd, src_name)
                if st is None:
                    return
                if _fs.identity(st) != step.identity or not _fs.same_content_at(src_fd, src_name, dst_fd, dst_name):
                    self.warnings.append(f"{step.path}: changed since it was compared with {step.dest}; left in place")
                    return
                os.unlink(src_name, dir_fd=src_fd)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

    def _seed(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        copier = _fs.Copier(owner=(link.uid, link.gid))
        self._copy_into_place(step.path, step.dest, link, copier)
        self.warnings.extend(copier.notes)

    def _create_file(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        if link.initial_content is None:
            raise AssertionError("create_file planned without initial_content")
        name = self._stage_name()
        _fs.write_new_file_at(
            self._staging(), name, link.initial_content.encode("utf-8"), link.uid, link.gid, self.job.file_mode
        )
        self._rename_into_place(name, step.path, link)

    def _link(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        parent_fd, name = self._parent(step.path, link)
        try:
            st = _fs.lstat_at(parent_fd, name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                _fs.remove_emptied_dirs(parent_fd, name, step.path)
            _fs.replace_with_symlink(parent_fd, name, step.dest, link.uid, link.gid)
        finally:
            os.close(parent_fd)

    # -- state=absent -------------------------------------------------------------------------

    def _restore(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        """Put a copy of the target back at the path; the volume keeps its copy."""

        def copy_target(parent_fd: int, tmp: str) -> None:
            src_fd, src_name = self._parent(step.dest, link_plan.link)
            copier = _fs.Copier()
            try:
                copier.copy(src_fd, src_name, parent_fd, tmp, source_path=step.dest)
            finally:
                os.close(src_fd)
            self.warnings.extend(copier.notes)
            _fs.sync_filesystem(parent_fd)

        self._replace_link_with(step.path, link_plan.link, copy_target)

    def _create_empty(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        link = link_plan.link
        self._replace_link_with(
            step.path, link, lambda parent_fd, tmp: _fs.make_dir_at(parent_fd, tmp, link.uid, link.gid, self.job.directory_mode)
        )

    def _replace_link_with(self, path: str, link: LinkSpec, fill: t.Callable[[int, str], None]) -> None:
        """Build the real entry under a temporary name beside the link, then swap it in."""
        parent_fd, name = self._parent(path, link)
        try:
            tmp = "." + name + RESTORE_SUFFIX
            _fs.remove_tree_at(parent_fd, tmp)  # an interrupted restore's copy; the volume holds the original
            fill(parent_fd, tmp)
            self._swap_in(parent_fd, tmp, name)
        finally:
            os.close(parent_fd)

    def _remove_link(self, step: P.Step, link_plan: P.LinkPlan) -> None:
        parent_fd, name = self._parent(step.path, link_plan.link)
        try:
            if _fs.kind_of(_fs.lstat_at(parent_fd, name)) == "link":
                os.unlink(name, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)

    @staticmethod
    def _swap_in(parent_fd: int, tmp: str, name: str) -> None:
        """Replace the link ``name`` by the real entry ``tmp`` (a file in one rename)."""
        st = _fs.lstat_at(parent_fd, name)
        if st is not None and stat.S_ISDIR(_fs.lstat_at(parent_fd, tmp).st_mode):  # type: ignore[union-attr]
            if not stat.S_ISLNK(st.st_mode):
                raise AgentStateLinkError(f"{name}: is no longer a link; left as it is")
            os.unlink(name, dir_fd=parent_fd)  # rename cannot put a directory over a link
        os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)

    # -- moving and copying ---------------------------------------------------------------------

    def _move_all(self, steps: t.Sequence[P.Step], link: LinkSpec) -> None:
        """Move entries to their destinations: rename where possible, else a durable copy."""
        staged: t.List[t.Tuple[str, P.Step, _fs.Manifest]] = []
        copier = _fs.Copier()
        for step in steps:
            src_fd, src_name = self._parent(step.path, link)
            try:
                dst_fd, dst_name = self._parent(step.dest, link, create=step.action != P.MOVE)
                try:
                    if _fs.lstat_at(dst_fd, dst_name) is not None:
                        raise AgentStateLinkError(f"{step.dest}: appeared while migrating {step.path}; nothing lost, rerun")
                    try:
                        os.rename(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
                        continue
                    except OSError as exc:
                        if exc.errno != errno.EXDEV:
                            raise
                finally:
                    os.close(dst_fd)
                name = self._stage_name()
                staged.append((name, step, copier.copy(src_fd, src_name, self._staging(), name, source_path=step.path)))
            finally:
                os.close(src_fd)
        self.warnings.extend(copier.notes)
        if not staged:
            return
        _fs.sync_filesystem(self._staging())  # every copy durable before it becomes visible
        for name, step, _manifest in staged:
            self._rename_into_place(name, step.dest, link)
        _fs.sync_filesystem(self._staging())  # every copy durable in place before any source goes
        for _name, step, manifest in staged:
            src_fd, src_name = self._parent(step.path, link)
            try:
                if not _fs.remove_copied(src_fd, src_name, manifest):
                    self.warnings.append(f"{step.path}: changed after it was copied to {step.dest}; the rest is left in place")
            finally:
                os.close(src_fd)

    def _copy_into_place(self, src: str, dest: str, link: LinkSpec, copier: _fs.Copier) -> None:
        src_fd, src_name = self._parent(src, link)
        try:
            name = self._stage_name()
            copier.copy(src_fd, src_name, self._staging(), name, source_path=src)
        finally:
            os.close(src_fd)
        _fs.sync_filesystem(self._staging())
        self._rename_into_place(name, dest, link)

    def _rename_into_place(self, staged_name: str, dest: str, link: LinkSpec) -> None:
        dst_fd, dst_name = self._parent(dest, link, create=is_within(dest, self.meta_path))
        try:
            if _fs.lstat_at(dst_fd, dst_name) is not None:
                raise AgentStateLinkError(f"{dest}: appeared while it was being filled; nothing lost, rerun")
            os.rename(staged_name, dst_name, src_dir_fd=self._staging(), dst_dir_fd=dst_fd)
        finally:
            os.close(dst_fd)


def ensure_private_dir(parent_fd: int, name: str) -> int:
    """Open (creating if needed) a directory only this process's user can write.

    Anything else found under that name (a link, a file, a directory somebody else owns or can
    write) is renamed aside, never followed or deleted, and a fresh directory takes its place.
    """
    fd = _fs.open_private_dir(parent_fd, name)
    if fd is not None:
        return fd
    if _fs.lstat_at(parent_fd, name) is not None:
        aside = f"{name}.untrusted-{os.getpid()}-{os.urandom(4).hex()}"
        os.rename(name, aside, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
    try:
        _fs.make_dir_at(parent_fd, name, os.geteuid(), os.getegid(), 0o700)
    except FileExistsError:
        pass  # a concurrent run made it first
    fd = _fs.open_private_dir(parent_fd, name)
    if fd is None:
        raise AgentStateLinkError(f"{name}: could not create a private bookkeeping directory")
    return fd


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
