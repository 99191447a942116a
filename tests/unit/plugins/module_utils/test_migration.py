# SPDX-License-Identifier: GPL-3.0-or-later
"""Migrating a grown agent state tree on one filesystem: everything arrives once, links stay links."""

from __future__ import annotations

import json
import os

import pytest

from agent_tree import CLAUDE, assert_migrated_whole, converge, populate, run_engine, shape, snapshot, write

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError


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


def test_names_that_are_not_utf8_are_migrated_and_reported_printably(tree):
    """Ansible refuses a module result holding a name that is not UTF-8: such bytes show as \\xNN."""
    home, volume = os.fsencode(tree("home:.claude")), os.fsencode(tree("vol:.claude"))
    os.makedirs(home)
    os.makedirs(volume)
    for root, content in ((home, b"home"), (volume, b"volume")):
        with open(os.path.join(root, b"conflict-\xe9"), "wb") as handle:
            handle.write(content)
    with open(os.path.join(home, b"caf\xe9.jsonl"), "wb") as handle:
        handle.write(b"session")

    result = converge(tree.params(CLAUDE), tree.root)

    json.dumps(result, ensure_ascii=False).encode("utf-8")  # strict: no surrogate escapes left
    assert result["links"][0]["migrated"] == [tree("home:.claude/caf\\xe9.jsonl")]
    assert result["links"][0]["backups"][0]["path"] == tree("home:.claude/conflict-\\xe9")
    with open(os.path.join(volume, b"caf\xe9.jsonl"), "rb") as handle:
        assert handle.read() == b"session"

    os.mkfifo(os.path.join(os.fsencode(tree.home), b"fifo-\xe9"))
    with pytest.raises(AgentStateLinkError) as excinfo:
        run_engine(tree.params({"path": os.fsdecode(os.path.join(os.fsencode(tree.home), b"fifo-\xe9")), "target": "vol:fifo"}))
    assert str(excinfo.value).startswith(tree("home:fifo-\\xe9") + ": is a socket, FIFO or device")
    str(excinfo.value).encode("utf-8")
