# SPDX-License-Identifier: GPL-3.0-or-later
"""Migrating a grown agent state tree on one filesystem: everything arrives once, links stay links."""

from __future__ import annotations

import os

from agent_tree import CLAUDE, assert_migrated_whole, converge, populate, shape, snapshot, write


def test_ten_thousand_files_odd_names_and_links(tree):
    write(tree("out:secret"), "planted secret")
    populate(tree("home:.claude"), files=10000, outside_secret=tree("out:secret"))
    write(tree("vol:.claude/projects/-work-p0/earlier-session.jsonl"), "from an earlier container")  # merged into
    before_shape, manifest = shape(tree("home:.claude")), tree.manifest()

    result = converge(tree.params(CLAUDE), tree.root)

    assert result["links"][0]["actions"] == ["move", "link"]
    assert_migrated_whole(tree, before_shape, manifest)
    assert os.path.isfile(tree("vol:.claude/projects/-work-p0/earlier-session.jsonl"))


def test_same_filesystem_moves_by_rename(tree):
    """On one filesystem every entry is renamed: same inodes, nothing staged, nothing copied."""
    write(tree("out:secret"), "planted secret")
    populate(tree("home:.claude"), files=50, outside_secret=tree("out:secret"))
    source = tree("home:.claude")
    inodes = {rel: os.lstat(os.path.join(source, rel)).st_ino for rel in snapshot(source) if rel}
    before_shape, manifest = shape(source), tree.manifest()

    converge(tree.params(CLAUDE), tree.root)

    target = tree("vol:.claude")
    assert {rel: os.lstat(os.path.join(target, rel)).st_ino for rel in inodes} == inodes
    assert not os.path.lexists(os.path.join(tree.meta, "staging")), "nothing should have been copied"
    assert_migrated_whole(tree, before_shape, manifest)
