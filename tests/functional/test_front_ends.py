# SPDX-License-Identifier: GPL-3.0-or-later
"""One engine, two front ends: every starting state of the module suite (the case tables of
tests/unit/plugins/module_utils/test_present.py and test_prepared_absent.py), run through the module
by ansible-playbook and through the agor-persistence command, gives the same check-mode prediction,
the same result and the same end state.

All cases run in one ansible-playbook run (a loop in check mode, then a loop for real), each on a
tree of its own; then every tree is laid out again at the same place and the command runs on it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import typing as t

import pytest

from agent_tree import Case, Tree, outline, snapshot
from engine_command import build_command, run_command
from rendering import ansible_env

UNIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "unit", "plugins", "module_utils")
ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
# The subcommand of each state.
SUBCOMMAND = {"present": "start", "prepared": "build", "absent": "rollback"}
# The result agent_state_link documents (RETURN) besides the warnings.
RESULT_KEYS = ("changed", "links", "backup_dir", "volume_owner_changed", "diff")
# Backup directories are named after the time of the run.
STAMP = re.compile(r"/\.agent-state-link/backups/[^/\"]+")


def _case_table(module: str, *names: str) -> t.List[t.Tuple[str, Case]]:
    """The named tables of a unit test module, loaded from its file (they are not copied here)."""
    spec = importlib.util.spec_from_file_location(f"front_ends_{module}", os.path.join(UNIT, f"{module}.py"))
    assert spec is not None and spec.loader is not None
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    return [(f"{name}: {case.id}", case) for name in names for case in getattr(loaded, name)]


CASES = _case_table("test_present", "CASES") + _case_table("test_prepared_absent", "PREPARED_CASES", "ABSENT_CASES")


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


def module_runs(workdir: str, all_params: t.Sequence[t.Mapping[str, t.Any]]) -> t.Dict[str, t.List[t.Dict[str, t.Any]]]:
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
            {"name": "keep the results", "diff": False,
             "ansible.builtin.copy": {"content": "{{ {'predicted': predicted.results, 'applied': applied.results} | to_json }}",
                                      "dest": results}},
        ],
    }]
    path = os.path.join(workdir, "playbook.yml")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(playbook, handle)  # JSON is YAML
    env = dict(ansible_env(), ANSIBLE_HOME=os.path.join(workdir, "ansible-home"), ANSIBLE_PIPELINING="1")
    proc = subprocess.run([ANSIBLE_PLAYBOOK, "--diff", path], env=env, capture_output=True, text=True, check=False, cwd=workdir,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(results, encoding="utf-8") as handle:
        return t.cast(t.Dict[str, t.List[t.Dict[str, t.Any]]], json.load(handle))


@pytest.fixture(scope="module")
def both_front_ends(tmp_path_factory):
    """For each case: (module's prediction, module's result, module's end state) and the same of the command."""
    workdir = str(tmp_path_factory.mktemp("front-ends"))
    trees = os.path.join(workdir, "cases")
    all_params = lay_out(trees)
    module = module_runs(workdir, all_params)
    module_ends = [end_state(os.path.join(trees, str(index))) for index in range(len(CASES))]

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
        outcomes.append({
            "module": (module["predicted"][index], module["applied"][index], module_ends[index]),
            "command": (runs[0], runs[1], end_state(os.path.join(trees, str(index)))),
        })
    return outcomes


@pytest.mark.parametrize("index", range(len(CASES)), ids=[case_id for case_id, _case in CASES])
def test_same_prediction_result_and_end_state(both_front_ends, index):
    module, command = both_front_ends[index]["module"], both_front_ends[index]["command"]
    assert not module[1].get("failed") and module[1]["invocation"]["module_args"]["links"], "the module ran"
    assert comparable(command[0]) == comparable(module[0]), "check mode predicts the same through both front ends"
    assert comparable(command[1]) == comparable(module[1]), "the same result through both front ends"
    assert command[2] == module[2], "the same end state through both front ends"
    for predicted, applied in (module[:2], command[:2]):
        assert outline(predicted) == outline(applied), "check mode predicted the real run"
    assert [record["actions"] for record in command[1]["links"]] == CASES[index][1].actions
