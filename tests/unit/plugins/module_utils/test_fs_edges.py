# SPDX-License-Identifier: GPL-3.0-or-later
"""_fs on real trees that break naive code: 10,000 levels deep within a few descriptors, sparse
files, extended attributes, ACLs and hard links kept by copies, set-id bits and capabilities
dropped (and said so) when a copy changes owner, and the removal rule for all of them."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
import typing as t

import pytest

from edge_trees import (
    DEPTH, EXTENDED_ACL, LEAF, LEVEL, allocated, at_level, descriptor_limit, make_chain, make_sparse, read_chain, remove_deep,
    write_at,
)

from ansible_collections.agor.persistence.plugins.module_utils import _fs
from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

GiB = 1 << 30
# Descriptors a walk may hold: a copy walks two chains (source and copy) plus a file each side.
SPARE_DESCRIPTORS = 2 * _fs.MAX_OPEN_DIRS + 8


@pytest.fixture
def base(tmp_path):
    """A scratch directory, on /dev/shm when that is a tmpfs: 10,000 mkdir and rmdir on this
    machine's ext4 take 30 s, on a tmpfs 0.3 s."""
    shm = "/dev/shm"
    path = tempfile.mkdtemp(dir=shm) if os.path.isdir(shm) and os.access(shm, os.W_OK) else str(tmp_path)
    yield path
    remove_deep(path)


@contextlib.contextmanager
def opened(path: str) -> t.Iterator[int]:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_ten_thousand_levels_are_copied_compared_and_removed_within_a_few_descriptors(base):
    make_chain(base, "tree")
    with opened(base) as fd:
        with descriptor_limit(SPARE_DESCRIPTORS):
            manifest = _fs.Copier().copy(fd, "tree", fd, "copy")
            assert _fs.find_unmovable(fd, "tree") is None
            with opened(os.path.join(base, "tree")) as tree_fd, opened(os.path.join(base, "copy")) as copy_fd:
                compared = [(entry.parts, entry.dst_kind, _fs.same_content_at(entry.src_dir, entry.name, entry.dst_dir, entry.name))
                            for entry in _fs.walk_merge(tree_fd, copy_fd)]
            assert compared == [((LEVEL,) * (DEPTH - 1) + (LEAF,), "file", True)], "only the leaf differs from a directory pair"
            assert read_chain(base, "copy") == (DEPTH, {DEPTH: {LEAF: b"bottom"}})

            assert _fs.remove_copied(fd, "tree", manifest)
            _fs.remove_tree_at(fd, "copy")
    assert os.listdir(base) == []


def test_deep_removal_keeps_what_was_written_after_the_copy(base):
    """Removal takes only what the copy recorded: a file written half-way down stays, with its parents."""
    make_chain(base, "tree")
    with opened(base) as fd:
        with descriptor_limit(SPARE_DESCRIPTORS):
            manifest = _fs.Copier().copy(fd, "tree", fd, "copy")
            with at_level(base, "tree", DEPTH // 2) as middle:
                write_at(middle, "late.jsonl", b"written after the copy")
            assert not _fs.remove_copied(fd, "tree", manifest)
    assert read_chain(base, "tree") == (DEPTH // 2, {DEPTH // 2: {"late.jsonl": b"written after the copy"}})


def test_a_fifo_deep_down_is_found_and_emptied_chains_are_removed(base):
    make_chain(base, "tree", leaf=None)
    with at_level(base, "tree", DEPTH) as bottom:
        os.mkfifo("pipe", dir_fd=bottom)
    make_chain(base, "emptied", leaf=None)
    with opened(base) as fd:
        with descriptor_limit(SPARE_DESCRIPTORS):
            assert _fs.find_unmovable(fd, "tree") == "/".join(("tree",) + (LEVEL,) * (DEPTH - 1) + ("pipe",))
            _fs.remove_emptied_dirs(fd, "emptied", "/home/agor/.claude")
            with pytest.raises(AgentStateLinkError, match=r"^/home/agor/\.claude/d/d/.*/d/pipe: appeared during migration"):
                _fs.remove_emptied_dirs(fd, "tree", "/home/agor/.claude")
    assert sorted(os.listdir(base)) == ["tree"]
    assert read_chain(base, "tree")[0] == DEPTH, "nothing of a tree holding a file is removed"


def test_a_walk_stops_when_a_directory_it_came_through_was_moved(base):
    """Going back up past the descriptors it closed, a walk reopens `..` and checks it is the same directory."""
    depth = 3 * _fs.MAX_OPEN_DIRS
    make_chain(base, "tree", depth=depth)
    with opened(base) as fd, _fs.DirChain.at(fd, "tree") as chain:
        for _level in range(depth - 1):
            chain.enter(LEVEL)
        moved = os.path.join(base, "tree", *[LEVEL] * 4)
        os.rename(moved, os.path.join(base, "moved"))  # level 5 now hangs elsewhere
        left = 0
        with pytest.raises(AgentStateLinkError, match="moved while it was walked"):
            while chain.depth:
                chain.leave()
                left += 1
        assert left == depth - 1 - 4, "up to the moved directory, and not out of it"


def test_sparse_copy_keeps_its_holes(base):
    source = os.path.join(base, "sparse")
    make_sparse(source, GiB, {0: b"head", GiB // 2: b"m" * 4096})  # a hole at the end too
    with opened(base) as fd:
        manifest = _fs.Copier().copy(fd, "sparse", fd, "copy")
        assert _fs.same_content_at(fd, "sparse", fd, "copy")
    copy = os.path.join(base, "copy")
    assert os.path.getsize(copy) == GiB
    assert allocated(copy) <= allocated(source) + 64 * 1024, "the holes must stay holes"
    with open(copy, "rb") as handle:
        assert handle.read(4) == b"head"
        handle.seek(GiB // 2 - 1)
        assert handle.read(4098) == b"\0" + b"m" * 4096 + b"\0"
    with opened(base) as fd:
        assert _fs.remove_copied(fd, "sparse", manifest)


@pytest.mark.parametrize("other, same", [
    ({GiB: b"data"}, True),                               # same data at the same place
    ({GiB: b"date"}, False),                              # one byte differs inside the data
    ({GiB: b"data", 5 * GiB: b"\0" * 8192}, True),        # zeros written where the first has a hole: same bytes
    ({GiB: b"data", 5 * GiB: b"x"}, False),               # data where the first has a hole
    ({GiB: b"data", 20 * GiB - 1: b"x"}, False),          # the last byte
], ids=["identical", "data-differs", "zeros-over-a-hole", "data-over-a-hole", "last-byte"])
def test_identical_content_reads_data_not_holes(base, other, same):
    """Two 20 GiB sparse files compare by the ranges that hold data in either (holes read as zeros)."""
    make_sparse(os.path.join(base, "a"), 20 * GiB, {GiB: b"data"})
    make_sparse(os.path.join(base, "b"), 20 * GiB, other)
    with opened(base) as fd:
        assert _fs.same_content_at(fd, "a", fd, "b") is same
        assert _fs.same_content_at(fd, "b", fd, "a") is same


def test_data_extents_of_a_dense_and_a_sparse_file(base):
    make_sparse(os.path.join(base, "sparse"), 64 << 20, {8 << 20: b"x" * 4096})
    with open(os.path.join(base, "dense"), "wb") as handle:
        handle.write(b"y" * 10000)
    for name, expected in (("dense", [(0, 10000)]), ("sparse", [(8 << 20, (8 << 20) + 4096)])):
        fd = os.open(os.path.join(base, name), os.O_RDONLY)
        try:
            assert _fs.data_extents(fd, os.fstat(fd)) == expected
        finally:
            os.close(fd)


def xattrs_of(path: str) -> dict:
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in os.listxattr(path, follow_symlinks=False)}


def test_copies_keep_user_xattrs_acls_and_hard_links(base):
    src = os.path.join(base, "src")
    os.makedirs(os.path.join(src, "sub"))
    for rel, content in (("a", "A"), ("sub/b", "B"), ("outside", "O")):
        with open(os.path.join(base if rel == "outside" else src, rel), "w", encoding="utf-8") as handle:
            handle.write(content)
    os.link(os.path.join(src, "a"), os.path.join(src, "sub", "a-again"))        # both names inside the tree
    os.link(os.path.join(base, "outside"), os.path.join(src, "from-outside"))  # the other name is not copied
    os.symlink("a", os.path.join(src, "link"))
    os.setxattr(os.path.join(src, "a"), "user.origin", b"session 1")
    os.setxattr(os.path.join(src, "sub"), "user.mark", b"\x00\xffbinary")
    os.setxattr(os.path.join(src, "sub", "b"), "system.posix_acl_access", EXTENDED_ACL)
    os.setxattr(os.path.join(src, "sub"), "system.posix_acl_access", EXTENDED_ACL)
    os.setxattr(os.path.join(src, "sub"), "system.posix_acl_default", EXTENDED_ACL)
    os.chmod(os.path.join(src, "sub"), 0o2750)  # setgid on a directory is no privilege: kept
    with opened(base) as fd:
        copier = _fs.Copier()
        manifest = copier.copy(fd, "src", fd, "copy")
    copy = os.path.join(base, "copy")
    for rel in ("a", "sub", "sub/b", "sub/a-again", "from-outside", ""):
        assert xattrs_of(os.path.join(copy, rel)) == xattrs_of(os.path.join(src, rel)), rel
        assert os.lstat(os.path.join(copy, rel)).st_mode == os.lstat(os.path.join(src, rel)).st_mode, rel
    assert xattrs_of(os.path.join(copy, "sub", "b"))["system.posix_acl_access"] == EXTENDED_ACL
    assert os.lstat(os.path.join(copy, "a")).st_ino == os.lstat(os.path.join(copy, "sub", "a-again")).st_ino
    assert os.lstat(os.path.join(copy, "a")).st_nlink == 2
    assert os.lstat(os.path.join(copy, "from-outside")).st_nlink == 1, "a name outside the tree is not linked to"
    assert copier.notes == []

    with opened(base) as fd:
        assert _fs.remove_copied(fd, "src", manifest), "hard-linked names are removed like any copied file"
    assert sorted(os.listdir(base)) == ["copy", "outside"]


def test_a_hard_linked_file_changed_after_the_copy_keeps_both_names(base):
    src = os.path.join(base, "src")
    os.makedirs(src)
    with open(os.path.join(src, "a"), "w", encoding="utf-8") as handle:
        handle.write("A")
    os.link(os.path.join(src, "a"), os.path.join(src, "b"))
    with opened(base) as fd:
        manifest = _fs.Copier().copy(fd, "src", fd, "copy")
        with open(os.path.join(src, "b"), "a", encoding="utf-8") as handle:
            handle.write(" and more")
        assert not _fs.remove_copied(fd, "src", manifest)
    assert sorted(os.listdir(src)) == ["a", "b"]


def test_hard_links_across_the_copies_of_one_copier(base):
    """A migration copies each entry of a state directory on its own, into one staging directory."""
    src = os.path.join(base, "src")
    os.makedirs(os.path.join(src, "one"))
    os.makedirs(os.path.join(src, "two"))
    os.makedirs(os.path.join(base, "staging"))
    with open(os.path.join(src, "one", "f"), "w", encoding="utf-8") as handle:
        handle.write("F")
    os.link(os.path.join(src, "one", "f"), os.path.join(src, "two", "f"))
    with opened(src) as src_fd, opened(os.path.join(base, "staging")) as staging_fd:
        copier = _fs.Copier()
        copier.copy(src_fd, "one", staging_fd, "1")
        copier.copy(src_fd, "two", staging_fd, "2")
    staging = os.path.join(base, "staging")
    assert os.lstat(os.path.join(staging, "1", "f")).st_ino == os.lstat(os.path.join(staging, "2", "f")).st_ino


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root: copies owned by another user, file capabilities")
    if shutil.which("setcap") is None:
        pytest.skip("needs setcap (libcap2-bin) to give a file capabilities")


def setcap(path: str) -> None:
    subprocess.run(["setcap", "cap_net_bind_service=ep", path], check=True, capture_output=True)


@pytest.mark.parametrize("owner", [None, (1001, 1001)], ids=["same-owner", "other-owner"])
def test_set_id_bits_and_capabilities_only_with_the_same_owner(base, as_root, owner):
    src = os.path.join(base, "tools")
    os.makedirs(src)
    for name, mode in (("setuid", 0o4755), ("setgid", 0o2755), ("capable", 0o755), ("plain", 0o755)):
        with open(os.path.join(src, name), "w", encoding="utf-8") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(os.path.join(src, name), mode)
    setcap(os.path.join(src, "capable"))
    capability = os.getxattr(os.path.join(src, "capable"), "security.capability")
    with opened(base) as fd:
        copier = _fs.Copier(owner=owner)
        copier.copy(fd, "tools", fd, "copy", source_path="/opt/seed/tools")
    copy = os.path.join(base, "copy")
    modes = {name: stat.S_IMODE(os.lstat(os.path.join(copy, name)).st_mode) for name in os.listdir(copy)}
    if owner is None:
        assert modes == {"setuid": 0o4755, "setgid": 0o2755, "capable": 0o755, "plain": 0o755}
        assert os.getxattr(os.path.join(copy, "capable"), "security.capability") == capability
        assert copier.notes == []
    else:
        assert modes == {"setuid": 0o755, "setgid": 0o755, "capable": 0o755, "plain": 0o755}
        assert "security.capability" not in os.listxattr(os.path.join(copy, "capable"))
        assert sorted(copier.notes) == [
            "/opt/seed/tools/capable: file capabilities (security.capability) dropped from its copy, "
            "which belongs to uid 1001 gid 1001 instead of uid 0 gid 0",
            "/opt/seed/tools/setgid: setgid bit dropped from its copy, which belongs to uid 1001 gid 1001 instead of uid 0 gid 0",
            "/opt/seed/tools/setuid: setuid bit dropped from its copy, which belongs to uid 1001 gid 1001 instead of uid 0 gid 0",
        ]
        assert {os.lstat(os.path.join(copy, name)).st_uid for name in modes} == {1001}


def test_a_copy_into_a_directory_with_a_default_acl_keeps_its_sources_permissions(base):
    """A new entry inherits its directory's default ACL; the copy of a source without ACLs must not."""
    os.makedirs(os.path.join(base, "home"))
    os.setxattr(os.path.join(base, "home"), "system.posix_acl_default", EXTENDED_ACL)
    with open(os.path.join(base, "plain"), "w", encoding="utf-8") as handle:
        handle.write("no ACL")
    os.chmod(os.path.join(base, "plain"), 0o640)
    with opened(base) as src_fd, opened(os.path.join(base, "home")) as home_fd:
        _fs.Copier().copy(src_fd, "plain", home_fd, "restored")
    restored = os.path.join(base, "home", "restored")
    assert xattrs_of(restored) == {}
    assert stat.S_IMODE(os.lstat(restored).st_mode) == 0o640
