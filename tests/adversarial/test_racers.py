# SPDX-License-Identifier: GPL-3.0-or-later
"""Racers against every kind of run (issue 9, item 4): while runs migrate, link, roll back and
prepare, again and again, the agents' user renames entries (keeping any new one it can take),
swaps directories and files for links (to /etc, to the root-only stand-in for /etc/shadow, to
another user's home) and plants hard links to a root-only file.

A hard link to a file one cannot read or write needs ``fs.protected_hardlinks=0``.  That sysctl is
not namespaced (setting it here would change the host), so root plants the hard links in the
attacker's stash beforehand, as the attacker could on a host where it is 0; the racer then only
renames them into place.

After every run: nothing outside the allowed paths changed owner, mode or content (/etc, the
stand-in, the other user's home), the run completed or refused with an AgentStateLinkError, and
the attacker cannot read the stand-in's content anywhere.  Over all runs: no root-owned entry where
a user can move it (a watcher scans during the runs).
"""

from __future__ import annotations

import os
import typing as t

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON_BARE, sha256_of, write
from attacker import (
    ATTACKER, VICTIM_HOME, as_user, assert_no_root_owned, assert_refusal_names, changed_keys,
    hashes_readable_by, protected, racing, root_watch, run_or_refuse,
)
from mounts import give_to
from runs import attack_runs

NESTED = {"path": "home:.copilot", "target": "vol:users/agor/.copilot"}
OWNER = {"owner": str(ATTACKER), "group": str(ATTACKER)}


def new_state(tree, index):
    """The agents' user's programs write new state at the paths (replacing a link by a real entry)."""
    for name in (".claude", ".copilot"):
        path = os.path.join(tree.home, name)
        if os.path.islink(path):
            os.unlink(path)
        write(os.path.join(path, f"run-{index}", "session.jsonl"), f"{name} session of run {index}")
    path = tree("home:.claude.json")
    if os.path.islink(path):
        os.unlink(path)
    write(path, f'{{"run": {index}}}')


def remove_links(tree, _index):
    for name in (".claude", ".copilot", ".claude.json"):
        if os.path.islink(os.path.join(tree.home, name)):
            os.unlink(os.path.join(tree.home, name))


def leave_as_is(_tree, _index):
    """Nothing: a rollback right after the start that linked the paths."""


# mode -> the runs, in turn: (state, what the agents' user does before the run)
MODES = {
    "migrate": [("present", new_state)],
    "link": [("present", remove_links)],
    "roll back": [("present", new_state), ("absent", leave_as_is)],
    "prepare": [("prepared", new_state)],
}


def racer_moves(tree):
    stash = tree("home:.stash")
    return [
        {"swap": tree("vol:.claude"), "to": "/etc"},
        {"swap": tree("vol:.claude.json"), "to": "/etc/shadow"},
        {"swap": tree("vol:users"), "to": VICTIM_HOME},
        {"swap": tree("vol:users/agor/.copilot"), "to": os.path.join(VICTIM_HOME, ".claude")},
        {"swap": tree("home:.claude"), "to": "/etc"},
        {"swap": tree("home:.claude.json"), "to": tree("out:shadow")},
        {"swap": tree("home:.copilot"), "to": os.path.join(VICTIM_HOME, ".codex")},
        {"plant": os.path.join(stash, "shadow"), "at": tree("home:.claude/shadow")},
        {"plant": os.path.join(stash, "shadow-too"), "at": tree("home:.copilot/shadow")},
        {"move": tree("vol:.claude"), "to": tree("vol:.claude.moved")},
    ]


def stealer_moves(tree):
    """A second racer, in a busy loop: every new entry of the home, kept (a root-owned one is a win)."""
    spare = [".claude", ".claude.json", ".copilot", ".stash", ".agor", "loot"]
    return [{"pause": 0}, {"steal": tree.home, "spare": spare, "loot": tree("home:loot")}]


@pytest.mark.parametrize("mode", MODES)
def test_racers_against_runs(arena, mode, figures):
    tree = arena
    turns = MODES[mode]
    os.makedirs(tree("home:.stash"))
    os.makedirs(tree("home:loot"))
    for name in ("shadow", "shadow-too"):  # as the attacker could with fs.protected_hardlinks=0
        os.link(tree("out:shadow"), tree(f"home:.stash/{name}"))
    give_to(ATTACKER, tree.home)
    for name in ("shadow", "shadow-too"):
        os.lchown(tree(f"home:.stash/{name}"), 0, 0)
    secret, planted = sha256_of(tree("out:shadow")), [inode(tree("out:shadow"))]
    base = dict(OWNER, manage_volume_root=True, seed_store=tree.seed_store)
    before = protected(tree)
    runs, outcomes = attack_runs(50), {}
    watching = root_watch([tree.home, VICTIM_HOME], planted=planted)
    with watching as seen, racing(racer_moves(tree)) as report, racing(stealer_moves(tree)) as stealer:
        # The racers win most runs (2-20% complete a change, by mode); past ``runs``, runs go on until
        # one has got through, up to four times as many, so that the last assertion tests the engine.
        for index in range(4 * runs):
            if index >= runs and any(key.endswith(": completed") for key in outcomes):
                break
            state, before_run = turns[index % len(turns)]
            as_user(ATTACKER, before_run, tree, index)
            result, refusal = run_or_refuse(tree.params(CLAUDE, CLAUDE_JSON_BARE, NESTED, state=state, **base))
            if result is not None:
                key = f"{state}: completed" + ("" if result["changed"] else ", nothing to do")
            else:
                key = f"{state}: " + t.cast(str, refusal).split(";", maxsplit=1)[0][:90]
            outcomes[key] = outcomes.get(key, 0) + 1
            after = protected(tree)
            assert after == before, f"run {index} ({state}): changed outside the allowed paths: {changed_keys(before, after)[:5]}"
            assert secret not in hashes_readable_by(ATTACKER, tree.home), f"run {index} ({state}): the attacker can read the root-only file"
    figures(runs=sum(outcomes.values()), racer_moves=report["moves"], stolen=stealer["stolen"], outcomes=outcomes)
    assert report["moves"] >= runs, f"the racer hardly ran: {report['moves']} moves"
    assert stealer["root_owned"] == [], f"the agents' user caught root-owned entries: {stealer['root_owned'][:5]}"
    # Not vacuous: some run got through the racers and changed something (a rollback with nothing
    # to roll back does not count).
    assert any(key.endswith(": completed") for key in outcomes), f"no run completed a change: {outcomes}"
    assert_no_root_owned([tree.home, VICTIM_HOME], seen, planted=planted)


def test_file_state_path_hard_linked_to_a_root_only_file(arena):
    """~/.claude.json hard-linked to a root-only file (planted by root here, as the attacker could
    with fs.protected_hardlinks=0), moved to the volume on another filesystem: the attacker must
    not end up able to read that content (the copy re-owned to it), or the run refuses naming the path."""
    tree = arena
    os.link(tree("out:shadow"), tree("home:.claude.json"))
    planted = [inode(tree("out:shadow"))]
    params = tree.params(CLAUDE_JSON_BARE, manage_volume_root=True, **OWNER)
    before = protected(tree)

    _result, refusal = run_or_refuse(params)

    assert protected(tree) == before, changed_keys(before, protected(tree))
    assert sha256_of(tree("out:shadow")) not in hashes_readable_by(ATTACKER, tree.home), (
        "the attacker can read the root-only file's content in its volume")
    if refusal is not None:
        assert_refusal_names(refusal, tree("home:.claude.json"))
    assert_no_root_owned([tree.home], planted=planted)


def inode(path):
    st = os.lstat(path)
    return st.st_dev, st.st_ino
