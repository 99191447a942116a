# SPDX-License-Identifier: GPL-3.0-or-later
"""The guarantees the reliability suite checks after every fault, kill, race or random tree.

Built on agent_tree's snapshots and content manifests (multisets of sha256 of file contents).
"""

from __future__ import annotations

import collections
import os
import re
import signal
import typing as t

from agent_tree import Tree, contents, sha256_of, shape
from fault_injection import run_with_faults

BOOKKEEPING = ("lock", "staging", "pending-backup")
_STAMP = re.compile(r"(\.agent-state-link/backups/)[^/]+")


def bookkeeping(tree: Tree) -> t.List[str]:
    """The module's lock, staging area and pending-backup record: not user data."""
    return [os.path.join(tree.meta, name) for name in BOOKKEEPING]


def user_data(tree: Tree) -> t.Counter[str]:
    """tree.manifest() without any of the module's bookkeeping files (the pending-backup record too)."""
    return contents(tree.root, exclude=bookkeeping(tree))


def lost(before: t.Counter[str], after: t.Counter[str]) -> t.Set[str]:
    """Contents present before and nowhere after (a kill may leave a content twice, never zero times)."""
    return set(before) - set(after)


def assert_nothing_lost(tree: Tree, manifest: t.Counter[str], when: str = "") -> None:
    missing = lost(manifest, user_data(tree))
    assert not missing, f"{when}: {len(missing)} file content(s) lost from home and volume"


def assert_linked(tree: Tree, params: t.Mapping[str, t.Any]) -> None:
    """Every path a single-hop link to its target; the target, where it exists, real and inside the volume."""
    volume = os.path.realpath(tree.volume)
    for link in params["links"]:
        assert os.readlink(link["path"]) == link["target"], f"{link['path']} is not the link to {link['target']}"
        if os.path.lexists(link["target"]):
            assert not os.path.islink(link["target"]), f"{link['target']} is a symlink"
            assert os.path.isdir(link["target"]) == (link.get("kind", "directory") == "directory")
        resolved = os.path.realpath(link["path"])
        assert resolved == volume or resolved.startswith(volume + "/"), f"{link['path']} resolves outside the volume: {resolved}"


def assert_converged(tree: Tree, params: t.Mapping[str, t.Any], manifest: t.Counter[str]) -> None:
    """After a successful run: the links in place, every original content exactly once in the volume
    (backups included), none left in the home, no staged copy and no pending backup record, at most
    one backup directory."""
    assert_linked(tree, params)
    in_volume = contents(tree.volume, exclude=bookkeeping(tree))
    assert in_volume == manifest, (
        f"not every file exactly once in the volume: {len(lost(manifest, in_volume))} lost, "
        f"{sum((in_volume - manifest).values())} extra"
    )
    assert contents(tree.home, exclude=[tree.volume]) == collections.Counter(), "state left in the home"
    staging = os.path.join(tree.meta, "staging")
    assert not os.path.isdir(staging) or not os.listdir(staging), "staged copies left behind"
    assert not os.path.lexists(os.path.join(tree.meta, "pending-backup")), "a pending backup record left behind"
    backups = os.path.join(tree.meta, "backups")
    assert not os.path.isdir(backups) or len(os.listdir(backups)) <= 1, f"several backup directories: {os.listdir(backups)}"


def end_state(tree: Tree) -> t.Dict[str, t.Any]:
    """shape() of the whole sandbox as a comparable end state: the backup directory's time stamp,
    file times (a created file is new at every run) and the module's bookkeeping left out."""
    skipped = tuple(os.path.relpath(path, tree.root) for path in bookkeeping(tree))
    result = {}
    for rel, entry in shape(tree.root).items():
        if rel.startswith(skipped):
            continue
        if entry[0] == "file":
            entry = entry[:2] + entry[3:]
        result[_STAMP.sub(r"\1*", rel)] = entry
    return result


def read_through(path: str) -> t.Dict[str, str]:
    """sha256 of every file reachable below ``path`` following the state path's own link (as a
    program using the path does), keyed by relative path; links inside are not followed."""
    found = {}
    if os.path.isfile(path):
        return {"": sha256_of(path)}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                found[os.path.relpath(full, path)] = sha256_of(full)
    return found


def killed_before_each_call(sandbox, params, calls, manifest):
    """For each filesystem call of an uninterrupted run, in turn: a fresh sandbox, the engine killed
    just before that call, nothing lost.  Yields (call number, tree, when) for the caller's rerun checks."""
    for call in range(1, len(calls) + 1):
        tree = sandbox.reset()
        code, _calls = run_with_faults(params, kill_before=call)
        when = f"killed before call {call}/{len(calls)} ({calls[call - 1]})"
        assert code == -signal.SIGKILL, f"{when}: exit code {code}"
        assert_nothing_lost(tree, manifest, when)
        yield call, tree, when
