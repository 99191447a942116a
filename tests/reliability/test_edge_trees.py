# SPDX-License-Identifier: GPL-3.0-or-later
"""Edge-case trees through the whole engine, across two real filesystems (home and volume on
tmpfs): a state tree 10,000 levels deep migrates, merges, backs up and rolls back; a 1 GiB sparse
file fits a 256 MiB volume; extended attributes, ACLs and hard links survive the copy; a seed file
that changes owner loses its set-id bits with a warning; and mount points are told apart."""

from __future__ import annotations

import collections
import os
import stat
import subprocess
import time

import pytest

from agent_tree import CLAUDE, Tree, outline, run_engine
from edge_trees import DEPTH, EXTENDED_ACL, LEAF, allocated, at_level, make_chain, make_sparse, read_chain, write_at
from fault_injection import run_with_faults
from guarantees import killed_before_each_call, assert_converged, end_state
from mounts import ImageSandbox

from ansible_collections.agor.persistence.plugins.module_utils import _fs

GiB, MiB = 1 << 30, 1 << 20
OWNER = {"owner": "1001", "group": "1001"}


def sandbox(base: str, mounts, home_size: str = "512m", volume_size: str = "512m") -> Tree:
    """A Tree whose home and volume are two tmpfs: every move is a copy across filesystems."""
    tree = Tree(base)
    mounts.tmpfs(tree.home, size=home_size)
    os.makedirs(tree.volume)
    mounts.tmpfs(tree.volume, size=volume_size)
    return tree


def run_as_predicted(params) -> dict:
    """Check mode, then the real run, which must do what check mode said."""
    predicted = run_engine(params, check_mode=True)
    result = run_engine(params)
    assert outline(predicted) == outline(result)
    return result


def find_below(root: str, name: str) -> bytes:
    """The content of the one file named ``name`` below ``root``, at any depth (paths beyond PATH_MAX)."""
    found = subprocess.run(["find", root, "-name", name, "-execdir", "cat", "{}", ";"], check=True, capture_output=True)
    return found.stdout


def test_ten_thousand_levels_migrate_merge_back_up_and_roll_back(reachable_base, mounts, figures):
    tree = sandbox(reachable_base, mounts)
    claude = tree("home:.claude")
    os.makedirs(claude)
    make_chain(claude, "deep")
    timings = {}

    started = time.monotonic()
    result = run_as_predicted(tree.params(CLAUDE))
    timings["migrate_s"] = round(time.monotonic() - started, 2)
    assert result["links"][0]["actions"] == ["create_directory", "move", "link"]
    assert os.readlink(claude) == tree("vol:.claude")
    assert read_chain(tree("vol:.claude"), "deep") == (DEPTH, {DEPTH: {LEAF: b"bottom"}})

    # A new container: the image's home holds the same deep tree, one new and one conflicting file at the bottom.
    os.unlink(claude)
    os.makedirs(claude)
    make_chain(claude, "deep")
    with at_level(claude, "deep", DEPTH) as bottom:
        write_at(bottom, "new.jsonl", b"new in this container")
        write_at(bottom, "conflict.json", b"the home's version")
    with at_level(tree("vol:.claude"), "deep", DEPTH) as bottom:
        write_at(bottom, "conflict.json", b"the volume's version")
    started = time.monotonic()
    result = run_as_predicted(tree.params(CLAUDE))
    timings["merge_s"] = round(time.monotonic() - started, 2)
    assert result["links"][0]["actions"] == ["backup", "move", "drop_duplicate", "link"]  # moves and backups, then dropped duplicates
    assert read_chain(tree("vol:.claude"), "deep") == (DEPTH, {DEPTH: {
        LEAF: b"bottom", "new.jsonl": b"new in this container", "conflict.json": b"the volume's version"}})
    assert find_below(os.path.join(tree.meta, "backups"), "conflict.json") == b"the home's version"

    started = time.monotonic()
    result = run_as_predicted(tree.params(CLAUDE, state="absent"))
    timings["rollback_s"] = round(time.monotonic() - started, 2)
    assert result["links"][0]["actions"] == ["restore"]
    assert not os.path.islink(claude)
    assert read_chain(claude, "deep") == read_chain(tree("vol:.claude"), "deep")
    figures(depth=DEPTH, **timings)


def test_sparse_gigabyte_fits_a_small_volume_and_compares_by_its_data(reachable_base, mounts, figures):
    tree = sandbox(reachable_base, mounts, home_size="256m", volume_size="256m")
    image = tree("home:.claude/disk.img")
    os.makedirs(os.path.dirname(image))
    make_sparse(image, GiB, {GiB // 2: b"s" * 4096})
    source_blocks = os.lstat(image).st_blocks

    started = time.monotonic()
    run_as_predicted(tree.params(CLAUDE))
    migrate_s = time.monotonic() - started
    copy = tree("vol:.claude/disk.img")
    assert os.path.getsize(copy) == GiB
    assert allocated(copy) <= 64 * 1024, "a sparse file costs its data, not its size"
    with open(copy, "rb") as handle:
        handle.seek(GiB // 2)
        assert handle.read(4096) == b"s" * 4096

    started = time.monotonic()
    run_as_predicted(tree.params(CLAUDE, state="absent"))  # the rollback copies it back into a 256 MiB home
    rollback_s = time.monotonic() - started
    assert allocated(tree("home:.claude/disk.img")) <= 64 * 1024

    # Identical 20 GiB sparse files on both sides: compared by their data, then the home's dropped.
    os.unlink(tree("home:.claude/disk.img"))
    for path in (tree("home:.claude/huge.img"), tree("vol:.claude/huge.img")):
        make_sparse(path, 20 * GiB, {GiB: b"h" * 4096, 19 * GiB: b"t" * 4096})
    started = time.monotonic()
    result = run_as_predicted(tree.params(CLAUDE))
    compare_s = time.monotonic() - started
    assert result["links"][0]["actions"] == ["drop_duplicate", "link"]
    figures(migrate_1GiB_sparse_s=round(migrate_s, 3), rollback_s=round(rollback_s, 3), source_blocks=source_blocks,
            copy_blocks=os.lstat(copy).st_blocks, start_with_identical_20GiB_sparse_s=round(compare_s, 3))


def xattrs_of(path: str) -> dict:
    return {name: os.getxattr(path, name) for name in os.listxattr(path)}


def test_xattrs_acls_and_hard_links_survive_the_move(reachable_base, mounts):
    tree = sandbox(reachable_base, mounts)
    grow_edge_cases(tree)
    claude = tree("home:.claude")
    os.setxattr(os.path.join(claude, "shared"), "system.posix_acl_access", EXTENDED_ACL)
    os.setxattr(os.path.join(claude, "shared"), "system.posix_acl_default", EXTENDED_ACL)
    before = {rel: xattrs_of(os.path.join(claude, rel)) for rel in ("projects/session.jsonl", "shared")}

    run_as_predicted(tree.params(CLAUDE))

    target = tree("vol:.claude")
    assert {rel: xattrs_of(os.path.join(target, rel)) for rel in before} == before
    assert assert_edge_cases_kept(tree, "moved"), "two names of one file stay one file"
    assert os.lstat(os.path.join(target, "shared", "session.jsonl")).st_nlink == 2
    assert os.stat(target).st_dev != os.stat(tree.home).st_dev


def test_a_seed_that_changes_owner_loses_set_id_bits_and_says_so(reachable_base, mounts):
    tree = sandbox(reachable_base, mounts)
    tool = tree("seed:.claude/bin/tool")
    os.makedirs(os.path.dirname(tool))
    with open(tool, "w", encoding="utf-8") as handle:
        handle.write("#!/bin/sh\n")
    os.chmod(tool, 0o4755)
    os.makedirs(tree("home:"), exist_ok=True)
    os.chown(tree.home, 1001, 1001)  # as in an image: the account's home; the start step gives it the volume root

    result = run_as_predicted(tree.params(CLAUDE, seed_store="seed:", manage_volume_root=True, **OWNER))

    assert "seed" in result["links"][0]["actions"]
    seeded = os.lstat(tree("vol:.claude/bin/tool"))
    assert (seeded.st_uid, stat.S_IMODE(seeded.st_mode)) == (1001, 0o755)
    assert result["warnings"] == [
        f"{tool}: setuid bit dropped from its copy, which belongs to uid 1001 gid 1001 instead of uid 0 gid 0"]


def test_mount_points_are_told_apart(reachable_base, mounts):
    base = reachable_base
    for name in ("plain", "tmpfs", "source", "bound", "lower", "upper", "overlay"):
        os.makedirs(os.path.join(base, name))
    for name in ("file", "file-source", "file-bound"):
        with open(os.path.join(base, name), "w", encoding="utf-8") as handle:
            handle.write(name)
    os.symlink("tmpfs", os.path.join(base, "link"))
    mounts.tmpfs(os.path.join(base, "tmpfs"))
    mounts.bind(os.path.join(base, "source"), os.path.join(base, "bound"))
    mounts.bind(os.path.join(base, "file-source"), os.path.join(base, "file-bound"))
    # An image layer: its files show the lower layer's device, yet are no mount point.
    mounts.tmpfs(os.path.join(base, "lower"))
    mounts.tmpfs(os.path.join(base, "upper"))
    with open(os.path.join(base, "lower", "image-file"), "w", encoding="utf-8") as handle:
        handle.write("from the image")
    os.makedirs(os.path.join(base, "upper", "data"))
    os.makedirs(os.path.join(base, "upper", "work"))
    mounts.overlay(os.path.join(base, "overlay"), os.path.join(base, "lower"),
                   os.path.join(base, "upper", "data"), os.path.join(base, "upper", "work"))
    assert os.stat(os.path.join(base, "bound")).st_dev == os.stat(base).st_dev, "a bind mount within one filesystem"
    assert os.stat(os.path.join(base, "overlay", "image-file")).st_dev != os.stat(os.path.join(base, "overlay")).st_dev

    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    overlay_fd = os.open(os.path.join(base, "overlay"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = {name: _fs.is_mount_point_at(fd, name) for name in sorted(os.listdir(base))}
        in_layer = _fs.is_mount_point_at(overlay_fd, "image-file")
    finally:
        os.close(fd)
        os.close(overlay_fd)
    assert found == {"bound": True, "file": False, "file-bound": True, "file-source": False, "link": False, "lower": True,
                     "overlay": True, "plain": False, "source": False, "tmpfs": True, "upper": True}
    assert in_layer is False


@pytest.mark.parametrize("size", [0, 1, 4096, 5 * MiB + 3])
def test_dense_files_copy_whole(reachable_base, mounts, size):
    """The sparse path must not cost ordinary files anything: empty, tiny and odd-sized files copy whole."""
    tree = sandbox(reachable_base, mounts)
    path = tree("home:.claude/f")
    os.makedirs(os.path.dirname(path))
    content = os.urandom(size)
    with open(path, "wb") as handle:
        handle.write(content)
    run_as_predicted(tree.params(CLAUDE))
    with open(tree("vol:.claude/f"), "rb") as handle:
        assert handle.read() == content


def test_attributes_the_volume_cannot_hold_are_reported(reachable_base, mounts):
    """ramfs keeps no extended attributes: the move still happens, and the result says what was not kept."""
    tree = Tree(reachable_base)
    mounts.tmpfs(tree.home)
    os.makedirs(tree.volume)
    subprocess.run(["mount", "-t", "ramfs", "ramfs", tree.volume], check=True)
    mounts.points.append(tree.volume)
    session = tree("home:.claude/session.jsonl")
    os.makedirs(os.path.dirname(session))
    with open(session, "w", encoding="utf-8") as handle:
        handle.write("{}\n")
    os.setxattr(session, "user.agent", b"claude")

    result = run_as_predicted(tree.params(CLAUDE))

    with open(tree("vol:.claude/session.jsonl"), encoding="utf-8") as handle:
        assert handle.read() == "{}\n"
    assert result["warnings"] == [
        f"{tree('home:.claude/session.jsonl')}: extended attribute user.agent not kept by its copy (Operation not supported)"]


def grow_edge_cases(layer: Tree) -> None:
    """An image layer holding a hard-linked pair, a sparse file and extended attributes."""
    claude = layer("home:.claude")
    os.makedirs(os.path.join(claude, "projects"))
    os.makedirs(os.path.join(claude, "shared"))
    with open(os.path.join(claude, "projects", "session.jsonl"), "w", encoding="utf-8") as handle:
        handle.write('{"turn": 1}\n')
    os.link(os.path.join(claude, "projects", "session.jsonl"), os.path.join(claude, "shared", "session.jsonl"))
    os.setxattr(os.path.join(claude, "projects", "session.jsonl"), "user.agent", b"claude")
    make_sparse(os.path.join(claude, "cache.img"), 64 * MiB, {32 * MiB: b"c" * 4096})


@pytest.mark.slow
def test_sigkill_before_every_call_of_an_edge_case_copy(tmp_path, mounts, figures):
    """Killed before each filesystem call of a migration that links, punches holes and copies
    attributes, nothing is lost, and the rerun ends where an uninterrupted run does."""
    sandbox = ImageSandbox(str(tmp_path), mounts, grow=grow_edge_cases, owner=int(OWNER["owner"]))
    tree = sandbox.tree
    params = tree.params(CLAUDE, **OWNER)
    manifest = tree.manifest()
    code, calls = run_with_faults(params)
    assert code == 0
    reference = end_state(tree)
    assert assert_edge_cases_kept(tree, "uninterrupted"), "an uninterrupted run keeps the hard link"
    split = []

    for call, tree, when in killed_before_each_call(sandbox, params, calls, manifest):
        # Killed before one of the last two calls (removing the source's emptied directory, or the
        # link a swap replaced, now under a temporary name), the state is already linked: nothing to do.
        assert run_as_predicted(params)["changed"] or call >= len(calls) - 1, when
        assert_converged(tree, params, manifest)
        assert end_state(tree) == reference, f"{when}: the rerun's end state differs from an uninterrupted run's"
        # Killed between the renames into place, the names moved before and after the kill were
        # copied by two runs: their content is kept, each once, but no longer as one file.
        if not assert_edge_cases_kept(tree, when):
            assert calls[call - 1] == "rename", f"{when}: the hard link became two files"
            split.append(call)
    figures(kill_points=len(calls), calls=dict(collections.Counter(calls)), hard_link_split_at=split)


def assert_edge_cases_kept(tree: Tree, when: str) -> bool:
    """The attributes and holes are kept; returns whether the hard-linked pair is still one file."""
    target = tree("vol:.claude")
    assert os.getxattr(os.path.join(target, "projects", "session.jsonl"), "user.agent") == b"claude", when
    assert allocated(os.path.join(target, "cache.img")) <= 64 * 1024, f"{when}: the sparse file was filled"
    first, second = (os.lstat(os.path.join(target, rel, "session.jsonl")) for rel in ("projects", "shared"))
    return first.st_ino == second.st_ino
