# SPDX-License-Identifier: GPL-3.0-or-later
"""Trees that break naive code: chains of directories deeper than PATH_MAX and Python's recursion
limit, sparse files, POSIX ACLs; built and read back with plain descriptors, independently of _fs."""

from __future__ import annotations

import contextlib
import os
import resource
import struct
import subprocess
import typing as t

DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
DEPTH = 10_000
LEAF = "leaf"
LEVEL = "d"

# POSIX ACL xattr format (linux/posix_acl_xattr.h): a version, then (tag, permissions, id) entries.
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
NO_ID = 0xFFFFFFFF


def acl(*entries: t.Tuple[int, int, int]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)


# rwx for the owner, r for uid 1234, r-x for the group and the mask, nothing for others
EXTENDED_ACL = acl((ACL_USER_OBJ, 7, NO_ID), (ACL_USER, 4, 1234), (ACL_GROUP_OBJ, 5, NO_ID), (ACL_MASK, 5, NO_ID), (ACL_OTHER, 0, NO_ID))


def make_chain(parent: str, name: str, depth: int = DEPTH, leaf: t.Optional[bytes] = b"bottom") -> None:
    """``parent/name/d/d/...``: ``depth`` directories, the file ``leaf`` in the last one (unless None).
    Paths that long (20 KB) only work through descriptors."""
    fd = os.open(parent, DIR)
    try:
        for level in range(depth):
            part = name if level == 0 else LEVEL
            os.mkdir(part, dir_fd=fd)
            child = os.open(part, DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        if leaf is not None:
            write_at(fd, LEAF, leaf)
    finally:
        os.close(fd)


def write_at(dir_fd: int, name: str, content: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, content)
    finally:
        os.close(fd)


@contextlib.contextmanager
def at_level(parent: str, name: str, level: int) -> t.Iterator[int]:
    """The directory ``level`` levels down a chain (1: ``name`` itself), open."""
    fd = os.open(parent, DIR)
    try:
        for index in range(level):
            child = os.open(name if index == 0 else LEVEL, DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        yield fd
    finally:
        os.close(fd)


def read_chain(parent: str, name: str) -> t.Tuple[int, t.Dict[int, t.Dict[str, bytes]]]:
    """A chain's depth and, per level that holds files, their contents; fails on anything else."""
    files: t.Dict[int, t.Dict[str, bytes]] = {}
    fd = os.open(os.path.join(parent, name), DIR)
    depth = 1
    try:
        while True:
            names = set(os.listdir(fd))
            for file_name in sorted(names - {LEVEL}):
                file_fd = os.open(file_name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)  # a FIFO reads as b""
                try:
                    files.setdefault(depth, {})[file_name] = os.read(file_fd, 1 << 20)
                finally:
                    os.close(file_fd)
            if LEVEL not in names:
                return depth, files
            child = os.open(LEVEL, DIR, dir_fd=fd)
            os.close(fd)
            fd = child
            depth += 1
    finally:
        os.close(fd)


def remove_deep(path: str) -> None:
    """rm -rf copes with any depth (shutil.rmtree recurses in Python 3.11)."""
    subprocess.run(["rm", "-rf", "--one-file-system", path], check=True)


@contextlib.contextmanager
def descriptor_limit(spare: int) -> t.Iterator[None]:
    """Allow only ``spare`` descriptors more than are open now: code holding a descriptor per
    level of a deep tree fails with EMFILE.  The limit bounds descriptor numbers, so the free
    numbers below the highest one in use are taken up first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers: t.List[int] = []
    while True:
        filler = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        if filler > highest:
            os.close(filler)
            break
        fillers.append(filler)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + spare, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for filler in fillers:
            os.close(filler)


def make_sparse(path: str, size: int, data: t.Mapping[int, bytes]) -> None:
    """A file of ``size`` bytes that holds ``data`` (offset: bytes) and holes elsewhere."""
    with open(path, "wb") as handle:
        for offset, chunk in data.items():
            handle.seek(offset)
            handle.write(chunk)
        handle.truncate(size)


def allocated(path: str) -> int:
    """Bytes a file occupies on its filesystem."""
    return os.lstat(path).st_blocks * 512
