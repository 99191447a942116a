# SPDX-License-Identifier: GPL-3.0-or-later
"""--check through the role: every entry point, over every starting state of the module's tests
(tests/support/cases.py), one host per state.  A check run leaves every tree byte for byte as it
was and reports `changed` for exactly the hosts the real run then changes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import typing as t

import pytest

from agent_tree import Tree, snapshot
from cases import ABSENT_CASES, PREPARED_CASES, PRESENT_CASES
from rendering import sandbox_variables

pytestmark = pytest.mark.slow

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
CASES = PRESENT_CASES + PREPARED_CASES + ABSENT_CASES
HOSTS = [f"case{index:02d}" for index in range(len(CASES))]
RECAP = re.compile(r"^(\S+)\s+: ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", re.MULTILINE)


def role_variables(tree: Tree, case: t.Any) -> t.Dict[str, t.Any]:
    """The case's links as the role's extra links of the current user, in the case's sandbox."""
    extra_links = []
    for link in case.links:
        extra = {"path": os.path.relpath(tree(link["path"]), tree.home),
                 "target": os.path.relpath(tree(link["target"]), tree.volume)}
        extra.update({key: link[key] for key in ("kind", "initial_content") if key in link})
        extra_links.append(extra)
    return sandbox_variables(tree, agor_persistence_agents=[], agor_persistence_extra_links=extra_links)


def sandboxes(base: str) -> t.Tuple[t.Dict[str, Tree], str]:
    """One tree per case, built in its starting state, and the inventory naming them."""
    trees = {}
    hosts = {}
    for host, case in zip(HOSTS, CASES, strict=True):
        trees[host] = tree = Tree(os.path.join(base, host))
        tree.build(case.start)
        hosts[host] = role_variables(tree, case)
    inventory = os.path.join(base, "inventory.json")
    with open(inventory, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": hosts, "vars": {"ansible_connection": "local",
                                                    "ansible_python_interpreter": sys.executable}}}, handle)
    return trees, inventory


def run_entry_point(workdir: str, inventory: str, entry_point: str, *options: str) -> t.Tuple[subprocess.CompletedProcess, t.Dict[str, int]]:
    """The role's entry point on every host of ``inventory``; returns the process and each host's changed count."""
    playbook = os.path.join(workdir, f"{entry_point}.yml")
    with open(playbook, "w", encoding="utf-8") as handle:
        json.dump([{"name": entry_point, "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "Run the entry point", "ansible.builtin.import_role": {
                "name": "agor.persistence.agor_persistence", "tasks_from": entry_point}}]}], handle)
    env = dict(os.environ, ANSIBLE_HOME=os.path.join(workdir, "ansible-home"), ANSIBLE_NOCOLOR="1")
    completed = subprocess.run([ANSIBLE_PLAYBOOK, "-i", inventory, playbook, "-f", "8", *options], env=env, cwd=workdir,
                               capture_output=True, text=True, timeout=900, check=False)
    recap = {host: (int(changed), int(failed)) for host, changed, failed in RECAP.findall(completed.stdout)}
    assert sorted(recap) == HOSTS, completed.stdout[-3000:] + completed.stderr
    return completed, {host: changed for host, (changed, _failed) in recap.items()}


@pytest.mark.parametrize("entry_point", ["build", "start"])
def test_check_changes_nothing_and_predicts_changed(tmp_path, entry_point):
    trees, inventory = sandboxes(str(tmp_path / "trees"))
    before = {host: snapshot(tree.root) for host, tree in trees.items()}

    checked, predicted = run_entry_point(str(tmp_path), inventory, entry_point, "--check", "--diff")

    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr
    touched = [host for host, tree in trees.items() if snapshot(tree.root) != before[host]]
    assert touched == [], f"--check changed the trees of {', '.join(f'{host} ({CASES[HOSTS.index(host)].id})' for host in touched)}"

    real, changed = run_entry_point(str(tmp_path), inventory, entry_point)

    assert real.returncode == 0, real.stdout[-3000:] + real.stderr
    assert any(changed.values()) and not all(changed.values()), "the states must include converged and unconverged ones"
    assert predicted == changed, {CASES[HOSTS.index(host)].id: (predicted[host], changed[host])
                                  for host in HOSTS if predicted[host] != changed[host]}


def test_audit_changes_nothing_with_or_without_check(tmp_path):
    trees, inventory = sandboxes(str(tmp_path / "trees"))
    before = {host: snapshot(tree.root) for host, tree in trees.items()}
    outcomes = []
    for options in (("--check",), ()):
        completed, changed = run_entry_point(str(tmp_path), inventory, "audit", *options)
        assert completed.returncode == 2, completed.stdout[-3000:] + completed.stderr  # some states drifted
        assert not any(changed.values()), "an audit is a check, never a change"
        assert {host: snapshot(tree.root) for host, tree in trees.items()} == before
        outcomes.append(RECAP.findall(completed.stdout))
    assert outcomes[0] == outcomes[1], "--check makes no difference to an audit"


def test_render_check_writes_nothing(tmp_path):
    render_dir = tmp_path / "rendered"
    variables = json.dumps({"agor_persistence_render_dir": str(render_dir)})
    env = dict(os.environ, ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_NOCOLOR="1")
    runs = {}
    for options in (("--check", "--diff"), ()):
        completed = subprocess.run([ANSIBLE_PLAYBOOK, "agor.persistence.render", "-e", variables, *options], env=env,
                                   cwd=str(tmp_path), capture_output=True, text=True, timeout=300, check=False)
        assert completed.returncode == 0, completed.stdout + completed.stderr
        runs[options] = RECAP.search(completed.stdout).group(2)
        if options:
            assert not render_dir.exists(), "render --check wrote files"
    assert runs[("--check", "--diff")] == runs[()] != "0"
