# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filesystem primitives that never follow a symlink they did not create.

Private to the agor.persistence collection.  Every operation below a trusted anchor works on
directory file descriptors opened with O_NOFOLLOW, so a link planted by a less trusted user
(the volume and the home are writable by the agents' user, while this code runs as root) is
seen as a link and never traversed, re-owned or copied through.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import signal
import stat
import time
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
COPY_CHUNK = 8 * 1024 * 1024
COMPARE_CHUNK = 1024 * 1024
# Descriptors one walk keeps open at most (see DirChain), however deep the tree.
MAX_OPEN_DIRS = 16

# Extended attributes a copy keeps, as cp -a does: the user's own, POSIX ACLs, and file
# capabilities while the owner stays the same (see Copier).
USER_XATTR_PREFIX = "user."
ACL_ACCESS_XATTR = "system.posix_acl_access"
ACL_DEFAULT_XATTR = "system.posix_acl_default"
CAPABILITY_XATTR = "security.capability"
COPIED_XATTRS = (ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR, CAPABILITY_XATTR)

# (st_dev, st_ino, st_size, st_mtime_ns): what a removal checks has not changed since it was copied.
Identity = t.Tuple[int, int, int, int]


def kind_of(st: t.Optional[os.stat_result]) -> str:
    """Name the type of an lstat result: missing, directory, file, link or other."""
    if st is None:
        return "missing"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISREG(st.st_mode):
        return "file"
    return "other"


def identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def lstat_at(dir_fd: int, name: str) -> t.Optional[os.stat_result]:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dir_fd: int, name: str) -> int:
    """Open a child directory without following a link; ELOOP/ENOTDIR surface as OSError."""
    return os.open(name, DIR_FLAGS, dir_fd=dir_fd)


def open_anchor(path: str) -> t.Optional[int]:
    """Open a configured directory (home parent, volume, seed store) from ``/``.

    A symlink on the way is followed only when root owns it and it sits in a directory that only
    root can write: distributions link e.g. ``/home`` to ``/var/home``, and only root could have
    made or moved such a link.  Any other link is refused.  Returns None when the directory does
    not exist.
    """
    parts = [p for p in path.split("/") if p]

    def open_next(fd: int, index: int, part: str) -> t.Optional[int]:
        # The directories on the way are only passed through (O_PATH: search permission is
        # enough, as for any path lookup); the anchor itself is opened for reading.
        passing = os.O_PATH if index < len(parts) - 1 else os.O_RDONLY
        st = lstat_at(fd, part)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            parent = os.fstat(fd)
            if st.st_uid != 0 or parent.st_uid != 0 or parent.st_mode & 0o022:
                raise AgentStateLinkError(
                    f"{path}: component {part!r} is a symlink owned by uid {st.st_uid} in a directory owned by uid "
                    f"{parent.st_uid} with mode {stat.S_IMODE(parent.st_mode):04o}; only a root-owned link in a "
                    "directory that only root can write is followed"
                )
            return os.open(part, passing | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
        if stat.S_ISDIR(st.st_mode):
            return os.open(part, passing | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        raise AgentStateLinkError(f"{path}: component {part!r} is not a directory")

    return descend(os.open("/", DIR_FLAGS), parts, open_next)


def walk_at(anchor_fd: int, parts: t.Sequence[str]) -> t.Optional[int]:
    """Open ``anchor/parts...`` strictly (no links); None when a component is missing."""

    def open_next(fd: int, _index: int, part: str) -> t.Optional[int]:
        try:
            return open_dir_at(fd, part)
        except FileNotFoundError:
            return None

    return descend(os.dup(anchor_fd), parts, open_next)


def descend(fd: int, parts: t.Sequence[str], open_next: t.Callable[[int, int, str], t.Optional[int]]) -> t.Optional[int]:
    """From ``fd`` (which this takes over) down ``parts``, each opened by ``open_next(fd, index, part)``;
    the last descriptor, or None when ``open_next`` finds a component missing."""
    try:
        for index, part in enumerate(parts):
            next_fd = open_next(fd, index, part)
            os.close(fd)
            if next_fd is None:
                return None
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def make_dir_at(dir_fd: int, name: str, uid: int, gid: int, mode: int) -> None:
    """Create a directory with its final owner and mode, never visible with others.

    A directory of this process's own uid and gid is born right: one mkdir with the umask cleared,
    whose EEXIST also serializes concurrent creators.  Any other, or one that mkdir cannot give its
    mode (set-user-ID or set-group-ID bits), is made under a temporary name beside ``name`` and
    renamed into place once owned and moded through a no-follow descriptor: killed in between, a
    run must not leave (say) a root-owned 0700 parent that the agents' user cannot enter, which no
    rerun would re-own.  So is an account's own directory in a set-group-ID parent, which would
    hand it the parent's group.  Root's own directories (``<volume>/users``, the seed store's, all
    0755) never are: in the volume root the user owns, a temporary name is one more entry of root's
    that the user could move, and the user could set that bit to force one.  The group they then
    carry gets no write from 0755.
    """
    born_right = (uid, gid) == (os.geteuid(), os.getegid()) and not mode & (stat.S_ISUID | stat.S_ISGID)
    if born_right and (uid == 0 or not os.fstat(dir_fd).st_mode & stat.S_ISGID):
        umask = os.umask(0)  # the engine is single-threaded: nothing else creates files meanwhile
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
        finally:
            os.umask(umask)
        return
    if lstat_at(dir_fd, name) is not None:
        raise FileExistsError(errno.EEXIST, "File exists", name)
    new = _new_dir_name(dir_fd, name)
    os.mkdir(new, 0o700, dir_fd=dir_fd)
    fd = open_dir_at(dir_fd, new)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    try:
        os.rename(new, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        os.rmdir(new, dir_fd=dir_fd)  # something took the name meanwhile; ours is still empty
        raise


def _new_dir_name(dir_fd: int, name: str) -> str:
    """The temporary name of a directory being made; an empty one left by a killed run is removed."""
    new = f".{name}.agent-state-link.new"
    st = lstat_at(dir_fd, new)
    if st is not None:
        if not stat.S_ISDIR(st.st_mode):
            raise AgentStateLinkError(f"{new}: exists beside {name} and is not a directory; move it away")
        os.rmdir(new, dir_fd=dir_fd)  # only ever empty if ours: rmdir refuses a directory with content
    return new


def sync_filesystem(fd: int) -> None:
    """Make everything written to the filesystem holding ``fd`` durable: syncfs(2), else sync(2).

    sync(2) writes back every filesystem of the machine: on a busy host (or this test machine) one
    call took 0.2-1.4 s, paid twice per migrated link at container start, for other tenants' data.
    """
    syncfs = _libc_syncfs()
    if syncfs is None:
        os.sync()
    elif syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _libc_syncfs() -> t.Optional[t.Callable[[int], int]]:
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None


def write_new_file_at(dir_fd: int, name: str, content: bytes, uid: int, gid: int, mode: int) -> None:
    fd = os.open(name, CREATE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, content)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)


def chown_at(dir_fd: int, name: str, uid: int, gid: int) -> None:
    """Change the owner of one entry, never what a link points to, never a hard-linked file."""
    st = lstat_at(dir_fd, name)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, "vanished before chown", name)
    if stat.S_ISLNK(st.st_mode):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
        return
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        fst = os.fstat(fd)
        if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
            raise AgentStateLinkError(f"{name}: replaced while its owner was being changed; rerun")
        if stat.S_ISREG(fst.st_mode) and fst.st_nlink > 1:
            raise AgentStateLinkError(
                f"{name}: is a hard link ({fst.st_nlink} names) owned by uid {fst.st_uid}; "
                "refusing to change its owner, it may be another file's data"
            )
        os.fchown(fd, uid, gid)
    finally:
        os.close(fd)


def same_content_at(a_dir: int, a_name: str, b_dir: int, b_name: str) -> bool:
    """Compare two regular files or two symlinks byte for byte, without following links.

    Only the ranges where either file holds data are read: elsewhere both are holes, all zeros,
    so two sparse files of 20 GiB holding a few KiB compare in microseconds.
    """
    a_st, b_st = lstat_at(a_dir, a_name), lstat_at(b_dir, b_name)
    if a_st is None or b_st is None or kind_of(a_st) != kind_of(b_st):
        return False
    if stat.S_ISLNK(a_st.st_mode):
        return os.readlink(a_name, dir_fd=a_dir) == os.readlink(b_name, dir_fd=b_dir)
    if not stat.S_ISREG(a_st.st_mode) or a_st.st_size != b_st.st_size:
        return False
    a_fd = os.open(a_name, READ_FLAGS, dir_fd=a_dir)
    try:
        b_fd = os.open(b_name, READ_FLAGS, dir_fd=b_dir)
        try:
            a_st, b_st = os.fstat(a_fd), os.fstat(b_fd)  # what was opened, which may have changed since
            if a_st.st_size != b_st.st_size:
                return False
            for start, end in _union(data_extents(a_fd, a_st), data_extents(b_fd, b_st)):
                for offset in range(start, end, COMPARE_CHUNK):
                    length = min(COMPARE_CHUNK, end - offset)
                    if os.pread(a_fd, length, offset) != os.pread(b_fd, length, offset):
                        return False
            return True
        finally:
            os.close(b_fd)
    finally:
        os.close(a_fd)


def data_extents(fd: int, st: os.stat_result) -> t.List[t.Tuple[int, int]]:
    """The (start, end) ranges of an open file that hold data, not holes, up to its size in ``st``
    (its status, taken by the caller).

    A file with as many blocks as bytes has no hole: it is one range, without a lseek.  A filesystem
    that cannot tell (EINVAL) is taken as all data.
    """
    size = st.st_size
    if st.st_blocks * 512 >= size:
        return [(0, size)] if size else []
    extents: t.List[t.Tuple[int, int]] = []
    offset = 0
    try:
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no data after offset
                    raise
                break
            if start >= size:
                break
            offset = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            extents.append((start, offset))
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
            raise
        return [(0, size)] if size else []
    return extents


def _union(a: t.Sequence[t.Tuple[int, int]], b: t.Sequence[t.Tuple[int, int]]) -> t.List[t.Tuple[int, int]]:
    """The ranges covered by either of two sorted lists of ranges."""
    merged: t.List[t.Tuple[int, int]] = []
    for start, end in sorted([*a, *b]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def is_empty_dir(fd: int) -> bool:
    with os.scandir(fd) as entries:
        return next(entries, None) is None


def is_mount_point_at(dir_fd: int, name: str) -> bool:
    """Whether the entry ``name`` of an open directory is where a filesystem (or a bind mount of
    a part of one, even of the same filesystem) is mounted.

    The mount IDs of the entry and of its directory are compared (/proc/self/fdinfo); without
    /proc, a directory whose device differs from its parent's is one.  The device alone would
    miss bind mounts within a filesystem, and overlayfs reports files of a lower layer with that
    layer's device although they are no mount point.
    """
    st = lstat_at(dir_fd, name)
    if st is None or stat.S_ISLNK(st.st_mode):
        return False  # mount(2) follows links: a link is never itself mounted on
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        entry_mount, parent_mount = _mount_id(fd), _mount_id(dir_fd)
        entry_dev = os.fstat(fd).st_dev
    finally:
        os.close(fd)
    if entry_mount is not None and parent_mount is not None:
        return entry_mount != parent_mount
    return stat.S_ISDIR(st.st_mode) and entry_dev != os.fstat(dir_fd).st_dev


def _mount_id(fd: int) -> t.Optional[int]:
    """The ID of the mount an open descriptor is on, from /proc (None where /proc is not mounted)."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:  # bytes: no codec to import (see _privsep)
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split(b":", 1)[1])
    except FileNotFoundError:
        pass
    return None


class DirChain:
    """A walk's current directory and the ones it came down through, at most MAX_OPEN_DIRS open.

    A tree 10,000 levels deep would need 10,000 descriptors if each level stayed open, and Python
    recursion stops near 1,000.  Walks here keep their own stack and, once too deep, close the
    outermost descriptors; going back up reopens the parent as ``..`` of the child, checked to be
    the very directory (device and inode) that was entered: one moved meanwhile stops the walk.
    """

    def __init__(self, fd: int) -> None:
        """Start at the open directory ``fd`` (a duplicate is kept; the caller still owns ``fd``)."""
        own = os.dup(fd)
        st = os.fstat(own)
        self._fds: t.List[t.Optional[int]] = [own]
        self._ids: t.List[t.Tuple[int, int]] = [(st.st_dev, st.st_ino)]
        self._names: t.List[str] = []
        self._parts: t.Optional[t.Tuple[str, ...]] = ()
        self._first_open = 0

    @classmethod
    def at(cls, dir_fd: int, name: str) -> "DirChain":
        fd = open_dir_at(dir_fd, name)
        try:
            return cls(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "DirChain":
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()

    @property
    def fd(self) -> int:
        """The current directory (always open)."""
        return t.cast(int, self._fds[-1])

    @property
    def identity(self) -> t.Tuple[int, int]:
        """The current directory's device and inode."""
        return self._ids[-1]

    @property
    def depth(self) -> int:
        return len(self._names)

    @property
    def parts(self) -> t.Tuple[str, ...]:
        """The names entered from the start down to the current directory."""
        if self._parts is None:
            self._parts = tuple(self._names)
        return self._parts

    def enter(self, name: str, expect: t.Optional[t.Tuple[int, int]] = None) -> bool:
        """Go down into the child directory ``name`` (never through a link).  With ``expect``, only
        into that directory (device, inode): False, staying where it is, when another one is there."""
        fd = open_dir_at(self.fd, name)
        st = os.fstat(fd)
        if expect is not None and (st.st_dev, st.st_ino) != expect:
            os.close(fd)
            return False
        self._fds.append(fd)
        self._ids.append((st.st_dev, st.st_ino))
        self._names.append(name)
        self._parts = None
        if len(self._fds) - self._first_open > MAX_OPEN_DIRS:
            os.close(t.cast(int, self._fds[self._first_open]))
            self._fds[self._first_open] = None
            self._first_open += 1
        return True

    def leave(self) -> str:
        """Go back up to the parent; return the name of the directory left."""
        child = t.cast(int, self._fds.pop())
        self._ids.pop()
        name = self._names.pop()
        self._parts = None
        try:
            if self._fds[-1] is None:
                parent = os.open("..", DIR_FLAGS, dir_fd=child)
                st = os.fstat(parent)
                if (st.st_dev, st.st_ino) != self._ids[-1]:
                    os.close(parent)
                    raise AgentStateLinkError(f"{name}: its directory was moved while it was walked; nothing lost, rerun")
                self._fds[-1] = parent
                self._first_open -= 1
        finally:
            os.close(child)
        return name

    def close(self) -> None:
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = [None]


def walk(chain: DirChain, skip: t.Container[str] = ()) -> t.Iterator[t.Tuple[str, str, bool]]:
    """Depth first below the chain's current directory, in name order, without recursion.

    Yields ``(name, kind, False)`` for each entry, with ``chain.fd`` its directory; ``kind`` comes
    from the directory listing (see kind_of).  A consumer that wants a directory's entries calls
    ``chain.enter(name)`` before asking for the next item; once they are all done, the walk leaves
    that directory and yields ``(name, "directory", True)`` from its parent.  Entries of the
    kinds in ``skip`` are passed over.
    """
    listings = [iter(_listing(chain.fd, skip))]
    while listings:
        item = next(listings[-1], None)
        if item is None:
            listings.pop()
            if listings:
                yield chain.leave(), "directory", True
            continue
        depth = chain.depth
        yield item[0], item[1], False
        if chain.depth > depth:
            listings.append(iter(_listing(chain.fd, skip)))


def _listing(fd: int, skip: t.Container[str]) -> t.List[t.Tuple[str, str]]:
    """The names in an open directory with their kinds, sorted, but for the kinds in ``skip``; the
    entries' types (d_type) spare an lstat per entry, and a type the filesystem does not report is
    lstat'ed at once."""
    with os.scandir(fd) as entries:
        return sorted(item for item in ((entry.name, _entry_kind(entry)) for entry in entries) if item[1] not in skip)


def _entry_kind(entry: "os.DirEntry[str]") -> str:
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "directory"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


class MergeEntry(t.NamedTuple):
    """An entry of a tree being merged into another (see walk_merge)."""

    parts: t.Tuple[str, ...]  # its path below the merged directory, its own name last
    src_dir: int              # its directory, open
    dst_dir: t.Optional[int]  # the same-named directory of the other tree, open; None when that is missing
    dst_kind: str             # what stands under its name there (see kind_of)

    @property
    def name(self) -> str:
        return self.parts[-1]


def walk_merge(src_fd: int, dst_fd: t.Optional[int]) -> t.Iterator[MergeEntry]:
    """The entries of the tree ``src_fd`` against the tree ``dst_fd``, depth first in name order.

    Directories that both trees hold are walked into, not yielded; every other entry is, with
    both of its directories open until the next item is asked for.
    """
    with DirChain(src_fd) as src:
        dst = None if dst_fd is None else DirChain(dst_fd)
        try:
            for name, kind, done in walk(src):
                if dst is not None and done:
                    dst.leave()
                    continue
                dst_kind = "missing" if dst is None else kind_of(lstat_at(dst.fd, name))
                if dst is not None and kind == dst_kind == "directory":
                    src.enter(name)
                    dst.enter(name)
                    continue
                yield MergeEntry((*src.parts, name), src.fd, None if dst is None else dst.fd, dst_kind)
        finally:
            if dst is not None:
                dst.close()


class Manifest:
    """What a copy recorded of its source: an entry's identity and, for a directory, its entries'."""

    __slots__ = ("identity", "entries")

    def __init__(self, entry_identity: Identity, is_dir: bool) -> None:
        self.identity = entry_identity
        self.entries: t.Optional[t.Dict[str, Manifest]] = {} if is_dir else None


class Copier:
    """Copy trees without following links, recording what was copied so that only that is removed.

    Like ``cp -a``: files keep their mode, times, holes, ``user.*`` and POSIX ACL extended
    attributes, and the hard links among the copied entries (also across the copies one Copier
    makes into the same directory); ownership is kept (like ``mv``) unless ``owner`` is given.
    A copy given to another owner loses its setuid and setgid bits and its file capabilities
    (``security.capability``): ``notes`` says so, and what else could not be kept, in sentences
    for the run's warnings.
    """

    def __init__(self, owner: t.Optional[t.Tuple[int, int]] = None) -> None:
        self.owner = owner
        self.notes: t.List[str] = []
        # (device, inode) of each source file with several names -> its first copy: the directory
        # copied into (device, inode), the copy's path below it, its inode, the source's identity.
        self._linked: t.Dict[t.Tuple[int, int], t.Tuple[t.Tuple[int, int], t.Tuple[str, ...], int, Identity]] = {}
        self._label = ""
        self._root_fd = -1
        self._root = (0, 0)

    def copy(
        self, src_dir: int, src_name: str, dst_dir: int, dst_name: str, source_path: t.Optional[str] = None,
    ) -> Manifest:
        """Copy one entry (with its tree); return the manifest of the source.  ``source_path``
        names the source in notes (default: ``src_name``)."""
        self._label = source_path or src_name
        root = os.fstat(dst_dir)
        self._root_fd, self._root = dst_dir, (root.st_dev, root.st_ino)
        st = lstat_at(src_dir, src_name)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "vanished while copying", src_name)
        if not stat.S_ISDIR(st.st_mode):
            return self._copy_entry(src_dir, src_name, dst_dir, st, (dst_name,))
        os.mkdir(dst_name, 0o700, dir_fd=dst_dir)
        manifest = Manifest(identity(st), is_dir=True)
        with DirChain.at(src_dir, src_name) as src, DirChain.at(dst_dir, dst_name) as dst:
            if src.identity != (st.st_dev, st.st_ino):
                raise AgentStateLinkError(f"{self._label}: replaced while being copied; rerun")
            # Each directory's metadata is set once its entries are in: a default ACL set
            # earlier would be inherited by them, and their creation would change its times.
            pending = [(manifest, st, _copied_xattrs(src.fd))]
            for name, _kind, done in walk(src):
                if done:
                    _node, dir_st, xattrs = pending.pop()
                    self._set_metadata(dst.fd, dir_st, xattrs)
                    dst.leave()
                    continue
                entry_st = lstat_at(src.fd, name)
                if entry_st is None:
                    raise FileNotFoundError(errno.ENOENT, "vanished while copying", name)
                entries = t.cast(t.Dict[str, Manifest], pending[-1][0].entries)
                if not stat.S_ISDIR(entry_st.st_mode):
                    entries[name] = self._copy_entry(src.fd, name, dst.fd, entry_st, (dst_name, *dst.parts, name))
                    continue
                os.mkdir(name, 0o700, dir_fd=dst.fd)
                if not src.enter(name, expect=(entry_st.st_dev, entry_st.st_ino)):
                    raise AgentStateLinkError(f"{self._note_path((dst_name, *src.parts, name))}: replaced while being copied; rerun")
                dst.enter(name)
                entries[name] = Manifest(identity(entry_st), is_dir=True)
                pending.append((entries[name], entry_st, _copied_xattrs(src.fd)))
            self._set_metadata(dst.fd, st, pending[0][2], top_level=True)
        return manifest

    def _ownership(self, st: os.stat_result) -> t.Tuple[int, int]:
        return self.owner if self.owner is not None else (st.st_uid, st.st_gid)

    def _note_path(self, parts: t.Sequence[str]) -> str:
        """The source's path for a note, from the copy's path (whose first part is the copy's own name)."""
        return "/".join((self._label, *parts[1:]))

    def _copy_entry(self, src_dir: int, src_name: str, dst_dir: int, st: os.stat_result, parts: t.Tuple[str, ...]) -> Manifest:
        """Copy a link or a file into ``dst_dir`` as ``parts[-1]`` (``parts``: its path below the copy's root)."""
        kind = kind_of(st)
        dst_name = parts[-1]
        if kind == "link":
            os.symlink(os.readlink(src_name, dir_fd=src_dir), dst_name, dir_fd=dst_dir)
            os.chown(dst_name, *self._ownership(st), dir_fd=dst_dir, follow_symlinks=False)
            os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir, follow_symlinks=False)
        elif kind == "file":
            first = self._linked.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if first is not None and first[0] == self._root:
                self._link_again(first[1:], dst_dir, st, parts)
            else:
                self._copy_file(src_dir, src_name, dst_dir, st, parts)
        else:
            raise AgentStateLinkError(f"{src_name}: is a socket, FIFO or device; move it away, it cannot be migrated")
        return Manifest(identity(st), is_dir=False)

    def _copy_file(self, src_dir: int, src_name: str, dst_dir: int, st: os.stat_result, parts: t.Tuple[str, ...]) -> None:
        src = os.open(src_name, READ_FLAGS, dir_fd=src_dir)
        try:
            before = os.fstat(src)
            if (before.st_dev, before.st_ino) != (st.st_dev, st.st_ino):
                raise AgentStateLinkError(f"{src_name}: replaced while being copied; rerun")
            dst = os.open(parts[-1], CREATE_FLAGS, 0o600, dir_fd=dst_dir)
            try:
                complete = _copy_data(src, dst, before)
                after = os.fstat(src)
                if identity(after) != identity(before) or not complete or os.fstat(dst).st_size != before.st_size:
                    raise AgentStateLinkError(f"{src_name}: changed while being copied; nothing was removed, rerun")
                self._set_metadata(dst, st, _copied_xattrs(src), parts, top_level=len(parts) == 1)
                if st.st_nlink > 1:
                    self._linked[(st.st_dev, st.st_ino)] = (self._root, parts, os.fstat(dst).st_ino, identity(before))
            finally:
                os.close(dst)
        finally:
            os.close(src)

    def _link_again(
        self, first: t.Tuple[t.Tuple[str, ...], int, Identity], dst_dir: int, st: os.stat_result, parts: t.Tuple[str, ...],
    ) -> None:
        """Make a further name of an already copied file a hard link to that copy, as ``cp -a`` does."""
        first_parts, first_ino, first_identity = first
        if identity(st) != first_identity:
            raise AgentStateLinkError(f"{self._note_path(parts)}: changed while being copied; nothing was removed, rerun")
        first_dir = walk_at(self._root_fd, first_parts[:-1])  # from the copy's root again, no link followed
        if first_dir is None:
            raise AgentStateLinkError(f"{self._note_path(parts)}: the copy it is linked to vanished while being copied; rerun")
        try:
            os.link(first_parts[-1], parts[-1], src_dir_fd=first_dir, dst_dir_fd=dst_dir, follow_symlinks=False)
        finally:
            os.close(first_dir)
        made = lstat_at(dst_dir, parts[-1])
        if made is None or made.st_ino != first_ino:
            if made is not None:
                os.unlink(parts[-1], dir_fd=dst_dir)
            raise AgentStateLinkError(f"{self._note_path(parts)}: the copy it is linked to was replaced while being copied; rerun")

    def _set_metadata(
        self, fd: int, st: os.stat_result, xattrs: t.List[t.Tuple[str, bytes]], parts: t.Sequence[str] = (),
        top_level: bool = False,
    ) -> None:
        """Give a copy its source's owner (or ``owner``), extended attributes, mode and times
        (``parts``: a file's path below the copy's root, for notes).

        chown comes first: it clears set-id bits and capabilities, which are set again after it
        only while the copy keeps its source's owner.
        """
        owner = self._ownership(st)
        os.fchown(fd, *owner)
        mode = stat.S_IMODE(st.st_mode)
        if owner != (st.st_uid, st.st_gid) and stat.S_ISREG(st.st_mode):
            dropped = [what for what, present in (
                ("setuid bit", mode & stat.S_ISUID),
                ("setgid bit", mode & stat.S_ISGID),
                ("file capabilities (security.capability)", any(name == CAPABILITY_XATTR for name, _value in xattrs)),
            ) if present]
            if dropped:
                mode &= ~(stat.S_ISUID | stat.S_ISGID)
                xattrs = [(name, value) for name, value in xattrs if name != CAPABILITY_XATTR]
                self.notes.append(
                    f"{self._note_path(parts)}: {' and '.join(dropped)} dropped from its copy, which belongs to "
                    f"uid {owner[0]} gid {owner[1]} instead of uid {st.st_uid} gid {st.st_gid}"
                )
        if top_level:
            _drop_inherited_acls(fd, xattrs)
        for name, value in xattrs:
            try:
                os.setxattr(fd, name, value)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EINVAL):
                    raise
                note = f"{self._label}: extended attribute {name} not kept by its copy ({os.strerror(exc.errno)})"
                if note not in self.notes:  # once per attribute, not once per file
                    self.notes.append(note)
        os.fchmod(fd, mode)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copied_xattrs(fd: int) -> t.List[t.Tuple[str, bytes]]:
    """The extended attributes of an open file or directory that its copy keeps (see COPIED_XATTRS)."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    found = []
    for name in names:
        if name.startswith(USER_XATTR_PREFIX) or name in COPIED_XATTRS:
            try:
                found.append((name, os.getxattr(fd, name)))
            except OSError as exc:
                if exc.errno != errno.ENODATA:  # removed since it was listed
                    raise
    return found


def _drop_inherited_acls(fd: int, xattrs: t.Sequence[t.Tuple[str, bytes]]) -> None:
    """Remove the ACLs a new entry inherited from its directory's default ACL that its source lacks."""
    kept = {name for name, _value in xattrs}
    for name in (ACL_ACCESS_XATTR, ACL_DEFAULT_XATTR):
        if name in kept:
            continue
        try:
            os.removexattr(fd, name)
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise


def find_unmovable(dir_fd: int, name: str) -> t.Optional[str]:
    """The relative path of the first socket, FIFO or device in an entry's tree (links not followed)."""
    kind = kind_of(lstat_at(dir_fd, name))
    if kind == "other":
        return name
    if kind != "directory":
        return None
    with DirChain.at(dir_fd, name) as chain:
        for child, child_kind, done in walk(chain, skip=("file", "link")):  # the bulk of a tree, passed over
            if child_kind == "other":
                return "/".join((name, *chain.parts, child))
            if child_kind == "directory" and not done:
                chain.enter(child)
    return None


def list_dir(fd: int) -> t.List[str]:
    """Names in an open directory."""
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


def _copy_data(src: int, dst: int, st: os.stat_result) -> bool:
    """Copy a file (``st``: its status) into a new empty one, leaving its holes holes.

    Returns False when the source ended early (it shrank meanwhile).
    """
    position, size = 0, st.st_size
    for start, end in data_extents(src, st):
        if start != position:
            os.lseek(dst, start, os.SEEK_SET)
        if not _copy_range(src, dst, start, end):
            return False
        position = end
    if position != size:
        os.ftruncate(dst, size)  # a hole up to the end
    return True


def _copy_range(src: int, dst: int, start: int, end: int) -> bool:
    """Copy bytes ``start`` to ``end`` of ``src`` to ``dst``'s position, in the kernel where possible."""
    offset = start
    try:
        while offset < end:
            sent = os.sendfile(dst, src, offset, end - offset)
            if sent == 0:
                return False
            offset += sent
        return True
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS) or offset != start:
            raise
    while offset < end:
        chunk = os.pread(src, min(COPY_CHUNK, end - offset), offset)
        if not chunk:
            return False
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        offset += len(chunk)
    return True


def remove_copied(dir_fd: int, name: str, manifest: Manifest) -> bool:
    """Remove what ``manifest`` says was copied and is unchanged since; keep anything else.

    Returns True when the entry is gone.  A directory that still holds unrecorded entries
    (written after the copy) stays, with those entries, and False is returned.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return True
    if not stat.S_ISDIR(st.st_mode):
        if manifest.entries is not None or manifest.identity != identity(st):
            return False
        os.unlink(name, dir_fd=dir_fd)
        return True
    if manifest.entries is None or manifest.identity[:2] != (st.st_dev, st.st_ino):
        return False
    with DirChain.at(dir_fd, name) as chain:
        if chain.identity != (st.st_dev, st.st_ino):
            return False
        make_writable(chain.fd)
        recorded, complete = [manifest], [True]  # per directory walked into
        for child, _kind, done in walk(chain):
            if done:
                recorded.pop()
                if complete.pop():
                    complete[-1] &= _rmdir_if_empty(chain.fd, child)
                else:
                    complete[-1] = False
                continue
            entry = t.cast(t.Dict[str, Manifest], recorded[-1].entries).get(child)
            child_st = lstat_at(chain.fd, child)
            if child_st is None:
                continue
            if entry is None:
                complete[-1] = False
            elif stat.S_ISDIR(child_st.st_mode):
                if entry.entries is not None and entry.identity[:2] == (child_st.st_dev, child_st.st_ino) \
                        and chain.enter(child, expect=entry.identity[:2]):
                    make_writable(chain.fd)
                    recorded.append(entry)
                    complete.append(True)
                else:
                    complete[-1] = False
            elif entry.entries is None and entry.identity == identity(child_st):
                os.unlink(child, dir_fd=chain.fd)
            else:
                complete[-1] = False
    return complete[0] and _rmdir_if_empty(dir_fd, name)


def make_writable(fd: int) -> None:
    """Give a directory of this account's own, which it is emptying, write permission for its
    owner (a read-only directory, 0555, in the agents' state): root needed none, the account does."""
    st = os.fstat(fd)
    if st.st_uid == os.geteuid() and not st.st_mode & stat.S_IWUSR:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)


def move_at(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """rename_noreplace_at, also for an entry of this account's own in (or being) a read-only
    directory: write permission is given to the directories it leaves (they are being emptied),
    and a directory moved to another parent keeps its mode."""
    try:
        rename_noreplace_at(src_dir, src, dst_dir, dst)
        return
    except PermissionError:
        make_writable(src_dir)
    st = lstat_at(src_dir, src)
    if st is None or not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & stat.S_IWUSR:
        rename_noreplace_at(src_dir, src, dst_dir, dst)
        return
    fd = open_dir_at(src_dir, src)  # moving a directory rewrites its "..": it must be writable
    try:
        os.fchmod(fd, stat.S_IMODE(st.st_mode) | stat.S_IWUSR)
        try:
            rename_noreplace_at(src_dir, src, dst_dir, dst)
        finally:
            os.fchmod(fd, stat.S_IMODE(st.st_mode))
    finally:
        os.close(fd)


def _rmdir_if_empty(dir_fd: int, name: str) -> bool:
    """rmdir, unless an entry appeared in the directory meanwhile (then False: it stays)."""
    try:
        os.rmdir(name, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise
        return False
    return True


def remove_tree_at(dir_fd: int, name: str) -> None:
    """Remove a tree of our own copies (staging, an interrupted restore) without following links."""
    _remove_dirs(dir_fd, name, lambda parent_fd, child, _parts: os.unlink(child, dir_fd=parent_fd))


def remove_emptied_dirs(parent_fd: int, name: str, path: str) -> None:
    """Remove a home directory whose content has all been moved: rmdir only, so nothing else can go."""

    def refuse(_parent_fd: int, child: str, parts: t.Tuple[str, ...]) -> None:
        raise AgentStateLinkError(f"{os.path.join(path, *parts, child)}: appeared during migration; nothing lost, rerun")

    _remove_dirs(parent_fd, name, refuse)


def _remove_dirs(dir_fd: int, name: str, remove: t.Callable[[int, str, t.Tuple[str, ...]], None]) -> None:
    """Remove an entry's tree: its directories with rmdir, anything else with ``remove``."""
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        remove(dir_fd, name, ())
        return
    with DirChain.at(dir_fd, name) as chain:
        make_writable(chain.fd)
        for child, kind, done in walk(chain):
            if done:
                os.rmdir(child, dir_fd=chain.fd)
            elif kind == "directory":
                chain.enter(child)
                make_writable(chain.fd)
            else:
                remove(chain.fd, child, chain.parts)
    os.rmdir(name, dir_fd=dir_fd)


def replace_with_symlink(dir_fd: int, name: str, target: str) -> None:
    """Make ``name`` a symlink to ``target`` atomically (via a temporary link and rename).

    Only a missing entry, a symlink or an empty directory (rmdir refuses any other) is replaced.
    A link is swapped by an atomic exchange, so that a file saved there in the meantime comes
    back instead of being overwritten; anything else (a file written after the run copied it,
    say) is refused: no content can be lost here.  The link is owned by whoever runs this, the
    account that owns the state (see _privsep).
    """
    tmp = stale_link_name(name)
    remove_stale_link(dir_fd, name)
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        st = lstat_at(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=dir_fd)
            st = None
        if st is None:
            rename_noreplace_at(dir_fd, tmp, dir_fd, name)
            return
        if not stat.S_ISLNK(st.st_mode):
            raise AgentStateLinkError(
                f"{name}: a {kind_of(st)} stands there (written after the run copied it); nothing was replaced, rerun"
            )
        replaced = swap_at(dir_fd, tmp, name)
        if replaced is not None and not stat.S_ISLNK(replaced.st_mode):
            swap_at(dir_fd, tmp, name)  # a file saved meanwhile: put it back
            raise AgentStateLinkError(f"{name}: a file was saved there while the link was replaced; kept it, rerun")
    finally:
        if lstat_at(dir_fd, tmp) is not None:
            os.unlink(tmp, dir_fd=dir_fd)


RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def rename_noreplace_at(src_dir: int, src: str, dst_dir: int, dst: str) -> None:
    """rename(2) that fails with EEXIST instead of replacing an entry that appeared at ``dst``."""
    if not _renameat2(src_dir, src, dst_dir, dst, RENAME_NOREPLACE):
        if lstat_at(dst_dir, dst) is not None:  # no renameat2 here: the best a plain rename allows
            raise FileExistsError(errno.EEXIST, "File exists", dst)
        os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)


def swap_at(dir_fd: int, new: str, name: str) -> t.Optional[os.stat_result]:
    """Put ``new`` at ``name`` and whatever stood at ``name`` at ``new``, atomically, and return
    the status of what was replaced.  Without renameat2, a plain rename (None is returned)."""
    if exchange_at(dir_fd, new, name):
        return lstat_at(dir_fd, new)
    os.rename(new, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    return None


def exchange_at(dir_fd: int, first: str, second: str) -> bool:
    """Exchange two entries of a directory atomically; False (nothing done) where unsupported."""
    return _renameat2(dir_fd, first, dir_fd, second, RENAME_EXCHANGE)


def _renameat2(src_dir: int, src: str, dst_dir: int, dst: str, flags: int) -> bool:
    """renameat2(2); False when the kernel, libc or filesystem lacks it."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), dst)


def stale_link_name(name: str) -> str:
    return f".{name}.agent-state-link.tmp"


def remove_stale_link(dir_fd: int, name: str) -> None:
    """Remove the temporary link an interrupted run left beside ``name`` (only if it is a link)."""
    tmp = stale_link_name(name)
    st = lstat_at(dir_fd, tmp)
    if st is None:
        return
    if not stat.S_ISLNK(st.st_mode):
        raise AgentStateLinkError(f"{tmp}: exists beside {name} and is not a symlink; move it away")
    os.unlink(tmp, dir_fd=dir_fd)


def open_private_dir(dir_fd: int, name: str) -> t.Optional[int]:
    """Open a directory only this process's user can have written; None when absent or untrusted."""
    try:
        fd = open_dir_at(dir_fd, name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        return None
    return fd


F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
F_GETLEASE = getattr(fcntl, "F_GETLEASE", 1025)
F_SETSIG = getattr(fcntl, "F_SETSIG", 10)


@contextlib.contextmanager
def read_lease(dir_fd: int, name: str, expected: Identity, wait: float = 2.0) -> t.Iterator[t.Optional[int]]:
    """Hold a read lease (fcntl F_SETLEASE) on the regular file ``name`` while it is moved: the
    kernel then marks the lease broken as soon as any process opens the file for writing, so the
    mover can tell whether a write may have reached it (``lease_broken``).  Yields the leased
    descriptor, or None where leases are not available (another filesystem, not the file's owner).

    A file open for writing right now cannot be leased: tried for ``wait`` seconds, then refused.
    The break is signalled with SIGURG, ignored by default, instead of SIGIO, which would kill.
    """
    fd = os.open(name, READ_FLAGS, dir_fd=dir_fd)
    try:
        if identity(os.fstat(fd)) != expected:
            raise AgentStateLinkError(f"{name}: replaced while it was being moved; nothing lost, rerun")
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.fcntl(fd, F_SETSIG, signal.SIGURG)
                fcntl.fcntl(fd, F_SETLEASE, fcntl.F_RDLCK)
                break
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EACCES, errno.ENOTSUP):
                    os.close(fd)
                    fd = -1
                    break
                if exc.errno != errno.EAGAIN:
                    raise
                if time.monotonic() >= deadline:
                    raise AgentStateLinkError(
                        f"{name}: a program holds it open for writing; stop it (or rerun when it is done), nothing was changed"
                    ) from None
                time.sleep(0.01)
        yield None if fd < 0 else fd
    finally:
        if fd >= 0:
            os.close(fd)  # releases the lease


def lease_broken(fd: t.Optional[int]) -> bool:
    """Whether a process opened the leased file for writing since the lease was taken."""
    return fd is not None and fcntl.fcntl(fd, F_GETLEASE) != fcntl.F_RDLCK
