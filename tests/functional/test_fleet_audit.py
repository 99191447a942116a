# SPDX-License-Identifier: GPL-3.0-or-later
"""The audit across a fleet: 24 hosts (local connections, each with its own sandbox home and volume),
run with forks, one aggregated summary, a JSON report, a failing exit status, and nothing changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import typing as t

import pytest

from agent_tree import reachable, snapshot, write

HOSTS = [f"host{number:02d}" for number in range(1, 25)]
pytestmark = pytest.mark.slow

ANSIBLE_PLAYBOOK = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")


def _replace_codex_by_a_directory(home: str, volume: str, outside: str) -> None:
    os.remove(f"{home}/.codex")
    write(f"{home}/.codex/auth.json", "{}")


def _remove_claude_json_link(home: str, volume: str, outside: str) -> None:
    os.remove(f"{home}/.claude.json")


def _point_gemini_elsewhere(home: str, volume: str, outside: str) -> None:
    os.remove(f"{home}/.gemini")
    os.symlink(outside, f"{home}/.gemini")


def _remove_copilot_target(home: str, volume: str, outside: str) -> None:
    shutil.rmtree(f"{volume}/.copilot")


def _claude_directory_and_opencode_config_missing(home: str, volume: str, outside: str) -> None:
    os.remove(f"{home}/.claude")
    os.mkdir(f"{home}/.claude")
    os.remove(f"{home}/.config/opencode")


def _volume_root_owned_by_root(home: str, volume: str, outside: str) -> None:
    os.chown(volume, 0, 0)


# host -> (how it drifts, the keys of its summary lines: a home path, "volume root" or "audit failed")
DRIFT: t.Dict[str, t.Tuple[t.Optional[t.Callable[[str, str, str], None]], t.List[str]]] = {
    "host03": (_replace_codex_by_a_directory, ["~/.codex"]),
    "host07": (_remove_claude_json_link, ["~/.claude.json"]),
    "host11": (_point_gemini_elsewhere, ["~/.gemini"]),
    "host15": (_remove_copilot_target, ["~/.copilot"]),
    "host19": (_claude_directory_and_opencode_config_missing, ["~/.claude", "~/.config/opencode"]),
    "host20": (_volume_root_owned_by_root, ["volume root"]),
    "host22": (None, ["audit failed"]),  # its volume is not mounted: require_mount stays true there
}
CLEAN = [host for host in HOSTS if host not in DRIFT]


def ansible_playbook(cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([ANSIBLE_PLAYBOOK, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, agor_user):
    """24 sandboxes, brought to the clean state by the role's start step over the whole inventory, then
    some drifted by hand.  Returns (the working directory with inventory.yml, the sandboxes' directory,
    each host's home).  The audits change nothing (each test checks), so the tests share it."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    root = tmp_path / "fleet"
    homes = {host: str(root / host / "home" / "agor") for host in HOSTS}
    outside = str(root / "outside")
    for path in [*(f"{home}/.agor" for home in homes.values()), outside]:
        os.makedirs(path)  # each host's volume, as its mount point would be
    reachable(str(root))
    for home in homes.values():  # as in an image: the agents' account owns its home
        os.chown(home, agor_user.pw_uid, agor_user.pw_gid)
    hosts = {
        host: {"agor_persistence_home": homes[host], "agor_persistence_seed_store": str(root / host / "seed")}
        for host in HOSTS
    }
    hosts["host22"]["agor_persistence_require_mount"] = True
    inventory = {"all": {
        "vars": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                 "agor_persistence_require_mount": False},
        "children": {"clean": {"hosts": {host: hosts[host] for host in CLEAN}},
                     "drifted": {"hosts": {host: hosts[host] for host in DRIFT}}},
    }}
    (tmp_path / "inventory.yml").write_text(json.dumps(inventory, indent=1))  # JSON is YAML
    (tmp_path / "converge.yml").write_text(
        "- name: Start step on every host\n  hosts: all\n  gather_facts: false\n"
        "  roles:\n    - agor.persistence.agor_persistence\n"
    )
    converge = ansible_playbook(str(tmp_path), "-i", "inventory.yml", "converge.yml", "-f", "10",
                                "-e", "agor_persistence_require_mount=false")
    assert converge.returncode == 0, converge.stdout + converge.stderr
    for host, (drift, _keys) in DRIFT.items():
        if drift is not None:
            drift(homes[host], f"{homes[host]}/.agor", outside)
    return str(tmp_path), str(root), homes


def audit(workdir: str, *args: str) -> subprocess.CompletedProcess:
    return ansible_playbook(workdir, "-i", "inventory.yml", "agor.persistence.audit", "-f", "10", *args)


def test_fleet_audit_names_exactly_the_drifted_hosts_and_paths(tmp_path, fleet):
    workdir, root, homes = fleet
    report_path = str(tmp_path / "report.json")
    before = snapshot(root)

    result = audit(workdir, "-e", "agor_persistence_audit_hosts=all", "-e", f"agor_persistence_audit_report={report_path}")

    assert result.returncode == 2, result.stdout + result.stderr
    assert snapshot(root) == before, "the audit changed something"
    report = json.loads(open(report_path, encoding="utf-8").read())
    assert sorted(report["drifted"]) == sorted(DRIFT)
    assert sorted(report["hosts"]) == HOSTS
    found = {host: sorted(_key(line, homes[host]) for line in lines) for host, lines in report["hosts"].items() if lines}
    assert found == {host: sorted(keys) for host, (_drift, keys) in DRIFT.items()}
    assert report["lines"] == [f"{host}: {line}" for host in report["drifted"] for line in report["hosts"][host]] + [
        f"{len(DRIFT)} of {len(HOSTS)} host(s) drifted"
    ]
    for line in report["lines"]:  # the printed summary is the report's
        assert json.dumps(line) in result.stdout, line
    recap = dict(re.findall(r"^(host\d+)\s+: ok=.* failed=(\d+)", result.stdout, re.MULTILINE))
    assert sorted(recap) == HOSTS
    assert {host for host, failed in recap.items() if failed != "0"} == set(DRIFT), "exactly the drifted hosts fail"


def test_clean_fleet_audit_exits_zero_and_changes_nothing(fleet):
    workdir, root, _homes = fleet
    before = snapshot(root)
    result = audit(workdir, "-e", "agor_persistence_audit_hosts=clean")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.dumps(f"0 of {len(CLEAN)} host(s) drifted") in result.stdout
    assert snapshot(root) == before


def _key(line: str, home: str) -> str:
    """What a drift line is about: a state path (as ~/...), "volume root" or "audit failed"."""
    subject = line.split(": ")[0]
    return "~" + subject[len(home):] if subject.startswith(home + "/") else subject
