# SPDX-License-Identifier: GPL-3.0-or-later
"""The role's variables as a user mistypes them, and its refusals in the user's terms: each run
through `ansible-playbook agor.persistence.start`, each refusal changing nothing."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest

from agent_tree import Link, engine_command, engine_env, snapshot
from rendering import playbook, sandbox_variables

from ansible_collections.agor.persistence.plugins.module_utils._engine import mount_point_of

MISTYPED = [
    ("singular agor_persistence_agent", {"agor_persistence_agent": ["claude"]},
     "agor_persistence_agent: no such variable of the agor_persistence role; did you mean agor_persistence_agents?"),
    ("extra link with knid for kind", {"agor_persistence_extra_links": [{"path": ".netrc", "knid": "file"}]},
     "agor_persistence_extra_links[0].knid: no such key; did you mean kind?"),
    ("agor_persistence_requires_mount", {"agor_persistence_requires_mount": False},
     "agor_persistence_requires_mount: no such variable of the agor_persistence role; "
     "did you mean agor_persistence_require_mount?"),
    ("conflict value", {"agor_persistence_conflict": "backups"},
     "agor_persistence_conflict must be one of: backup, fail, got: backups"),
]


@pytest.mark.parametrize("variables, message", [case[1:] for case in MISTYPED], ids=[case[0] for case in MISTYPED])
def test_mistyped_variable_is_refused_with_its_name(tree, variables, message):
    tree.build({"home:.claude/s.jsonl": "S"})
    before = snapshot(tree.root)
    proc = playbook("start", sandbox_variables(tree, **variables), check=False)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stdout, proc.stdout
    assert snapshot(tree.root) == before


def test_string_where_a_list_is_expected_is_one_element(tree):
    playbook("start", sandbox_variables(tree, agor_persistence_agents="codex"))
    tree.expect({"home:.codex": Link("vol:.codex")})
    assert sorted(os.listdir(tree.home)) == [".agor", ".codex"], "only codex's path, not one per character"


def _refusals(tree):
    """(id, variables, message) of refusals that name the role's variables, for the sandbox ``tree``."""
    cases = [
        ("further user unknown to the system", {"agor_persistence_agents": [], "agor_persistence_users": [
            {"name": "agor_no_such_user", "home": tree.home + "-other", "agents": ["claude"]}]},
         "owner of agor_persistence_users[0] (agent claude): unknown user 'agor_no_such_user'"),
        ("extra link on an agent's path", {"agor_persistence_extra_links": [{"path": ".claude"}]},
         f"path of agor_persistence_extra_links[0]: {tree.home}/.claude is given twice (also path of agent claude (~/.claude))"),
        ("extra link target outside the volume", {"agor_persistence_extra_links": [{"path": ".aws", "target": "/aws"}]},
         "agor_persistence_extra_links[0].target: '/aws' must be a path relative to the volume"),
        ("volume missing", {"agor_persistence_volume": tree.home + "/no-volume", "agor_persistence_require_mount": True},
         f"agor_persistence_volume: {tree.home}/no-volume does not exist"),
    ]
    if mount_point_of(os.path.realpath(tree.volume)) == "/":
        cases.append(("volume not mounted", {"agor_persistence_require_mount": True},
                      f"agor_persistence_volume: {tree.volume} is not on a mounted volume (it lies on the root filesystem); "
                      "persistence would be lost at the next restart. Mount the persistent volume there or at a parent "
                      "directory, or set agor_persistence_require_mount=false"))
    return cases


def test_refusals_name_the_roles_variables(tree):
    tree.build({"home:.claude/s.jsonl": "S"})
    before = snapshot(tree.root)
    for case_id, variables, message in _refusals(tree):
        proc = playbook("start", sandbox_variables(tree, **variables), check=False)
        assert proc.returncode == 2, f"{case_id}: {proc.stdout}"
        assert message in proc.stdout, f"{case_id}: {proc.stdout}"
        assert not re.search(r"(?<![\w.])(links\[|require_mount=)", proc.stdout), f"{case_id}: the module's names"
        assert snapshot(tree.root) == before, case_id


@pytest.fixture
def public_tmp():
    """A directory every user can reach (pytest's is private to root)."""
    path = tempfile.mkdtemp(prefix="agor-non-root-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path)
    shutil.rmtree(path)


def test_non_root_start_is_told_to_run_as_root(public_tmp, as_root):
    """The module run as the agents' user on a volume owned by root, as on Railway without RAILWAY_RUN_UID=0."""
    home, volume = public_tmp / "home", public_tmp / "home" / ".agor"
    volume.mkdir(parents=True)
    os.chown(home, 65534, 65534)
    params = {"links": [{"path": str(home / ".claude"), "target": str(volume / ".claude")}], "volume": str(volume),
              "require_mount": False}
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *engine_command(params)],
                          env=engine_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    message = json.loads(proc.stdout)["msg"]
    assert f"volume: {volume} is owned by uid 0, not by uid 65534 that runs this: run the start step as root " \
           "(e.g. RAILWAY_RUN_UID=0 on Railway)" in message
