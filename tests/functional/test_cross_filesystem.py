# SPDX-License-Identifier: GPL-3.0-or-later
"""The copy path: the volume is a real second filesystem (a tmpfs), so rename() fails with EXDEV
and every entry is copied, verified and only then removed from the home."""

from __future__ import annotations

import os

from agent_tree import CLAUDE, Link, assert_migrated_whole, converge, populate, shape, write


def test_ten_thousand_files_copied_across_filesystems(tree, mount):
    mount(tree.home)  # two tmpfs: across filesystems, and the syncs never wait for a disk
    os.makedirs(tree.volume)
    mount(tree.volume)
    write(tree("out:secret"), "planted secret")
    source = tree("home:.claude")
    populate(source, files=10000, outside_secret=tree("out:secret"), big=2)
    os.chown(os.path.join(source, "settings.json"), 1234, 2345)  # migrated entries keep their owner, like mv
    os.lchown(os.path.join(source, "links", "relative"), 1234, 2345)
    write(tree("vol:.claude/projects/-work-p0/earlier-session.jsonl"), "from an earlier container")
    before_shape, manifest = shape(source), tree.manifest()

    result = converge(tree.params(CLAUDE), tree.root)

    assert result["links"][0]["actions"] == ["move", "link"]
    assert_migrated_whole(tree, before_shape, manifest)
    target = tree("vol:.claude")
    assert os.lstat(os.path.join(target, "settings.json"))[4:6] == (1234, 2345)
    assert os.lstat(os.path.join(target, "links", "relative"))[4:6] == (1234, 2345)
    assert os.stat(target).st_dev != os.stat(tree.home).st_dev, "the data must be on the volume's filesystem"
    assert os.listdir(os.path.join(tree.meta, "staging")) == [], "the copies were staged, then all put in place"


def test_file_copied_across_filesystems(tmpfs_tree):
    tree = tmpfs_tree
    write(tree("home:.claude.json"), '{"oauthAccount": {}}')
    os.chmod(tree("home:.claude.json"), 0o640)
    before = shape(tree("home:.claude.json"))[""]

    converge(tree.params({"path": "home:.claude.json", "target": "vol:.claude.json", "kind": "file"}), tree.root)

    assert os.readlink(tree("home:.claude.json")) == tree("vol:.claude.json")
    assert shape(tree("vol:.claude.json"))[""] == before


def test_absent_copies_back_across_filesystems(tmpfs_tree):
    """The rollback copies the volume's tree back into the home (another filesystem); the volume keeps it."""
    tree = tmpfs_tree
    populate(tree("vol:.claude"), files=300)
    tree.build({"home:.claude": Link("vol:.claude")})
    volume_shape = shape(tree("vol:.claude"))

    result = converge(tree.params(CLAUDE, state="absent"), tree.root)

    assert result["links"][0]["actions"] == ["restore"]
    assert not os.path.islink(tree("home:.claude"))
    assert shape(tree("home:.claude")) == volume_shape, "a whole copy, owners, modes, times and links included"
    assert shape(tree("vol:.claude")) == volume_shape
    assert os.stat(tree("home:.claude")).st_dev != os.stat(tree("vol:.claude")).st_dev
