# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the role's playbooks as a user would, and derive the module's parameters from the same variables.

Needs conftest's environment (ANSIBLE_COLLECTIONS_PATH, ansible_collections importable).
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys
import typing as t

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLE = os.path.join(REPO, "roles", "agor_persistence")
# Extra vars that send the agent_state_link task to a module process of its own, as over any connection
# but the local one: become, su from root to root (no password, nothing else changes).
MODULE_PROCESS = ("-e", "ansible_become=true", "-e", "ansible_become_method=ansible.builtin.su")


def ansible_env() -> t.Dict[str, str]:
    return dict(
        os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False", ANSIBLE_INVENTORY_UNPARSED_WARNING="False"
    )


def playbook(name: str, variables: t.Mapping[str, t.Any], check: bool = True) -> subprocess.CompletedProcess:
    """``ansible-playbook agor.persistence.<name> -e <variables as JSON>`` from the test environment."""
    command = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), f"agor.persistence.{name}",
               "-e", json.dumps(dict(variables))]
    proc = subprocess.run(command, capture_output=True, text=True, env=ansible_env(), check=False)
    if check:
        assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def render(dest: str, flavour: str, variables: t.Mapping[str, t.Any] = None, read: bool = True) -> t.Dict[str, str]:
    """Render one flavour into ``dest``; return every rendered file's text by name (``read=False``: its path)."""
    playbook("render", dict(variables or {}, agor_persistence_render_flavour=flavour, agor_persistence_render_dir=str(dest)))
    files = {}
    for name in sorted(os.listdir(dest)):
        files[name] = os.path.join(dest, name)
        if read:
            with open(files[name], encoding="utf-8") as handle:
                files[name] = handle.read()
    return files


def sandbox_variables(tree: t.Any, **overrides: t.Any) -> t.Dict[str, t.Any]:
    """The role's variables for an agent_tree.Tree sandbox, run as the current user, no mount required."""
    variables = {
        "agor_persistence_user": pwd.getpwuid(os.geteuid()).pw_name,
        "agor_persistence_group": grp.getgrgid(os.getegid()).gr_name,
        "agor_persistence_home": tree.home,
        "agor_persistence_volume": tree.volume,
        "agor_persistence_seed_store": tree.seed_store,
        "agor_persistence_require_mount": False,
    }
    variables.update(overrides)
    return variables


def registry() -> t.Dict[str, t.Any]:
    with open(os.path.join(ROLE, "vars", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["agor_persistence_registry"]


def module_params(variables: t.Mapping[str, t.Any], state: str) -> t.Dict[str, t.Any]:
    """The parameters tasks/link_state_paths.yml gives agent_state_link, for fully specified role variables."""
    from ansible_collections.agor.persistence.plugins.filter.persistence import state_links

    v = {key[len("agor_persistence_"):]: value for key, value in variables.items()}
    links = state_links(registry(), v["agents"], v["user"], v["group"], v["home"], v["volume"],
                        users=v["users"], extra_links=v["extra_links"])
    return {
        "links": links,
        "volume": v["volume"],
        "state": state,
        "require_mount": v["require_mount"],
        "owner": v["user"],
        "group": v["group"],
        "conflict": v["conflict"],
        "seed_store": v["seed_store"],
        "manage_volume_root": v["manage_volume_root"] and state == "present",
    }
