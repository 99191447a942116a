# SPDX-License-Identifier: GPL-3.0-or-later
"""One engine, two front ends: every starting state of the module suite (the case tables of
tests/support/cases.py, shared with the module's unit tests), run through the agent_state_link task
by ansible-playbook and through the agor-persistence command, gives the same check-mode prediction,
the same result and the same end state.  The task itself runs the engine two ways, compared too: in
its worker process over the local connection (the action plugin), and in a module process of its own
over any other connection or with become (here: become, su from root to root).

All cases run in one ansible-playbook run (a loop in check mode, then a loop for real), each on a
tree of its own; then every tree is laid out again at the same place for the next way of running.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import typing as t

import pytest

from agent_tree import Tree, outline, snapshot
from cases import ABSENT_CASES, PREPARED_CASES, PRESENT_CASES
from engine_command import build_command, run_command
from rendering import MODULE_PROCESS, ansible_env

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
# The subcommand of each state.
SUBCOMMAND = {"present": "start", "prepared": "build", "absent": "rollback"}
# The result agent_state_link documents (RETURN) besides the warnings.
RESULT_KEYS = ("changed", "links", "backup_dir", "volume_owner_changed", "diff")
# Backup directories are named after the time of the run.
STAMP = re.compile(r"/\.agent-state-link/backups/[^/\"]+")


CASES = [(f"{name}: {case.id}", case) for name, table in
         (("CASES", PRESENT_CASES), ("PREPARED_CASES", PREPARED_CASES), ("ABSENT_CASES", ABSENT_CASES)) for case in table]


def comparable(result: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """The documented result, backup time stamps left out."""
    kept = {key: result.get(key) for key in RESULT_KEYS}
    kept["warnings"] = result.get("warnings", [])
    return json.loads(STAMP.sub("/.agent-state-link/backups/*", json.dumps(kept)))


def end_state(root: str) -> t.Dict[str, t.Tuple[t.Any, ...]]:
    """snapshot() without modification times (each tree is laid out anew), backup stamps left out."""
    state = {}
    for rel, entry in snapshot(root).items():
        kind = entry[0]
        kept = entry[:1] + entry[2:] if kind == "dir" else entry[:2] + entry[3:] if kind in ("file", "other") else entry
        state[STAMP.sub("/.agent-state-link/backups/*", "/" + rel)] = tuple(
            STAMP.sub("/.agent-state-link/backups/*", value) if isinstance(value, str) else value for value in kept)
    return state


def lay_out(root: str) -> t.List[t.Dict[str, t.Any]]:
    """Every case's tree below ``root`` (removed first); returns each case's module parameters."""
    if os.path.exists(root):
        shutil.rmtree(root)
    all_params = []
    for index, (_id, case) in enumerate(CASES):
        tree = Tree(os.path.join(root, str(index)))
        tree.build(case.start)
        all_params.append(tree.params(*case.links, **case.params))
    return all_params


def task_runs(workdir: str, all_params: t.Sequence[t.Mapping[str, t.Any]], *extra_options: str) -> t.Dict[str, t.Any]:
    """ansible-playbook over every case: agent_state_link in check mode, then for real; the registered results."""
    options = sorted({key for params in all_params for key in params})
    args = {key: f"{{{{ item[{key!r}] | default(omit) }}}}" for key in options}
    results = os.path.join(workdir, "module-results.json")
    playbook = [{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable, "cases": list(all_params)},
        "tasks": [
            {"name": "predict", "agor.persistence.agent_state_link": args, "loop": "{{ cases }}", "check_mode": True,
             "register": "predicted"},
            {"name": "apply", "agor.persistence.agent_state_link": args, "loop": "{{ cases }}", "register": "applied"},
            {"name": "keep the results", "diff": False, "become": False,
             "ansible.builtin.copy": {"content": "{{ {'predicted': predicted.results, 'applied': applied.results} | to_json }}",
                                      "dest": results}},
        ],
    }]
    path = os.path.join(workdir, "playbook.yml")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)  # JSON is YAML
    # Module payloads are kept where they can be counted: which way the engine ran is checked, not assumed.
    remote_tmp = tempfile.mkdtemp(prefix="remote-tmp-", dir=workdir)
    env = dict(ansible_env(), ANSIBLE_HOME=os.path.join(workdir, "ansible-home"), ANSIBLE_REMOTE_TMP=remote_tmp,
               ANSIBLE_KEEP_REMOTE_FILES="1")
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "--diff", path, *extra_options], env=env, capture_output=True, text=True, check=False, cwd=workdir,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(results, encoding="utf-8") as handle:
        runs = t.cast(t.Dict[str, t.Any], json.load(handle))
    runs["module_payloads"] = len(glob.glob(os.path.join(remote_tmp, "*", "AnsiballZ_agent_state_link.py")))
    return runs


def task_outcomes(workdir: str, trees: str, module_payloads: int, *extra_options: str) -> t.List[t.Tuple[t.Any, ...]]:
    """For each case: the task's prediction, its result and the end state, on trees laid out anew."""
    task = task_runs(workdir, lay_out(trees), *extra_options)
    assert task["module_payloads"] == module_payloads, f"{task['module_payloads']} module payloads, expected {module_payloads}"
    return [(task["predicted"][index], task["applied"][index], end_state(os.path.join(trees, str(index))))
            for index in range(len(CASES))]


@pytest.fixture(scope="module")
def front_ends(tmp_path_factory):
    """For each case and way of running: (prediction, result, end state)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the module process is reached through become (su from root to root)")
    workdir = str(tmp_path_factory.mktemp("front-ends"))
    trees = os.path.join(workdir, "cases")
    worker = task_outcomes(workdir, trees, 0)
    module = task_outcomes(workdir, trees, 2, *MODULE_PROCESS)  # one payload per task, run for each case

    command = build_command(workdir)
    all_params = lay_out(trees)
    outcomes = []
    for index, params in enumerate(all_params):
        subcommand = SUBCOMMAND[params.get("state", "present")]
        runs = []
        for check in (["--check"], []):
            proc, result = run_command(command, subcommand, *check, params=params, workdir=workdir)
            assert proc.returncode == 0 and result is not None, f"{CASES[index][0]}: {proc.stderr}"
            runs.append(result)
        outcomes.append({"worker": worker[index], "module": module[index],
                         "command": (runs[0], runs[1], end_state(os.path.join(trees, str(index))))})
    return outcomes


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id for case_id, _case in CASES])
def test_same_prediction_result_and_end_state(front_ends, index):
    worker, module, command = (front_ends[index][way] for way in ("worker", "module", "command"))
    for task in (worker, module):
        assert not task[1].get("failed") and task[1]["invocation"]["module_args"]["links"], "the task ran"
    for other, name in ((worker, "the task's worker"), (command, "the command")):
        assert comparable(other[0]) == comparable(module[0]), f"check mode predicts the same through the module process and {name}"
        assert comparable(other[1]) == comparable(module[1]), f"the same result through the module process and {name}"
        assert other[2] == module[2], f"the same end state through the module process and {name}"
    for predicted, applied in (worker[:2], module[:2], command[:2]):
        assert outline(predicted) == outline(applied), "check mode predicted the real run"
    assert [record["actions"] for record in command[1]["links"]] == CASES[index][1].actions


@pytest.mark.parametrize("async_seconds", [0, 60], ids=["module process", "async job"])
def test_module_process_runs_as_any_module(tmp_path, async_seconds):
    """Sent to a module process (become, or async), the task runs the module as ansible.builtin.normal
    runs any module: an async job is polled to its end, and after a plain run Ansible's temporary
    directory on the target is removed.  (After an async job ansible-core leaves it, for
    ansible.builtin.command too.)"""
    if os.geteuid() != 0:
        pytest.skip("needs root: the module process is reached through become (su from root to root)")
    _id, case = CASES[0]
    tree = Tree(str(tmp_path / "tree"))
    tree.build(case.start)
    params = tree.params(*case.links, **case.params)
    task = {"name": "link", "agor.persistence.agent_state_link": params, "register": "linked"}
    checks = ["linked is changed", "linked.links | length == 1"]
    if async_seconds:
        task.update({"async": async_seconds, "poll": 1})
        checks.append("linked.ansible_job_id is defined and linked.finished == 1")
    else:
        task.update({"become": True, "become_method": "ansible.builtin.su"})
    playbook = tmp_path / "playbook.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars": {"ansible_python_interpreter": sys.executable},
        "tasks": [task, {"name": "linked", "ansible.builtin.assert": {"that": checks}}],
    }]), encoding="utf-8")
    remote_tmp = tmp_path / "remote-tmp"
    env = dict(ansible_env(), ANSIBLE_HOME=str(tmp_path / "ansible-home"), ANSIBLE_REMOTE_TMP=str(remote_tmp),
               ANSIBLE_ASYNC_DIR=str(tmp_path / "async"))
    proc = subprocess.run([ANSIBLE_PLAYBOOK, str(playbook)], env=env, capture_output=True, text=True, check=False,
                          cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.path.islink(tree(case.links[0]["path"])), "the module did not link the path"
    if not async_seconds:
        assert glob.glob(str(remote_tmp / "ansible-tmp-*")) == [], "the module process left its temporary directory"
