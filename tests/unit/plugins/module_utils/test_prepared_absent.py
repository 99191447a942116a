# SPDX-License-Identifier: GPL-3.0-or-later
"""state=prepared (image build: into the seed store, volume untouched) and state=absent (rollback:
a real copy back at the path, the volume keeps its own), from every starting state."""

from __future__ import annotations

import pytest

from agent_tree import CLAUDE_JSON_BARE, DIR, MISSING, Case, Link, converge_case, snapshot

PREPARED = {"state": "prepared", "seed_store": "seed:"}
ABSENT = {"state": "absent"}

PREPARED_CASES = [
    Case("directory moves into the seed store", {"home:.claude/settings.json": "image", "home:.claude/agents/a.md": "A"},
         [["create_directory", "move", "link"]],
         {"home:.claude": Link("vol:.claude"), "seed:.claude/settings.json": "image", "seed:.claude/agents/a.md": "A",
          "vol:.claude": MISSING}, params=PREPARED),
    Case("file moves into the seed store", {"home:.claude.json": '{"image": 1}'}, [["create_directory", "move", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "seed:.claude.json": '{"image": 1}', "vol:.claude.json": MISSING},
         links=[CLAUDE_JSON_BARE], params=PREPARED),
    Case("nothing there: only the dangling link", {}, [["link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": MISSING, "seed:": MISSING}, params=PREPARED),
    Case("link elsewhere replaced", {"out:dir/keep": "K", "home:.claude": Link("out:dir")}, [["link"]],
         {"home:.claude": Link("vol:.claude"), "out:dir/keep": "K", "seed:": MISSING}, params=PREPARED),
    Case("already prepared", {"home:.claude": Link("vol:.claude")}, [[]], {"home:.claude": Link("vol:.claude")}, params=PREPARED),
]

ABSENT_CASES = [
    Case("link to a directory target", {"vol:.claude/projects/s.jsonl": "S", "home:.claude": Link("vol:.claude")}, [["restore"]],
         {"home:.claude": DIR, "home:.claude/projects/s.jsonl": "S", "vol:.claude/projects/s.jsonl": "S"}, params=ABSENT),
    Case("link to a file target", {"vol:.claude.json": "{}", "home:.claude.json": Link("vol:.claude.json")}, [["restore"]],
         {"home:.claude.json": "{}", "vol:.claude.json": "{}"}, links=[CLAUDE_JSON_BARE], params=ABSENT),
    Case("path missing, target holds state", {"vol:.claude/s.jsonl": "S"}, [["restore"]],
         {"home:.claude/s.jsonl": "S", "vol:.claude/s.jsonl": "S"}, params=ABSENT),
    Case("link to a missing directory target", {"home:.claude": Link("vol:.claude")}, [["create_empty"]],
         {"home:.claude": DIR, "vol:.claude": MISSING}, params=ABSENT),
    Case("link to a missing file target", {"home:.claude.json": Link("vol:.claude.json")}, [["remove_link"]],
         {"home:.claude.json": MISSING, "vol:.claude.json": MISSING}, links=[CLAUDE_JSON_BARE], params=ABSENT),
    Case("real directory left alone", {"home:.claude/mine": "M", "vol:.claude/s": "S"}, [[]],
         {"home:.claude/mine": "M", "home:.claude/s": MISSING, "vol:.claude/s": "S"}, params=ABSENT),
    Case("real file left alone", {"home:.claude.json": "mine", "vol:.claude.json": "{}"}, [[]],
         {"home:.claude.json": "mine"}, links=[CLAUDE_JSON_BARE], params=ABSENT),
    Case("link elsewhere left alone", {"out:dir/keep": "K", "home:.claude": Link("out:dir"), "vol:.claude/s": "S"}, [[]],
         {"home:.claude": Link("out:dir")}, params=ABSENT),
    Case("relative link left alone", {"vol:.claude/s": "S", "home:.claude": Link(".agor/.claude")}, [[]],
         {"home:.claude": Link(".agor/.claude")}, params=ABSENT),
    Case("nothing anywhere", {}, [[]], {"home:.claude": MISSING}, params=ABSENT),
    Case("missing home parents", {"vol:opencode/auth.json": "{}"}, [["create_home_directory", "restore"]],
         {"home:.local/share/opencode/auth.json": "{}", "vol:opencode/auth.json": "{}"},
         links=[{"path": "home:.local/share/opencode", "target": "vol:opencode"}], params=ABSENT),
]


@pytest.mark.parametrize("case", PREPARED_CASES, ids=[case.id for case in PREPARED_CASES])
def test_prepared(tree, case):
    volume = snapshot(tree.volume)
    converge_case(tree, case)
    assert snapshot(tree.volume) == volume, "state=prepared must leave the volume alone"


@pytest.mark.parametrize("case", ABSENT_CASES, ids=[case.id for case in ABSENT_CASES])
def test_absent(tree, case):
    tree.build(case.start)
    volume = volume_content(tree)
    tree.build = lambda layout: None  # already built, to snapshot the volume first
    converge_case(tree, case)
    assert volume_content(tree) == volume, "state=absent must leave the volume's copy as it was"


def volume_content(tree):
    """The volume's entries but its root and the module's bookkeeping (the lock of the run)."""
    return {rel: entry for rel, entry in snapshot(tree.volume).items() if rel and not rel.startswith(".agent-state-link")}
