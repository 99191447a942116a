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
    fd = os.open("/", DIR_FLAGS)
    try:
        for part in [p for p in path.split("/") if p]:
            st = lstat_at(fd, part)
            if st is None:
                os.close(fd)
                return None
            if stat.S_ISLNK(st.st_mode):
                parent = os.fstat(fd)
                if st.st_uid != 0 or parent.st_uid != 0 or parent.st_mode & 0o022:
                    raise AgentStateLinkError(
                        f"{path}: component {part!r} is a symlink owned by uid {st.st_uid} in a directory owned by uid "
                        f"{parent.st_uid} with mode {stat.S_IMODE(parent.st_mode):04o}; only a root-owned link in a "
                        "directory that only root can write is followed"
                    )
                next_fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            elif stat.S_ISDIR(st.st_mode):
                next_fd = open_dir_at(fd, part)
            else:
                raise AgentStateLinkError(f"{path}: component {part!r} is not a directory")
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def is_mount_point_at(dir_fd: int, name: str) -> bool:
    """Whether the entry ``name`` is a mount point (a bind mount on the same filesystem included)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        inner, outer = _mount_id(fd), _mount_id(dir_fd)
        if inner is None or outer is None:  # no /proc: a different device is all that can be told
            return os.fstat(fd).st_dev != os.fstat(dir_fd).st_dev
        return inner != outer
    finally:
        os.close(fd)


def _mount_id(fd: int) -> t.Optional[int]:
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"mnt_id:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def walk_at(anchor_fd: int, parts: t.Sequence[str]) -> t.Optional[int]:
    """Open ``anchor/parts...`` strictly (no links); None when a component is missing."""
    fd = os.dup(anchor_fd)
    try:
        for part in parts:
            try:
                next_fd = open_dir_at(fd, part)
            except FileNotFoundError:
                os.close(fd)
                return None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


def make_dir_at(dir_fd: int, name: str, uid: int, gid: int, mode: int) -> None:
    """Create a directory and set its owner and mode through a no-follow descriptor.

    A directory that mkdir cannot create with its final owner and mode is made under a temporary
    name beside ``name`` and renamed into place once owned and moded: killed in between, a run
    must not leave (say) a root-owned 0700 parent that the agents' user cannot enter, which no
    rerun would re-own.  Our own private directories keep plain mkdir, whose EEXIST serializes
    concurrent creators.
    """
    private = (uid, gid, mode) == (os.geteuid(), os.getegid(), 0o700)
    if not private and lstat_at(dir_fd, name) is not None:
        raise FileExistsError(errno.EEXIST, "File exists", name)
    new = name if private else _new_dir_name(dir_fd, name)
    os.mkdir(new, 0o700, dir_fd=dir_fd)
    fd = open_dir_at(dir_fd, new)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    if new != name:
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
    """Compare two regular files or two symlinks byte for byte, without following links."""
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
            while True:
                a_chunk = os.read(a_fd, 1024 * 1024)
                if a_chunk != os.read(b_fd, 1024 * 1024):
                    return False
                if not a_chunk:
                    return True
        finally:
            os.close(b_fd)
    finally:
        os.close(a_fd)


def is_empty_dir(fd: int) -> bool:
    with os.scandir(fd) as entries:
        return next(entries, None) is None


class Copier:
    """Copy trees without following links, recording what was copied so that only that is removed.

    Files keep their mode and times; ownership is kept (like ``mv``) unless ``owner`` is given.
    """

    def __init__(self, owner: t.Optional[t.Tuple[int, int]] = None) -> None:
        self.owner = owner
        self.files = 0
        self.bytes = 0

    def copy(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str) -> t.Dict[str, Identity]:
        """Copy one entry (recursively); return the manifest of the source, keyed by relative path."""
        manifest: t.Dict[str, Identity] = {}
        self._copy(src_dir, src_name, dst_dir, dst_name, "", manifest)
        return manifest

    def _ownership(self, st: os.stat_result) -> t.Tuple[int, int]:
        return self.owner if self.owner is not None else (st.st_uid, st.st_gid)

    def _copy(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str, rel: str, manifest: t.Dict[str, Identity]) -> None:
        st = lstat_at(src_dir, src_name)
        kind = kind_of(st)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, "vanished while copying", src_name)
        uid, gid = self._ownership(st)
        if kind == "link":
            os.symlink(os.readlink(src_name, dir_fd=src_dir), dst_name, dir_fd=dst_dir)
            os.chown(dst_name, uid, gid, dir_fd=dst_dir, follow_symlinks=False)
            os.utime(dst_name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=dst_dir, follow_symlinks=False)
        elif kind == "file":
            self._copy_file(src_dir, src_name, dst_dir, dst_name, st, (uid, gid))
        elif kind == "directory":
            self._copy_dir(src_dir, src_name, dst_dir, dst_name, st, (uid, gid), rel, manifest)
        else:
            raise AgentStateLinkError(f"{src_name}: is a socket, FIFO or device; move it away, it cannot be migrated")
        manifest[rel] = identity(st)

    def _copy_file(self, src_dir: int, src_name: str, dst_dir: int, dst_name: str, st: os.stat_result, owner: t.Tuple[int, int]) -> None:
        src = os.open(src_name, READ_FLAGS, dir_fd=src_dir)
        try:
            before = os.fstat(src)
            if (before.st_dev, before.st_ino) != (st.st_dev, st.st_ino):
                raise AgentStateLinkError(f"{src_name}: replaced while being copied; rerun")
            dst = os.open(dst_name, CREATE_FLAGS, 0o600, dir_fd=dst_dir)
            try:
                copied = _copy_bytes(src, dst, before.st_size)
                after = os.fstat(src)
                if identity(after) != identity(before) or copied != before.st_size or os.fstat(dst).st_size != copied:
                    raise AgentStateLinkError(f"{src_name}: changed while being copied; nothing was removed, rerun")
                _set_metadata(dst, st, owner)
            finally:
                os.close(dst)
        finally:
            os.close(src)
        self.files += 1
        self.bytes += st.st_size

    def _copy_dir(
        self, src_dir: int, src_name: str, dst_dir: int, dst_name: str, st: os.stat_result,
        owner: t.Tuple[int, int], rel: str, manifest: t.Dict[str, Identity],
    ) -> None:
        os.mkdir(dst_name, 0o700, dir_fd=dst_dir)
        src = open_dir_at(src_dir, src_name)
        try:
            dst = open_dir_at(dst_dir, dst_name)
            try:
                for name in list_dir(src):
                    self._copy(src, name, dst, name, f"{rel}/{name}" if rel else name, manifest)
                _set_metadata(dst, st, owner)
            finally:
                os.close(dst)
        finally:
            os.close(src)


def _set_metadata(fd: int, st: os.stat_result, owner: t.Tuple[int, int]) -> None:
    """Give a copy its source's mode and times, and ``owner`` (chown first: it clears set-id bits)."""
    os.fchown(fd, *owner)
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def find_unmovable(dir_fd: int, name: str) -> t.Optional[str]:
    """The relative path of the first socket, FIFO or device in an entry's tree (links not followed)."""
    kind = kind_of(lstat_at(dir_fd, name))
    if kind == "other":
        return name
    if kind != "directory":
        return None
    fd = open_dir_at(dir_fd, name)
    try:
        # The directory entries' types (d_type) spare an lstat per file: regular files and links,
        # the bulk of a tree, are passed over; a type the filesystem does not report is lstat'ed.
        with os.scandir(fd) as entries:
            others = [entry.name for entry in entries if not (entry.is_file(follow_symlinks=False) or entry.is_symlink())]
        for child in others:
            found = find_unmovable(fd, child)
            if found is not None:
                return f"{name}/{found}"
    finally:
        os.close(fd)
    return None


def list_dir(fd: int) -> t.List[str]:
    """Names in an open directory."""
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


def _copy_bytes(src: int, dst: int, size: int) -> int:
    """Copy a file's bytes in the kernel where possible; return the number copied."""
    copied = 0
    try:
        while True:
            # Ask for all that is left in one call (at least a chunk, so that reading on to EOF
            # notices a file that grew: the caller then refuses the copy as changed).
            sent = os.sendfile(dst, src, copied, max(size - copied, COPY_CHUNK))
            if sent == 0:
                return copied
            copied += sent
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS) or copied:
            raise
    os.lseek(src, 0, os.SEEK_SET)
    while True:
        chunk = os.read(src, COPY_CHUNK)
        if not chunk:
            return copied
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        copied += len(chunk)


def remove_copied(dir_fd: int, name: str, manifest: t.Mapping[str, Identity], rel: str = "") -> bool:
    """Remove what ``manifest`` says was copied and is unchanged since; keep anything else.

    Returns True when the entry is gone.  A directory that still holds unrecorded entries
    (written after the copy) stays, with those entries, and False is returned.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return True
    recorded = manifest.get(rel)
    if stat.S_ISDIR(st.st_mode):
        if recorded is None or recorded[:2] != (st.st_dev, st.st_ino):
            return False
        fd = open_dir_at(dir_fd, name)
        try:
            complete = True
            for child in list_dir(fd):
                complete &= remove_copied(fd, child, manifest, f"{rel}/{child}" if rel else child)
        finally:
            os.close(fd)
        if not complete:
            return False
        os.rmdir(name, dir_fd=dir_fd)
        return True
    if recorded is None or recorded != identity(st):
        return False
    os.unlink(name, dir_fd=dir_fd)
    return True


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
