# SPDX-License-Identifier: GPL-3.0-or-later
"""Runs at once on the same links serialize on the volume's lock: one does the work, the others
then find nothing to do, and the end state is the one a single run leaves."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, CODEX, contents, engine_command, engine_env, outline, populate, run_engine, write


@pytest.mark.parametrize("runs", [2, 4])
def test_runs_at_once_serialize(tmpfs_tree, runs):
    tree = tmpfs_tree
    populate(tree("home:.claude"), files=1500, big=1)
    write(tree("vol:.claude/settings.json"), '{"model": "sonnet"}')  # a conflict: one backup, made once
    write(tree("home:.codex/auth.json"), '{"key": "k"}')
    params = tree.params(CLAUDE, CLAUDE_JSON, CODEX)
    manifest = tree.manifest()
    predicted = run_engine(params, check_mode=True)

    processes = [subprocess.Popen(engine_command(params), env=engine_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for dummy in range(runs)]
    outputs = [process.communicate(timeout=300) for process in processes]

    assert [process.returncode for process in processes] == [0] * runs, [err.decode() for _out, err in outputs]
    results = [json.loads(out) for out, _err in outputs]
    worked = [result for result in results if result["changed"]]
    assert len(worked) == 1, "exactly one run does the work"
    assert outline(worked[0]) == outline(predicted)
    for idle in (result for result in results if not result["changed"]):
        assert [record["actions"] for record in idle["links"]] == [[], [], []], "the others have nothing to do"
        assert idle["backup_dir"] is None
    created = collections.Counter([hashlib.sha256(b"{}").hexdigest()])  # .claude.json from initial_content
    assert tree.manifest() == manifest + created, "every file exactly once, home and volume together"
    assert contents(tree.home, exclude=[tree.volume]) == collections.Counter()
    for link in params["links"]:
        assert os.readlink(link["path"]) == link["target"]
    assert len(os.listdir(os.path.join(tree.meta, "backups"))) == 1
    assert not run_engine(params)["changed"]
