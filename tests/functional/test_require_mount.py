# SPDX-License-Identifier: GPL-3.0-or-later
"""require_mount: a volume on the container's root filesystem is refused (persistence would be
lost); a volume that is a mount point, or lies below one, is accepted."""

from __future__ import annotations

import os

import pytest

from agent_tree import CLAUDE, Tree, converge, run_engine, snapshot, write

from ansible_collections.agor.persistence.plugins.module_utils._engine import mount_point_of
from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError


def on_root_filesystem(path):
    if mount_point_of(os.path.realpath(path)) != "/":
        pytest.skip(f"{path} is not on the root filesystem on this machine; nothing to refuse")


@pytest.mark.parametrize("check_mode", [False, True], ids=["real", "check"])
@pytest.mark.parametrize("state", ["present", "absent"])
def test_refused_on_the_root_filesystem(tree, state, check_mode):
    on_root_filesystem(tree.volume)
    write(tree("home:.claude/s.jsonl"), "S")
    before = snapshot(tree.root)
    with pytest.raises(AgentStateLinkError) as excinfo:
        run_engine(tree.params(CLAUDE, require_mount=True, state=state), check_mode=check_mode)
    assert str(excinfo.value).startswith(
        f"volume: {tree.volume} is not on a mounted volume (it lies on the root filesystem); "
        "persistence would be lost at the next restart."
    )
    assert snapshot(tree.root) == before


def test_a_mount_elsewhere_does_not_count(tree, mount):
    """A mount at a sibling whose name is a prefix of the volume's (.ago for .agor), or below the volume."""
    on_root_filesystem(tree.volume)
    for point in (tree("home:.ago"), tree("vol:.claude")):
        os.makedirs(point)
        mount(point)
    with pytest.raises(AgentStateLinkError, match="persistence would be lost"):
        run_engine(tree.params(CLAUDE, require_mount=True))


def test_prepared_needs_no_mount(tree):
    """At image build time no volume is mounted: require_mount is ignored."""
    on_root_filesystem(tree.volume)
    result = converge(tree.params(CLAUDE, require_mount=True, state="prepared", seed_store="seed:"), tree.root)
    assert result["links"][0]["actions"] == ["link"]


def test_accepted_on_a_mount_point(tmpfs_tree):
    """As on Railway: the volume directory is the mount point."""
    result = converge(tmpfs_tree.params(CLAUDE, require_mount=True), tmpfs_tree.root)
    assert result["links"][0]["actions"] == ["create_directory", "link"]


def test_accepted_below_a_mount(tree, mount):
    """As with docker-compose's whole-home volume: the volume directory lies below the mount point."""
    mount(tree.home, bind=True)
    result = converge(tree.params(CLAUDE, require_mount=True), tree.root)
    assert result["links"][0]["actions"] == ["create_directory", "link"]


def test_accepted_on_a_mount_point_with_an_odd_name(tmp_path, mount):
    """/proc/self/mountinfo escapes spaces, tabs, newlines and backslashes in mount points as octal,
    and holds other mount points' names as they are, not necessarily UTF-8."""
    tree = Tree(str(tmp_path / "it's a\\ sandbox\twith ünïcødé\nand lines"))
    mount(tree.volume)
    not_utf8 = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"latin1-\xe9t\xe9"))
    os.makedirs(not_utf8)
    mount(not_utf8)
    write(tree("home:.claude/s.jsonl"), "S")
    result = converge(tree.params(CLAUDE, require_mount=True), tree.root)
    assert result["links"][0]["actions"] == ["create_directory", "move", "link"]
