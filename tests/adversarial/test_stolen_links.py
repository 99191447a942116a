# SPDX-License-Identifier: GPL-3.0-or-later
"""Root-owned links a user can steal (issue 9, first bullet).

The engine runs as root in directories the agents' user (ATTACKER) can write.  Whatever it makes
there must never be owned by root, not even for an instant: the user could rename it away and keep
it, and a root-owned link is what the engine trusts when it opens a configured directory from "/".
"""

from __future__ import annotations

import os

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, sha256_of
from attacker import (
    ATTACKER, VICTIM_HOME, as_user, assert_no_root_owned, assert_refusal_names, changed_keys,
    hashes_readable_by, protected, racing, root_watch, run_or_refuse,
)
from mounts import give_to
from guarantees import user_data
from runs import attack_runs

OPENCODE = {"path": "home:.config/opencode", "target": "vol:.config/opencode"}


def test_links_made_with_the_owner_omitted(arena):
    """Two of the module's EXAMPLES omit ``owner``: run as root in the agents' user's home, that
    must not leave root-owned links, targets or parents where that user can move them."""
    tree = arena
    tree.build({"home:.claude/projects/-w/s.jsonl": "session", "home:.claude.json": '{"a": 1}'})
    give_to(ATTACKER, tree.home)
    params = tree.params(CLAUDE, CLAUDE_JSON, OPENCODE)  # no owner, no group
    before = protected(tree)

    _result, refusal = run_or_refuse(params)

    assert protected(tree) == before
    if refusal is not None:
        assert_refusal_names(refusal, tree.home, "owner")
    assert_no_root_owned([tree.home])


def test_racer_renames_entries_during_the_link_step(arena, figures):
    """The agents' user renames every new entry of its home and volume into a directory of its own,
    in a busy loop, while the engine links again and again (the link removed before each run): it
    must never catch an entry owned by root."""
    tree = arena
    params = tree.params(CLAUDE, CLAUDE_JSON, OPENCODE, owner=str(ATTACKER), group=str(ATTACKER), manage_volume_root=True)
    run_or_refuse(params)
    os.makedirs(tree("home:loot"))
    give_to(ATTACKER, tree.home)
    home_spare = [".claude", ".claude.json", ".config", "loot"]
    moves = [{"pause": 0}, {"steal": tree.home, "spare": home_spare, "loot": tree("home:loot")},
             {"steal": tree("home:.config"), "spare": ["opencode"], "loot": tree("home:loot")},
             {"steal": tree.volume, "spare": [".claude", ".claude.json", ".config", ".agent-state-link"], "loot": tree("home:loot")}]
    before, outcomes = protected(tree), {}
    runs = attack_runs(60)
    with root_watch([tree.home]) as seen, racing(moves) as report:
        for index in range(runs):
            as_user(ATTACKER, _unlink_links, [tree("home:.claude"), tree("home:.claude.json"), tree("home:.config/opencode")])
            _result, refusal = run_or_refuse(params)
            key = "completed" if refusal is None else refusal[:120]
            outcomes[key] = outcomes.get(key, 0) + 1
            assert protected(tree) == before, f"run {index}: {changed_keys(before, protected(tree))} changed"
    figures(runs=runs, racer_moves=report["moves"], stolen=report["stolen"], outcomes=outcomes)
    assert report["root_owned"] == [], f"the agents' user caught root-owned entries: {report['root_owned'][:5]}"
    assert_no_root_owned([tree.home], seen)


def _unlink_links(paths):
    for path in paths:
        if os.path.islink(path):
            os.unlink(path)


@pytest.mark.parametrize("aim", ["another user's ~/.config", "/etc"])
def test_root_owned_link_chained_to_another_users_state(arena, aim):
    """The chain of issue 9: a link the engine made root-owned (owner omitted, as in an EXAMPLE) is
    renamed by the agents' user to ~/.config, a parent of another state path, and the target it
    names is replaced by a link to the other user's ~/.config (or to /etc).  The next regular start
    must not move that user's ~/.config/opencode/auth.json (or root's /etc/opencode/auth.json) into
    the attacker's volume, nor put a link in its place."""
    tree = arena
    elsewhere = os.path.join(VICTIM_HOME, ".config") if aim != "/etc" else "/etc"
    tree.build({"home:.claude/s.jsonl": "session"})
    give_to(ATTACKER, tree.home)
    run_or_refuse(tree.params(CLAUDE))  # no owner, as in two of the module's EXAMPLES
    before = protected(tree)
    secrets = {sha256_of(os.path.join(elsewhere, "opencode", "auth.json"))}

    def plant():
        if os.path.lexists(tree("home:.config")):
            os.rename(tree("home:.config"), tree("home:.config.mine"))
        os.rename(tree("home:.claude"), tree("home:.config"))
        os.rename(tree("vol:.claude"), tree("vol:.claude.mine"))
        os.symlink(elsewhere, tree("vol:.claude"))

    planted = as_user(ATTACKER, plant)
    start = tree.params(OPENCODE, CLAUDE, owner=str(ATTACKER), group=str(ATTACKER), manage_volume_root=True)

    with root_watch([tree.home, VICTIM_HOME]) as seen:
        _result, refusal = run_or_refuse(start)

    assert protected(tree) == before, (
        f"{changed_keys(before, protected(tree))} changed (the attacker planted its chain: {planted})")
    assert not secrets & hashes_readable_by(ATTACKER, tree.home), "the attacker can read the other account's token"
    assert not secrets & set(user_data(tree)), "the other account's token was moved into the attacker's volume"
    if refusal is not None:
        assert_refusal_names(refusal, tree("home:.config"), tree("vol:.claude"))
    assert_no_root_owned([tree.home, VICTIM_HOME], seen)
