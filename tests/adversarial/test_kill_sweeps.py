# SPDX-License-Identifier: GPL-3.0-or-later
"""SIGKILL sweeps for ``state: absent``, ``prepared`` and ``present``, in a container whose home and
volume belong to the agents' user.

The engine is killed just before each of its filesystem calls in turn (fault_injection), then run
again.  After each kill: no file content is missing, and no entry is owned by root where the
agents' user can move it (the kill is an instant too).  The rerun completes and its end state is
the uninterrupted run's, owners and modes included: a killed rollback's partial copy is gone, a
killed image build's staged copies are cleared, nothing root-owned is left in the home.

A new container's first process is PID 1 again: runs killed and rerun as PID 1 (the PID the
engine sees is forced) must not find the killed run's leftovers in their way.
"""

from __future__ import annotations

import collections
import os
import signal

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON_BARE, CODEX, Link
from attacker import ATTACKER, AttackersContainer, find_root_owned
from fault_injection import start_with_faults
from guarantees import assert_nothing_lost, end_state
from runs import attack_runs

OWNER = {"owner": str(ATTACKER), "group": str(ATTACKER)}
LINKS = [CLAUDE, CLAUDE_JSON_BARE, CODEX]


def live(base, ref):
    """The path of a vol: reference in the sandbox an AttackersContainer at ``base`` makes (for links in its image)."""
    return os.path.join(base, "live", "home", "agor", ".agor", ref.partition(":")[2])


def linked_container(base, mounts):
    """After a start: the home's paths are links into the volume, which holds the state."""
    image = {f"home:{name}": Link(live(base, f"vol:{name}")) for name in (".claude", ".claude.json", ".codex")}
    volume = {"vol:.claude/settings.json": '{"model": "opus"}', "vol:.claude/projects/-w/s1.jsonl": "s1",
              "vol:.claude/projects/-w/deep/s2.jsonl": "s2", "vol:.claude/links/relative": Link("../settings.json"),
              "vol:.claude.json": '{"userID": "volume"}', "vol:.codex/config.toml": 'model = "o3"'}
    return AttackersContainer(base, mounts, image=image, volume=volume), dict(OWNER, state="absent")


def image_build(base, mounts):
    """An image build: real state in the home, moved to the seed store (another filesystem)."""
    image = {"home:.claude/settings.json": '{"model": "opus"}', "home:.claude/projects/-w/s1.jsonl": "s1",
             "home:.claude/agents/reviewer.md": "reviewer", "home:.claude.json": '{"userID": "image"}',
             "home:.codex/config.toml": 'model = "o3"'}
    sandbox = AttackersContainer(base, mounts, image=image)
    return sandbox, dict(OWNER, state="prepared", seed_store=sandbox.tree.seed_store)


def started_container(base, mounts):
    """A first start: real state in the home (image layer), some already in the volume."""
    image = {"home:.claude/settings.json": '{"model": "home"}', "home:.claude/projects/-w/s1.jsonl": "s1",
             "home:.claude.json": '{"userID": "home"}', "home:.codex/config.toml": 'model = "o3"'}
    volume = {"vol:.claude/settings.json": '{"model": "volume"}', "vol:.claude/projects/-w/old.jsonl": "old"}
    return AttackersContainer(base, mounts, image=image, volume=volume), dict(OWNER, state="present")


# present is swept in tests/reliability/test_crash.py too; here the home is the attacker's, and
# what a kill leaves there is checked for root-owned entries.
SWEEPS = {"absent": linked_container, "prepared": image_build, "present": started_container}


def engine(params, **faults):
    """Run the engine in a child process (see fault_injection): (exit code, calls, error)."""
    child = start_with_faults(params, **faults)
    code, calls = child.wait()
    return code, calls, child.error


def reference_run(sandbox, params, **faults):
    code, calls, error = engine(params, **faults)
    assert code == 0, f"the uninterrupted run failed: {error}"
    return calls, end_state(sandbox.tree)


@pytest.mark.parametrize("state", SWEEPS)
def test_sigkill_before_every_filesystem_call(reachable_base, mounts, state, figures):
    sandbox, options = SWEEPS[state](reachable_base, mounts)
    params = sandbox.tree.params(*LINKS, **options)
    manifest = sandbox.tree.manifest()
    calls, reference = reference_run(sandbox, params)
    root_owned = {}  # finding -> the first kill that left it
    for call in range(1, len(calls) + 1):
        tree = sandbox.reset()
        code, _calls, error = engine(params, kill_before=call)
        when = f"killed before call {call}/{len(calls)} ({calls[call - 1]})"
        assert code == -signal.SIGKILL, f"{when}: exit code {code} {error}"
        assert_nothing_lost(tree, manifest, when)
        for finding in find_root_owned([tree.home]):
            root_owned.setdefault(finding.replace(tree.root, "<sandbox>"), when)
        code, _calls, error = engine(params)
        assert code == 0, f"{when}: the rerun failed: {error}"
        assert_nothing_lost(tree, manifest, f"{when}, rerun")
        assert end_state(tree) == reference, f"{when}: the rerun's end state differs from an uninterrupted run's: " + "; ".join(
            differences(reference, end_state(tree))[:6])
        for finding in find_root_owned([tree.home]):
            root_owned.setdefault(finding.replace(tree.root, "<sandbox>"), f"{when}, after the rerun")
    figures(kill_points=len(calls), calls=dict(collections.Counter(calls)))
    assert not root_owned, "root-owned entries where the agents' user can move them:\n" + "\n".join(
        f"{finding}: {when}" for finding, when in sorted(root_owned.items(), key=lambda item: item[1]))


def differences(reference, found):
    return [f"{rel}: {reference.get(rel)} -> {found.get(rel)}" for rel in sorted(set(reference) | set(found))
            if reference.get(rel) != found.get(rel)]


NEW_CONTAINER = {"present": started_container, "prepared": image_build}


@pytest.mark.parametrize("state", NEW_CONTAINER)
def test_new_container_with_the_same_pid_1(reachable_base, mounts, state, figures):
    """Killed as PID 1 at points spread over the run, then run again as PID 1 (a new container of
    the same image): the rerun completes with the uninterrupted run's end state."""
    sandbox, options = NEW_CONTAINER[state](reachable_base, mounts)
    params = sandbox.tree.params(*LINKS, **options)
    manifest = sandbox.tree.manifest()
    calls, reference = reference_run(sandbox, params, pid=1)
    points = sorted({1 + index * len(calls) // attack_runs(8) for index in range(attack_runs(8))})
    failures = []
    for call in points:
        tree = sandbox.reset()
        code, _calls, error = engine(params, kill_before=call, pid=1)
        when = f"killed before call {call}/{len(calls)} ({calls[call - 1]})"
        assert code == -signal.SIGKILL, f"{when}: exit code {code} {error}"
        code, _calls, error = engine(params, pid=1)
        assert_nothing_lost(tree, manifest, when)
        if code != 0:
            failures.append(f"{when}: the new container's run failed: {error}")
        elif end_state(tree) != reference:
            failures.append(f"{when}: end state differs: " + "; ".join(differences(reference, end_state(tree))[:4]))
    figures(kill_points=points)
    assert not failures, "\n".join(failures)
