# SPDX-License-Identifier: GPL-3.0-or-later
"""Audit and repair inside a real container, per rendered flavour, on Railway's layout.

The audit exits 0 when clean; with a state path replaced by a real directory holding a file it
exits non-zero and names the path; the start step with ``--check`` changes nothing; a restart (the
entrypoint's start step) repairs it and the file is in the volume. Without a volume the container
refuses to start and says why.
"""

from __future__ import annotations

import os

import pytest

from lifecycle import FLAVOURS, HOME, LAYOUTS, VOLUME, restart, start

pytestmark = [pytest.mark.container, pytest.mark.slow]

DRIFTED = f"{HOME}/.gemini"
# Everything under the home and the volume, with what a change would alter (kind, link target, size,
# mode, owner, modification time), without following links.
SNAPSHOT = ["find", HOME, "-printf", r"%p %y %l %s %m %u %T@\n"]


def test_audit_finds_drift_check_changes_nothing_restart_repairs(podman, image_set, flavour, tmp_path):
    commands = FLAVOURS[flavour]
    volume = LAYOUTS["railway"].new_volume(podman, str(tmp_path / "volume"), "")
    container = start(podman, image_set.user(flavour), f"agor-audit-{flavour}", LAYOUTS["railway"].mounts(volume))

    clean = container.exec(commands.audit, check=False)
    assert clean.returncode == 0, clean.stdout + clean.stderr

    container.sh(f"rm {DRIFTED} && mkdir {DRIFTED} && echo 'written while the link was gone' > {DRIFTED}/drift.txt", user="agor")
    drifted = container.exec(commands.audit, check=False)
    assert drifted.returncode != 0
    assert DRIFTED in drifted.stdout + drifted.stderr

    before = container.exec(SNAPSHOT).stdout
    checked = container.exec([*commands.start, commands.check_flag], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert container.exec(SNAPSHOT).stdout == before
    assert container.exec(["test", "-d", DRIFTED, "-a", "!", "-L", DRIFTED], check=False).returncode == 0

    restart(container)
    assert container.exec(["readlink", DRIFTED]).stdout.strip() == f"{VOLUME}/.gemini"
    assert container.exec(commands.audit, check=False).returncode == 0
    with open(os.path.join(volume, ".gemini", "drift.txt"), encoding="utf-8") as handle:
        assert handle.read() == "written while the link was gone\n"
    container.remove()


def test_without_a_volume_the_container_refuses_to_start(podman, image_set, flavour):
    container = podman.run(image_set.user(flavour), f"agor-no-volume-{flavour}")
    assert container.wait_exited() != 0
    logs = container.logs()
    assert f"{VOLUME} is not on a mounted volume" in logs
    assert "agor daemon" not in logs
    container.remove()
