# SPDX-License-Identifier: GPL-3.0-or-later
"""Refusals at run time: a clear message and nothing changed, in real and in check mode."""

from __future__ import annotations

import fcntl
import os
import time

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON_BARE, Link, run_engine, snapshot

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

FAIL = {"conflict": "fail"}

REFUSALS = [
    ("conflict=fail, conflicting file", {"home:.claude.json": "home", "vol:.claude.json": "volume"}, [CLAUDE_JSON_BARE], FAIL,
     "conflict=fail: 1 conflict(s), nothing changed: {home}/.claude.json (differs from the volume copy)"),
    ("conflict=fail, conflict deep in a directory", {"home:.claude/a/b/c.json": "home", "vol:.claude/a/b/c.json": "volume", "home:.claude/new": "n"},
     [CLAUDE], FAIL, "conflict=fail: 1 conflict(s), nothing changed: {home}/.claude/a/b/c.json (differs from the volume copy)"),
    ("conflict=fail, wrong kind in the home", {"home:.claude": "a file"}, [CLAUDE], FAIL,
     "conflict=fail: 1 conflict(s), nothing changed: {home}/.claude (differs from the volume copy)"),
    ("conflict=fail, link at the target", {"out:dir/x": "x", "vol:.claude": Link("out:dir"), "home:.claude/s": "S"}, [CLAUDE], FAIL,
     "conflict=fail: 1 conflict(s), nothing changed: {vol}/.claude (volume entry in the way)"),
    ("conflict=fail, link at a parent below the volume", {"out:dir/x": "x", "vol:agents": Link("out:dir")},
     [{"path": "home:.claude", "target": "vol:agents/claude"}], FAIL,
     "conflict=fail: 1 conflict(s), nothing changed: {vol}/agents (volume entry in the way)"),
    ("conflict=fail, every conflict of every link listed", {"home:.claude.json": "home", "vol:.claude.json": "volume", "vol:.claude": "stray"},
     [CLAUDE, CLAUDE_JSON_BARE], FAIL, "conflict=fail: 2 conflict(s), nothing changed: {vol}/.claude (volume entry in the way); {home}/.claude.json"),
    ("FIFO at the path", {"fifo:home:.claude": None}, [CLAUDE], {},
     "{home}/.claude: is a socket, FIFO or device; move it away, it cannot be migrated"),
    ("FIFO inside a directory to migrate", {"home:.claude/a": "A", "fifo:home:.claude/sub/pipe": None}, [CLAUDE], {},
     "{home}/.claude/sub/pipe: is a socket, FIFO or device"),
    ("volume missing", {}, [{"path": "home:.claude", "target": "home:gone/.claude"}], {"volume": "home:gone"},
     "volume: {home}/gone does not exist"),
    ("relative path", {}, [{"path": "agor/.claude", "target": "vol:.claude"}], {}, "links[0].path: 'agor/.claude' is a relative path"),
    ("target outside the volume", {}, [{"path": "home:.claude", "target": "out:.claude"}], {}, "lies outside volume"),
    ("same path twice", {}, [CLAUDE, {"path": "home:.claude", "target": "vol:other"}], {}, "links[1].path: {home}/.claude is given twice"),
    ("unknown owner", {}, [CLAUDE], {"owner": "no-such-user-agor"}, "owner: unknown user 'no-such-user-agor'"),
]


def build(tree, layout):
    """Tree.build, plus FIFOs named "fifo:<reference>"."""
    for ref, spec in layout.items():
        if ref.startswith("fifo:"):
            path = tree(ref[len("fifo:"):])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkfifo(path)
        else:
            tree.build({ref: spec})


@pytest.mark.parametrize("layout, links, overrides, message", [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
@pytest.mark.parametrize("check_mode", [False, True], ids=["real", "check"])
def test_refused_with_nothing_changed(tree, layout, links, overrides, message, check_mode):
    build(tree, layout)
    before, whole = tree.user_view(), snapshot(tree.root)
    with pytest.raises(AgentStateLinkError) as excinfo:
        run_engine(tree.params(*links, **overrides), check_mode=check_mode)
    assert message.format(home=tree.home, vol=tree.volume) in str(excinfo.value)
    assert tree.user_view() == before
    if check_mode:
        assert snapshot(tree.root) == whole


def test_lock_timeout_is_clear_and_changes_nothing(tree):
    tree.build({"home:.claude/s": "S"})
    run_engine(tree.params({"path": "home:.codex", "target": "vol:.codex"}))
    before = snapshot(tree.root)
    held = os.open(tree.volume, os.O_RDONLY | os.O_DIRECTORY)  # the lock is the volume root's own flock
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(AgentStateLinkError) as excinfo:
            run_engine(tree.params(CLAUDE, lock_timeout=0.5))
        waited = time.monotonic() - started
    finally:
        os.close(held)
    assert str(excinfo.value) == f"lock_timeout: another agent_state_link run still holds the lock on {tree.volume} after 0.5 s"
    assert 0.5 <= waited < 5
    assert snapshot(tree.root) == before
    assert run_engine(tree.params(CLAUDE))["changed"], "once the lock is free the run proceeds"
