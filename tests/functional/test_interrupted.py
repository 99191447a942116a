# SPDX-License-Identifier: GPL-3.0-or-later
"""SIGKILL at any moment of a large migration onto another filesystem, then a rerun: nothing lost,
nothing duplicated, and check mode still predicts the rerun exactly."""

from __future__ import annotations

import collections
import os
import signal
import subprocess

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, Tree, contents, engine_command, engine_env, migration_phase, outline, populate, run_engine, write


def sandbox(base, name, mount):
    """A tree with a grown state to migrate onto a tmpfs volume from another filesystem, conflicts
    included (so backups are made too): the volume already holds settings.json and .claude.json."""
    tree = Tree(os.path.join(base, name))
    mount(tree.home)  # a tmpfs too (another one): the test's writes never wait for a disk
    os.makedirs(tree.volume)
    mount(tree.volume)
    populate(tree("home:.claude"), files=2000, big=4)
    write(tree("vol:.claude/settings.json"), '{"model": "sonnet"}')
    write(tree("home:.claude.json"), '{"userID": "home"}')
    write(tree("vol:.claude.json"), '{"userID": "volume"}')
    return tree, tree.params(CLAUDE, CLAUDE_JSON)


def release(tree):
    """Unmount an attempt's filesystems at once (the mount fixture would only at teardown): tmpfs is memory."""
    for point in (tree.volume, tree.home):
        subprocess.run(["umount", point], check=True)


def start(params):
    return subprocess.Popen(engine_command(params), env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def assert_whole(tree, params, manifest):
    """Every original file exactly once, all of it in the volume (backups included), the links in place."""
    assert tree.manifest() == manifest, "a file was lost or duplicated"
    assert contents(tree.home, exclude=[tree.volume]) == collections.Counter(), "state left in the home"
    for link in params["links"]:
        assert os.readlink(link["path"]) == link["target"]
    assert not os.listdir(os.path.join(tree.meta, "staging")), "staged copies left behind"


@pytest.mark.slow
def test_killed_at_any_moment_then_rerun_loses_nothing(tmp_path, mount):
    """Kill after a delay that grows until a run finishes before it, so the kills fall in every
    phase (copying, putting in place, removing sources, linking) whatever this machine's speed."""
    phases = {}
    delay = 0.05
    for attempt in range(30):
        tree, params = sandbox(str(tmp_path), f"attempt-{attempt}", mount)
        manifest = tree.manifest()
        process = start(params)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        else:
            assert process.returncode == 0, process.stderr.read()
            assert_whole(tree, params, manifest)
            break
        phases.setdefault(migration_phase(tree), []).append(round(delay, 3))

        predicted = run_engine(params, check_mode=True)
        result = run_engine(params)
        assert outline(predicted) == outline(result), f"killed after {delay:.3f} s: check mode mispredicted the rerun"
        assert_whole(tree, params, manifest)
        assert not run_engine(params)["changed"]
        backups = [entry["path"] for record in result["links"] for entry in record["backups"]]
        assert set(backups) <= {tree("home:.claude/settings.json"), tree("home:.claude.json")}
        release(tree)
        delay *= 1.3
    else:
        pytest.fail("the migration never finished before being killed")
    midway = set(phases) - {"nothing moved yet", "linked"}
    assert midway, f"no kill fell in the middle of the migration, the test proved little: {phases}"
