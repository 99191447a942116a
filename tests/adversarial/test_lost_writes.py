# SPDX-License-Identifier: GPL-3.0-or-later
"""Writes the user's programs make while a run moves or restores their state (issue 9, third and
fourth bullets): an acknowledged write is never lost, a save made during a rollback survives it,
and a rollback that cannot finish refuses before changing anything.

The programs run as the agents' user (tests/support/racer.py), beside the engine running as root.
"""

from __future__ import annotations

import os
import shutil

from agent_tree import CLAUDE, CLAUDE_JSON_BARE, CODEX, Link, read, shape, snapshot, write
from attacker import (
    ATTACKER, AttackersContainer, as_user, assert_no_root_owned, assert_refusal_names, changed_keys, racing, root_watch,
    run_or_refuse,
)
from mounts import give_to
from guarantees import user_data
from runs import attack_runs

OWNER = {"owner": str(ATTACKER), "group": str(ATTACKER)}


def numbers_anywhere(tree):
    """Every line that is a number, in every regular file of the home and the volume (backups too)."""
    found = set()
    for dirpath, _dirnames, filenames in os.walk(tree.home):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                found.update(int(line) for line in read(path).splitlines() if line.isdigit())
    return found


def test_file_appended_to_during_a_cross_filesystem_move(reachable_base, mounts, figures):
    """While ~/.claude.json is moved to another filesystem (copy, then link), the user's program
    keeps appending to it: every append that returned must be found afterwards, in the volume's
    copy (through the link) or a backup, whether the run completed or refused."""
    sandbox = AttackersContainer(reachable_base, mounts, image={"home:.claude.json": "{}\n" + "x" * 65536 + "\n"})
    params = sandbox.tree.params(CLAUDE_JSON_BARE, **OWNER)
    runs, outcomes, losses = attack_runs(12), {}, []
    for trial in range(runs):
        tree = sandbox.reset() if trial else sandbox.tree
        with racing([{"pause": 0.0002}, {"append": tree("home:.claude.json")}]) as report:
            _result, refusal = run_or_refuse(params)
        key = "completed" if refusal is None else refusal[:100]
        outcomes[key] = outcomes.get(key, 0) + 1
        missing = set(range(1, report["appended"] + 1)) - numbers_anywhere(tree)
        if missing:
            losses.append(f"trial {trial} ({key}): {len(missing)} of {report['appended']} acknowledged appends lost")
    figures(runs=runs, outcomes=outcomes, losses=len(losses))
    assert not losses, "\n".join(losses)


def linked_claude_json(tree):
    """The linked state a rollback starts from: ~/.claude.json the link to the volume's copy."""
    path, target = tree("home:.claude.json"), tree("vol:.claude.json")
    if os.path.lexists(path):
        os.unlink(path)
    os.symlink(target, path)
    os.lchown(path, ATTACKER, ATTACKER)


def test_rollback_racing_a_save(arena, figures):
    """``state: absent`` while the user's program saves ~/.claude.json by write-then-rename: the
    last save that completed before the run ended is what the path holds afterwards (the run may
    restore before it, or refuse; it must never put the older volume copy over it)."""
    tree = arena
    write(tree("vol:.claude.json"), '{"volume": "the copy the rollback restores"}' + " " * 262144)
    give_to(ATTACKER, tree.home)
    params = tree.params(CLAUDE_JSON_BARE, state="absent", **OWNER)
    runs, outcomes, overwritten, unsaved = attack_runs(20), {}, [], 0
    for trial in range(runs):
        linked_claude_json(tree)
        with racing([{"pause": 0.003}, {"save": tree("home:.claude.json")}]) as report:
            _result, refusal = run_or_refuse(params)
        key = "completed" if refusal is None else refusal[:100]
        outcomes[key] = outcomes.get(key, 0) + 1
        if not report["saved"]:
            unsaved += 1
            continue
        held = read(tree("home:.claude.json"))
        if held != f'{{"save": {report["saved"]}}}':
            overwritten.append(f"trial {trial} ({key}): save {report['saved']} replaced by {held[:50]!r}")
    figures(runs=runs, outcomes=outcomes, overwritten=len(overwritten), trials_without_a_save=unsaved)
    assert not overwritten, "\n".join(overwritten)
    assert unsaved < runs, "the saver never saved during a run"


def test_restore_copy_renamed_away_mid_rollback(arena, figures):
    """``state: absent`` of ~/.claude while the agents' user renames every new entry of its home
    away: each run completes or refuses with a clear error (never an AttributeError or another
    traceback: run_or_refuse lets those escape), the volume keeps every file, and the user never
    catches a root-owned entry."""
    tree = arena
    tree.build({f"vol:.claude/projects/-w/s{index}.jsonl": f"session {index}" for index in range(40)})
    os.makedirs(tree("home:loot"))
    give_to(ATTACKER, tree.home)
    params = tree.params(CLAUDE, state="absent", **OWNER)
    volume_before = snapshot(tree("vol:.claude"))
    runs, outcomes = attack_runs(40), {}
    moves = [{"pause": 0}, {"steal": tree.home, "spare": [".claude", ".agor", "loot"], "loot": tree("home:loot")}]
    with root_watch([tree.home]) as seen, racing(moves) as report:
        for _trial in range(runs):
            if os.path.isdir(tree("home:.claude")) and not os.path.islink(tree("home:.claude")):
                shutil.rmtree(tree("home:.claude"))  # the restored copy: the volume keeps the original
            if not os.path.lexists(tree("home:.claude")):  # the link of a start, made as its owner makes it
                assert as_user(ATTACKER, os.symlink, tree("vol:.claude"), tree("home:.claude"))
            _result, refusal = run_or_refuse(params)
            key = "completed" if refusal is None else refusal[:100]
            outcomes[key] = outcomes.get(key, 0) + 1
    figures(runs=runs, outcomes=outcomes, stolen=report["stolen"], root_owned_caught=len(report["root_owned"]))
    assert snapshot(tree("vol:.claude")) == volume_before, "the rollback changed the volume's copy"
    assert report["root_owned"] == [], f"the agents' user caught root-owned entries: {report['root_owned'][:5]}"
    assert_no_root_owned([tree.home], seen)


def test_fifo_in_the_volume_before_a_rollback(arena):
    """A FIFO in a target makes that link impossible to restore: ``state: absent`` refuses before
    any change (no other link rolled back, no partial copy left), naming the FIFO."""
    tree = arena
    tree.build({"vol:.codex/config.toml": 'model = "o3"', "vol:.claude/settings.json": "{}",
                "home:.codex": Link("vol:.codex"), "home:.claude": Link("vol:.claude")})
    os.mkfifo(tree("vol:.claude/agent.fifo"))
    give_to(ATTACKER, tree.home)
    params = tree.params(CODEX, CLAUDE, state="absent", **OWNER)
    before, data = entries(tree), user_data(tree)

    _result, refusal = run_or_refuse(params)

    assert refusal is not None, "a rollback that cannot copy a FIFO completed"
    assert_refusal_names(refusal, tree("vol:.claude/agent.fifo"))
    assert entries(tree) == before, "the refused rollback changed the home or the volume:\n" + "\n".join(
        changed_keys(before, entries(tree)))
    assert user_data(tree) == data
    assert_no_root_owned([tree.home])


def entries(tree):
    """Every entry of home and volume as shape() sees it (directory times aside), the module's
    bookkeeping directory left out (a refused run may still have taken the lock)."""
    meta = os.path.relpath(tree.meta, tree.root)
    return {rel: entry for rel, entry in shape(tree.root).items() if rel != meta and not rel.startswith(meta + "/")}
