# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures the root-run suites share (tests/reliability, tests/adversarial): real mounts, a base
directory other users can traverse, and the figures each test reports.  A suite's conftest imports
the fixtures and calls report_figures from its pytest_terminal_summary."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import typing as t

import pytest

from mounts import Mounts, in_private_mount_namespace

OUTPUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "output")
# suite (its directory's name) -> test -> figures
FIGURES: t.Dict[str, t.Dict[str, t.Dict[str, t.Any]]] = {}


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
    """A temporary directory other users (uid 1001, 2002) can traverse, unlike pytest's 0700 tmp_path;
    unmounted and removed at teardown."""
    base = tempfile.mkdtemp(prefix="agor-reliability-")
    os.chmod(base, 0o755)
    yield base
    mounts.close()
    subprocess.run(["rm", "-rf", "--one-file-system", base], check=False)


@pytest.fixture
def figures(request):
    """figures(key=value, ...) records what a test measured; printed at the end and kept in tests/output/."""
    suite = os.path.basename(os.path.dirname(str(request.node.fspath)))

    def record(**values: t.Any) -> None:
        FIGURES.setdefault(suite, {}).setdefault(request.node.name, {}).update(values)
    return record


def report_figures(terminalreporter: t.Any, suite: str) -> None:
    """Print a suite's figures and keep them in tests/output/<suite>-figures.json."""
    figures = FIGURES.get(suite)
    if not figures:
        return
    terminalreporter.section(f"{suite} figures")
    for test, values in figures.items():
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{key}={value}" for key, value in values.items()))
    os.makedirs(OUTPUT, exist_ok=True)
    with open(os.path.join(OUTPUT, f"{suite}-figures.json"), "w", encoding="utf-8") as handle:
        json.dump(figures, handle, indent=2, sort_keys=True, default=str)
