# SPDX-License-Identifier: GPL-3.0-or-later
"""Fleet audit over running containers with Ansible's own tooling: the containers.podman inventory
plugin finds them, its podman connection runs the audit inside each, with forks; one aggregated
summary names the drifted container and path. Per rendered flavour: the audit needs a python3 in
the image, which the engine flavour's is (python3-minimal and the standard library) too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import artifacts
from lifecycle import HOME, LAYOUTS, MEASURED, start
from rendering import ansible_env

pytestmark = [pytest.mark.container, pytest.mark.slow]

DRIFTED_PATH = f"{HOME}/.codex"


def test_fleet_audit_names_the_drifted_container_and_path(podman, image_set, flavour, tmp_path):
    fleet = [f"agor-fleet-{flavour}-{index}" for index in range(1, 4)]
    drifted_container = fleet[1]
    layout = LAYOUTS["railway"]
    containers = [start(podman, image_set.user(flavour), name,
                        layout.mounts(layout.new_volume(podman, str(tmp_path / name), "")))
                  for name in fleet]
    containers[1].sh(f"rm {DRIFTED_PATH} && mkdir {DRIFTED_PATH} && echo local > {DRIFTED_PATH}/note", user="agor")
    inventory = tmp_path / "fleet.podman_containers.yml"
    inventory.write_text(f"plugin: containers.podman.podman_containers\nname_patterns: ['agor-fleet-{flavour}-*']\n")
    report = tmp_path / "fleet.json"
    env = dict(ansible_env(), **{key: podman.env[key] for key in ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF")})
    env["ANSIBLE_COLLECTIONS_PATH"] = os.pathsep.join([env["ANSIBLE_COLLECTIONS_PATH"], artifacts.podman_collection()])
    started = time.monotonic()
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", str(inventory), "agor.persistence.audit",
         "-f", str(len(fleet)), "-e", "agor_persistence_audit_hosts=all", "-e", f"agor_persistence_audit_report={report}",
         "-e", "ansible_python_interpreter=/usr/bin/python3"],
        env=env, capture_output=True, text=True, check=False, timeout=600)
    MEASURED[f"fleet audit of {len(fleet)} containers, -f {len(fleet)}, {flavour} (s)"] = round(time.monotonic() - started, 2)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output  # the drifted host fails, the others do not
    assert f"{drifted_container}: {DRIFTED_PATH}: is directory" in output
    assert f"1 of {len(fleet)} host(s) drifted" in output
    summary = json.loads(report.read_text())
    assert sorted(summary["hosts"]) == fleet
    assert summary["drifted"] == [drifted_container]
    assert [line.split(":")[0] for line in summary["hosts"][drifted_container]] == [DRIFTED_PATH]
    for container in containers:
        container.remove()
