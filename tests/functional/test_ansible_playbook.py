# SPDX-License-Identifier: GPL-3.0-or-later
"""The module run by Ansible itself: ansible-playbook on localhost, in real, --check and --diff mode.

Each play registers the module's result and writes it to a file (even in check mode), which the
test reads back as the user's playbook would see it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, CODEX, Link, outline, snapshot

from ansible_collections.agor.persistence.plugins.module_utils._engine import mount_point_of

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def play(tree, workdir, module_args, *options):
    """Run a one-task play with ``module_args``; return (completed process, registered result or None)."""
    results = os.path.join(workdir, "result.json")
    if os.path.exists(results):
        os.unlink(results)
    playbook = [{
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [
            {"name": "link agent state", "agor.persistence.agent_state_link": module_args, "register": "result"},
            {"name": "keep the result", "ansible.builtin.copy": {"content": "{{ result | to_json }}", "dest": results},
             "check_mode": False, "diff": False},
        ],
    }]
    path = os.path.join(workdir, "playbook.yml")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)  # JSON is YAML
    env = dict(os.environ, ANSIBLE_HOME=os.path.join(workdir, "ansible-home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    completed = subprocess.run([ANSIBLE_PLAYBOOK, path, *options], env=env, capture_output=True, text=True, timeout=300,
                               cwd=workdir, check=False)
    result = None
    if os.path.exists(results):
        with open(results, encoding="utf-8") as handle:
            result = json.load(handle)
    return completed, result


def task_status(completed):
    """How ansible-playbook reported the module's task: ok, changed or fatal."""
    found = re.search(r"^TASK \[link agent state\].*?^(ok|changed|fatal): \[localhost\]", completed.stdout, re.S | re.M)
    assert found, completed.stdout
    return found.group(1)


@pytest.fixture
def workdir(tmp_path_factory):
    """Playbook, result and ANSIBLE_HOME: outside the sandbox, whose snapshots must not see them."""
    return str(tmp_path_factory.mktemp("ansible"))


@pytest.mark.slow  # three ansible-playbook runs
def test_check_diff_real_and_rerun(tree, workdir):
    tree.build({
        "home:.claude/projects/-work/s.jsonl": "S", "home:.claude/settings.json": "home",  # migrated, one conflict
        "vol:.claude/settings.json": "volume",
        "out:dir/keep": "K", "home:.codex": Link("out:dir"),  # a link elsewhere
    })
    with open(os.path.join(os.fsencode(tree("home:.claude")), b"caf\xe9.jsonl"), "wb") as handle:
        handle.write(b"a name that is not UTF-8")
    args = tree.params(CLAUDE, CLAUDE_JSON, CODEX)
    before = snapshot(tree.root)

    checked, predicted = play(tree, workdir, args, "--check", "--diff")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert task_status(checked) == "changed"
    assert snapshot(tree.root) == before, "ansible-playbook --check changed the tree"
    assert predicted["changed"]
    assert [record["actions"] for record in predicted["links"]] == [
        ["move", "backup", "link"], ["create_file", "link"], ["create_directory", "link"]]

    real, result = play(tree, workdir, args, "--diff")
    assert real.returncode == 0, real.stdout + real.stderr
    assert outline(result) == outline(predicted)
    for link in args["links"]:  # a before/after per link, in the form of ansible.builtin.file's diff
        assert f"--- before: {link['path']}\n+++ after: {link['path']}\n" in real.stdout
    # a short text per link: path and target before and after, then a line per entry moved or backed up
    assert f'-path   {tree("home:.claude")}: directory\n' in real.stdout
    assert f'+path   {tree("home:.claude")}: link to {tree("vol:.claude")}\n' in real.stdout
    assert f'moved {tree("home:.claude/projects")} -> {tree("vol:.claude/projects")}\n' in real.stdout
    assert f'backed up {tree("home:.claude/settings.json")} (differs from the volume copy) -> {result["backup_dir"]}' in real.stdout
    assert result["links"][0]["migrated"] == [tree("home:.claude/caf\\xe9.jsonl"), tree("home:.claude/projects")]
    assert result["links"][0]["backups"] == [
        {"path": tree("home:.claude/settings.json"), "backup": result["backup_dir"] + tree("home:.claude/settings.json")}]
    tree.expect({"home:.claude": Link("vol:.claude"), "home:.claude.json": Link("vol:.claude.json"), "home:.codex": Link("vol:.codex"),
                 "vol:.claude/projects/-work/s.jsonl": "S", "vol:.claude/settings.json": "volume", "vol:.claude.json": "{}",
                 "out:dir/keep": "K"})
    assert task_status(real) == "changed"

    again, rerun = play(tree, workdir, args)
    assert again.returncode == 0
    assert not rerun["changed"]
    assert task_status(again) == "ok"


def test_refusal_fails_the_play_with_its_message(tree, workdir):
    if mount_point_of(os.path.realpath(tree.volume)) != "/":
        pytest.skip("the sandbox is not on the root filesystem here; nothing to refuse")
    tree.build({"home:.claude/s.jsonl": "S"})
    before = snapshot(tree.root)
    for options in ((), ("--check",)):
        completed, result = play(tree, workdir, tree.params(CLAUDE, require_mount=True), *options)
        assert completed.returncode == 2
        assert result is None, "the play stops at the failed task"
        assert f"volume: {tree.volume} is not on a mounted volume" in completed.stdout
        assert "persistence would be lost at the next restart" in completed.stdout
        assert task_status(completed) == "fatal"
        assert "failed=1" in completed.stdout
        assert snapshot(tree.root) == before
