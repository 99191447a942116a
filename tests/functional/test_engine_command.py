# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's own command, agor-persistence: a zipapp run by ``python3 -I -S`` (no ansible, no PyYAML
importable), its subcommands, output and exit codes, and the engine flavour's rendered entrypoint
handing over to the image's own entrypoint and command."""

from __future__ import annotations

import json
import os
import pwd
import subprocess

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, DIR, Link, Tree, reachable, snapshot
from engine_command import PYTHON, build_command, run_command
from mounts import give_to
from rendering import render


@pytest.fixture(scope="module")
def command(tmp_path_factory):
    return build_command(str(tmp_path_factory.mktemp("command")))


@pytest.fixture
def workdir(tmp_path_factory):
    """Where the runs' parameter and result files go, outside the sandbox."""
    return str(tmp_path_factory.mktemp("run"))


def test_runs_isolated_without_ansible_or_yaml(command, tree, workdir):
    for module in ("ansible", "yaml"):
        assert subprocess.run([*PYTHON, "-c", f"import {module}"], capture_output=True, check=False).returncode != 0
    tree.build({"home:.claude/s": "S"})
    proc = subprocess.run([*PYTHON, "-X", "importtime", command, "audit", "--params", _params_file(tree, workdir)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stderr
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "ansible_collections.agor.persistence.plugins.module_utils._engine" in imported
    assert not {name for name in imported if name.split(".")[0] in ("ansible", "yaml")}


def test_help_documents_output_and_exit_codes(command):
    proc = subprocess.run([*PYTHON, command, "--help"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for subcommand in ("build", "start", "audit", "rollback"):
        assert f"\n  {subcommand} " in proc.stdout
    for line in ("0  done (audit: nothing drifted)", "1  error:", "2  audit only: at least one path drifted"):
        assert line in proc.stdout


def test_audit_clean_drifted_and_failed(command, tree, workdir):
    """Exit 0 clean, 2 naming each drifted path (nothing changed), 1 with the reason when it cannot look."""
    tree.build({"vol:.claude/s": "S", "home:.claude": Link("vol:.claude"), "vol:.claude.json": "{}",
                "home:.claude.json": Link("vol:.claude.json")})
    params = tree.params(CLAUDE, CLAUDE_JSON)
    proc, result = run_command(command, "audit", params=params, workdir=workdir)
    assert proc.returncode == 0 and proc.stdout == "agor-persistence audit: clean, 2 link(s)\n"
    assert result is not None and not result["changed"]

    os.unlink(tree("home:.claude"))
    tree.build({"home:.claude/new.jsonl": "N"})
    before = snapshot(tree.root)
    proc, result = run_command(command, "audit", params=params, workdir=workdir)
    assert proc.returncode == 2
    assert proc.stdout.splitlines() == [
        f"{tree('home:.claude')}: is directory, expected link to {tree('vol:.claude')}; start would move, link",
        "agor-persistence audit: 1 drifted path(s), 2 link(s)",
    ]
    assert result is not None and result["changed"] and result["links"][0]["actions"] == ["move", "link"]
    assert snapshot(tree.root) == before, "an audit changes nothing"

    gone = tree.params({"path": "home:.codex", "target": "home:gone/.codex"}, volume="home:gone")
    proc, result = run_command(command, "audit", params=gone, workdir=workdir)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"agor-persistence audit: volume: {tree('home:gone')} does not exist" in proc.stderr, proc.stderr
    assert result is not None and result["failed"] and result["msg"] in proc.stderr


def test_start_check_changes_nothing_then_start_repairs(command, tree, workdir):
    tree.build({"home:.claude/projects/s.jsonl": "S", "vol:.claude/settings.json": "{}"})
    params = tree.params(CLAUDE)
    before = snapshot(tree.root)
    proc, predicted = run_command(command, "start", "--check", "--diff", params=params, workdir=workdir)
    assert proc.returncode == 0, proc.stderr
    assert snapshot(tree.root) == before, "--check changes nothing"
    assert proc.stdout.splitlines() == [
        f"{tree('home:.claude')}: move, link",
        f"--- {tree('home:.claude')}", f"+++ {tree('home:.claude')}",
        f"-path   {tree('home:.claude')}: directory", f"+path   {tree('home:.claude')}: link to {tree('vol:.claude')}",
        f" target {tree('vol:.claude')}: directory",
        f"moved {tree('home:.claude/projects')} -> {tree('vol:.claude/projects')}",
        "agor-persistence start: 1 of 1 link(s) would change",
    ]
    proc, result = run_command(command, "start", params=params, workdir=workdir)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "agor-persistence start: 1 of 1 link(s) changed"
    assert predicted is not None and result is not None and predicted["links"][0]["steps"] == result["links"][0]["steps"]
    tree.expect({"home:.claude": Link("vol:.claude"), "vol:.claude/projects/s.jsonl": "S"})
    proc, again = run_command(command, "start", params=params, workdir=workdir)
    assert proc.stdout == "agor-persistence start: 0 of 1 link(s) changed\n" and again is not None and not again["changed"]


def test_build_then_rollback(command, tree, workdir):
    tree.build({"home:.claude/settings.json": "image"})
    params = tree.params(CLAUDE, seed_store="seed:")
    proc, result = run_command(command, "build", params=params, workdir=workdir)
    assert proc.returncode == 0 and result is not None and result["links"][0]["actions"] == ["create_directory", "move", "link"]
    tree.expect({"home:.claude": Link("vol:.claude"), "seed:.claude/settings.json": "image"})
    tree.build({"vol:.claude/s.jsonl": "S"})
    proc, result = run_command(command, "rollback", params=params, workdir=workdir)
    assert proc.returncode == 0 and result is not None and result["links"][0]["actions"] == ["restore"]
    tree.expect({"home:.claude": DIR, "home:.claude/s.jsonl": "S", "vol:.claude/s.jsonl": "S"})


def test_refusals_name_the_problem_and_change_nothing(command, tree, workdir):
    tree.build({"home:.claude.json": "home", "vol:.claude.json": "volume"})
    before = tree.user_view()
    strict = tree.params(dict(CLAUDE_JSON), conflict="fail")
    proc, result = run_command(command, "start", params=strict, workdir=workdir)
    assert proc.returncode == 1 and "conflict=fail: 1 conflict(s), nothing changed" in proc.stderr
    assert result == {"failed": True, "msg": proc.stderr.split(": ", 1)[1].strip()}
    proc, _result = run_command(command, "start", params=dict(strict, state="absent"), workdir=workdir)
    assert proc.returncode == 1 and "sets state='absent'; the subcommand sets the state" in proc.stderr
    proc, _result = run_command(command, "start", params=dict(strict, links=[]), workdir=workdir)
    assert proc.returncode == 1 and "links: give a non-empty list" in proc.stderr
    proc, _result = run_command(command, "start", "--params", os.path.join(workdir, "missing.json"))
    assert proc.returncode == 1 and "--params: cannot read" in proc.stderr
    proc, _result = run_command(command, "restart")
    assert proc.returncode == 1 and "unknown command 'restart'" in proc.stderr, "usage errors are 1, not 2 (drift)"
    assert tree.user_view() == before


def _params_file(tree: Tree, workdir: str) -> str:
    path = os.path.join(workdir, "params.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(tree.params(CLAUDE), handle)
    return path


# -- The engine flavour's rendered entrypoint, run as root ----------------------------------------------------------

SHOW = ["sh", "-c", 'echo "$(id -un) $HOME $*"', "image-entrypoint"]


@pytest.fixture
def rendered(tmp_path, as_root):
    """The engine flavour rendered for a sandbox home (user nobody), its command and parameters where rendered."""
    def do(**variables):
        tree = Tree(str(tmp_path / "sandbox"))
        reachable(tree.root)
        dest = str(tmp_path / "rendered")
        render(dest, "engine", {
            "agor_persistence_user": "nobody", "agor_persistence_group": "nogroup", "agor_persistence_home": tree.home,
            "agor_persistence_volume": tree.volume, "agor_persistence_seed_store": tree.seed_store,
            "agor_persistence_agents": ["claude"], "agor_persistence_require_mount": False,
            "agor_persistence_command_path": os.path.join(dest, "agor-persistence"),
            "agor_persistence_params_path": os.path.join(dest, "agor-persistence-params.json"), **variables}, read=False)
        return tree, os.path.join(dest, "agor-persistence-entrypoint")
    return do


def test_entrypoint_runs_the_start_step_then_the_images_entrypoint_as_the_user(rendered):
    tree, entrypoint = rendered(agor_persistence_image_entrypoint=SHOW)
    tree.build({"home:.claude/s.jsonl": "S"})
    give_to(pwd.getpwnam("nobody").pw_uid, tree.home)  # as the image made it: the account's home
    proc = subprocess.run([entrypoint, "serve", "--port=3030"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"nobody {tree.home} serve --port=3030", "the image's entrypoint, then CMD"
    tree.expect({"home:.claude": Link("vol:.claude"), "vol:.claude/s.jsonl": "S"})
    proc = subprocess.run([entrypoint], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == f"nobody {tree.home} ", "no CMD: the entrypoint alone"


def test_entrypoint_without_anything_to_run_refuses_before_changing_anything(rendered):
    tree, entrypoint = rendered()
    tree.build({"home:.claude/s.jsonl": "S"})
    give_to(pwd.getpwnam("nobody").pw_uid, tree.home)
    before = snapshot(tree.root)
    proc = subprocess.run([entrypoint], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "nothing to run after the start step" in proc.stderr
    assert snapshot(tree.root) == before
    proc = subprocess.run([entrypoint, *SHOW], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == f"nobody {tree.home} ", "the command alone"
