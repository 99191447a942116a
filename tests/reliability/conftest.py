# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the reliability suite (issue 5): real mounts, and the figures each test reports.

Every test here needs root in a private mount namespace, as scripts/test runs the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import typing as t

import pytest

from mounts import Mounts, in_private_mount_namespace

FIGURES: t.Dict[str, t.Any] = {}
FIGURES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "output", "reliability-figures.json")


@pytest.fixture
def mounts():
    """Mounts (see mounts.Mounts), all unmounted at teardown."""
    if os.geteuid() != 0 or not in_private_mount_namespace():
        pytest.skip("needs root in a private mount namespace (tmpfs, overlayfs, remounts): run scripts/test as root")
    made = Mounts()
    yield made
    made.close()


@pytest.fixture
def reachable_base(mounts):
    """A temporary directory the agents' user (uid 1001) can traverse, unlike pytest's 0700 tmp_path;
    unmounted and removed at teardown."""
    base = tempfile.mkdtemp(prefix="agor-reliability-")
    os.chmod(base, 0o755)
    yield base
    mounts.close()
    subprocess.run(["rm", "-rf", "--one-file-system", base], check=False)


@pytest.fixture
def figures(request):
    """figures(key=value, ...) records what a test measured; printed at the end and kept in tests/output/."""
    def record(**values: t.Any) -> None:
        FIGURES.setdefault(request.node.name, {}).update(values)
    return record


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for test, values in FIGURES.items():
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{key}={value}" for key, value in values.items()))
    os.makedirs(os.path.dirname(FIGURES_FILE), exist_ok=True)
    with open(FIGURES_FILE, "w", encoding="utf-8") as handle:
        json.dump(FIGURES, handle, indent=2, sort_keys=True, default=str)
