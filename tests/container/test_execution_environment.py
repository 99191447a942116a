# SPDX-License-Identifier: GPL-3.0-or-later
"""The execution environment, built for real: ee/bookworm's base on the local bookworm image,
``ansible-builder create`` of ee/bookworm/execution-environment.yml with this checkout's collection
tarball, ``podman build`` of the context; then inside the image, as a user would check it:

- ``ansible-galaxy collection list agor.persistence`` (as the image's own user) shows galaxy.yml's version;
- ``ansible-playbook agor.persistence.audit`` on a sandbox inside the container (the user agor, its
  volume a tmpfs mount, linked by ``agor.persistence.start``) exits 0, and 2 with the drift line and
  ``1 of 1 host(s) drifted`` once a state path was replaced by a directory.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
import yaml

import images
from lifecycle import HOME, MEASURED, VOLUME

pytestmark = [pytest.mark.container, pytest.mark.slow]

EE = "localhost/agor-persistence-ee:test"
DRIFTED = f"{HOME}/.gemini"


@pytest.fixture(scope="module")
def ee_container(podman, tmp_path_factory):
    """A container of the built EE (its entrypoint, dumb-init, then ``sleep``) with a tmpfs at the volume."""
    workdir = str(tmp_path_factory.mktemp("ee"))
    base = images.build_ee_base(podman, workdir)
    MEASURED["ee base image"] = base
    context, MEASURED["ee ansible-builder create seconds"] = images.ee_context(workdir)
    MEASURED["ee image"] = images.build_ee(podman, context, EE)
    MEASURED["ee image, rebuilt from the layer cache"] = images.build_ee(podman, context, EE)
    container = podman.run(EE, "agor-persistence-ee", options=["--mount", f"type=tmpfs,destination={VOLUME}"],
                           command=["sleep", "infinity"])
    yield container
    container.remove()
    podman("rmi", EE, base.tag)
    shutil.rmtree(workdir)


def test_the_ee_holds_this_checkouts_collection(ee_container):
    with open(os.path.join(images.REPO, "galaxy.yml"), encoding="utf-8") as handle:
        version = yaml.safe_load(handle)["version"]
    listed = ee_container.exec(["ansible-galaxy", "collection", "list", "agor.persistence"])
    assert re.search(rf"^agor\.persistence\s+{re.escape(version)}\s*$", listed.stdout, re.MULTILINE), listed.stdout
    assert "/usr/share/ansible/collections" in listed.stdout


def test_audit_in_the_ee_exits_0_when_linked_and_2_with_the_drift_line(ee_container):
    ee_container.sh(f"useradd --home-dir {HOME} --create-home --shell /bin/bash agor 2>/dev/null; chown agor:agor {HOME}",
                    user="root")
    started = ee_container.exec(["ansible-playbook", "agor.persistence.start"], user="root", check=False)
    assert started.returncode == 0, started.stdout + started.stderr

    clean = ee_container.exec(["ansible-playbook", "agor.persistence.audit"], user="root", check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 of 1 host(s) drifted" in clean.stdout

    ee_container.sh(f"rm {DRIFTED} && mkdir {DRIFTED} && echo written > {DRIFTED}/drift.txt", user="agor")
    drifted = ee_container.exec(["ansible-playbook", "agor.persistence.audit"], user="root", check=False)
    assert drifted.returncode == 2, drifted.stdout + drifted.stderr
    assert f"localhost: {DRIFTED}: is directory, expected link to {VOLUME}/.gemini" in drifted.stdout, drifted.stdout
    assert "1 of 1 host(s) drifted" in drifted.stdout
