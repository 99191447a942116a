# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad input, through Ansible as users run it: invalid arguments of the module (one playbook, one
task per case, each against a sandbox of its own) and invalid variables of the role (one
``ansible-playbook agor.persistence.start`` per case).  Each must fail with a message naming the
parameter or variable, and leave its sandbox byte for byte as it was (snapshot: types, modes,
owners, times, contents)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from agent_tree import CLAUDE, CLAUDE_JSON_BARE, Tree, snapshot
from rendering import ansible_env

START = {"home:.claude/settings.json": '{"model": "opus"}', "home:.claude/projects/-w/s.jsonl": "session",
         "home:.claude.json": '{"userID": "u"}', "vol:.claude/old.jsonl": "old"}

# (id, links as references, other arguments, what the message must contain).  None for links: omitted.
MODULE_CASES = [
    ("links missing", None, {}, "links"),
    ("links empty", [], {}, "links"),
    ("link without path", [{"target": "vol:.claude"}], {}, "path"),
    ("link without target", [{"path": "home:.claude"}], {}, "target"),
    ("unknown kind", [dict(CLAUDE, kind="socket")], {}, "kind"),
    ("relative path", [{"path": ".claude", "target": "vol:.claude"}], {}, "links[0].path"),
    ("target outside the volume", [{"path": "home:.claude", "target": "out:.claude"}], {}, "links[0].target"),
    ("target with ..", [{"path": "home:.claude", "target": "vol:../.claude"}], {}, "links[0].target"),
    ("path inside its target", [{"path": "vol:.claude/x", "target": "vol:.claude"}], {}, "links[0].path"),
    ("same path twice", [CLAUDE, {"path": "home:.claude", "target": "vol:other"}], {}, "links[1].path"),
    ("initial_content on a directory", [dict(CLAUDE, initial_content="{}")], {}, "links[0].initial_content"),
    ("empty initial_content", [dict(CLAUDE_JSON_BARE, initial_content="")], {}, "links[0].initial_content"),
    ("relative volume", [CLAUDE], {"volume": "agor/.agor"}, "volume"),
    ("volume not mounted", [CLAUDE], {"require_mount": True}, "volume"),
    ("unknown conflict policy", [CLAUDE], {"conflict": "ask"}, "conflict"),
    ("unknown state", [CLAUDE], {"state": "linked"}, "state"),
    ("unknown owner", [CLAUDE], {"owner": "no-such-user-agor"}, "owner"),
    ("unknown group", [CLAUDE], {"group": "no-such-group-agor"}, "group"),
    ("unknown link owner", [dict(CLAUDE, owner="no-such-user-agor")], {}, "links[0].owner"),
    ("bad directory_mode", [CLAUDE], {"directory_mode": "rwx"}, "directory_mode"),
    ("bad file_mode", [CLAUDE], {"file_mode": "99999"}, "file_mode"),
    ("bad lock_timeout", [CLAUDE], {"lock_timeout": "soon"}, "lock_timeout"),
    ("negative lock_timeout", [CLAUDE], {"lock_timeout": -1}, "lock_timeout"),
    ("bad require_mount", [CLAUDE], {"require_mount": "perhaps"}, "require_mount"),
    ("prepared without seed_store", [CLAUDE], {"state": "prepared"}, "seed_store"),
    ("seed_store inside the volume", [CLAUDE], {"seed_store": "vol:seed"}, "seed_store"),
    ("unknown option", [CLAUDE], {"conflicts": "backup"}, "conflicts"),
]


def module_args(tree, links, overrides):
    args = {"volume": tree.volume, "require_mount": False}
    if links is not None:
        args["links"] = [{key: tree(value) if key in ("path", "target") else value for key, value in link.items()}
                         for link in links]
    args.update({key: tree(value) if isinstance(value, str) else value for key, value in overrides.items()})
    return args


def ansible_playbook(*args):
    argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), *args]
    return subprocess.Popen(argv, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_invalid_module_arguments(tmp_path, figures):
    trees = [Tree(str(tmp_path / f"case-{index}")) for index in range(len(MODULE_CASES))]
    tasks = []
    for index, ((case_id, links, overrides, _name), tree) in enumerate(zip(MODULE_CASES, trees, strict=True)):
        tree.build(START)
        tasks.append({"name": case_id, "agor.persistence.agent_state_link": module_args(tree, links, overrides),
                      "register": f"case_{index}", "ignore_errors": True})
    results = tmp_path / "results.json"
    everything = "{" + ", ".join(f"'case_{index}': case_{index}" for index in range(len(MODULE_CASES))) + "}"
    keep = {"content": "{{ %s | to_json }}" % everything, "dest": str(results), "mode": "0600"}
    tasks.append({"name": "Keep every result", "ansible.builtin.copy": keep})
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False,
             "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}"}, "tasks": tasks}]
    (tmp_path / "cases.yml").write_text(yaml.safe_dump(play, sort_keys=False))
    before = [snapshot(tree.root) for tree in trees]

    proc = ansible_playbook(str(tmp_path / "cases.yml"))
    out, err = proc.communicate(timeout=600)

    assert proc.returncode == 0, out + err
    recorded = json.loads(results.read_text())
    for index, ((case_id, _links, _overrides, name), tree) in enumerate(zip(MODULE_CASES, trees, strict=True)):
        result = recorded[f"case_{index}"]
        assert result.get("failed"), f"{case_id}: accepted: {result}"
        assert name in result["msg"], f"{case_id}: the message does not name {name}: {result['msg']}"
        assert "Traceback" not in result.get("module_stderr", ""), f"{case_id}: {result['module_stderr']}"
        assert snapshot(tree.root) == before[index], f"{case_id}: the filesystem changed"
    figures(module_cases=len(MODULE_CASES))


VALID_ROLE_VARIABLES = {"agor_persistence_user": "root", "agor_persistence_group": "root",
                        "agor_persistence_agents": ["claude"], "agor_persistence_require_mount": False,
                        "agor_persistence_manage_volume_root": False}
ROLE_CASES = [
    ("unknown agent", {"agor_persistence_agents": ["claude", "cursor"]}, "agor_persistence_agents"),
    ("extra link without path", {"agor_persistence_extra_links": [{"kind": "file"}]}, "agor_persistence_extra_links[0]"),
    ("extra link path outside the home", {"agor_persistence_extra_links": [{"path": "/etc/x"}]},
     "agor_persistence_extra_links[0].path"),
    ("extra link target escaping the volume", {"agor_persistence_extra_links": [{"path": ".aws", "target": "../aws"}]},
     "agor_persistence_extra_links[0].target"),
    ("further user without name", {"agor_persistence_users": [{"home": "/home/x"}]}, "agor_persistence_users[0]"),
    ("further user with an unknown agent", {"agor_persistence_users": [{"name": "root", "agents": ["cursor"]}]},
     "agor_persistence_users[0].agents"),
    ("relative volume", {"agor_persistence_volume": "agor/.agor"}, "agor_persistence_volume"),
    ("relative home", {"agor_persistence_home": "home/agor"}, "agor_persistence_home"),
    ("further user with a relative home", {"agor_persistence_users": [{"name": "root", "home": "root"}]},
     "agor_persistence_users[0].home"),
    ("bad conflict value", {"agor_persistence_conflict": "ask"}, "agor_persistence_conflict"),
    ("bad require_mount", {"agor_persistence_require_mount": "perhaps"}, "agor_persistence_require_mount"),
    ("agents not a list", {"agor_persistence_agents": {"claude": True}}, "agor_persistence_agents"),
]


def test_invalid_role_variables(tmp_path, figures):
    runs = []
    for index, (case_id, variables, name) in enumerate(ROLE_CASES):
        tree = Tree(str(tmp_path / f"case-{index}"))
        tree.build(START)
        merged = dict(VALID_ROLE_VARIABLES, agor_persistence_home=tree.home, agor_persistence_volume=tree.volume,
                      agor_persistence_seed_store=tree.seed_store)
        merged.update(variables)
        runs.append((case_id, name, tree, snapshot(tree.root),
                     ansible_playbook("agor.persistence.start", "-e", json.dumps(merged))))
    for case_id, name, tree, before, proc in runs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode != 0, f"{case_id}: accepted:\n{out}"
        assert name in out + err, f"{case_id}: the failure does not name {name}:\n{out}\n{err}"
        assert "Traceback" not in out + err, f"{case_id}:\n{out}\n{err}"
        assert snapshot(tree.root) == before, f"{case_id}: the filesystem changed"
    figures(role_cases=len(ROLE_CASES))
