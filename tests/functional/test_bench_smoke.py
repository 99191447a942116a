# SPDX-License-Identifier: GPL-3.0-or-later
"""The benchmark suite (scripts/bench, tests/bench/run.py) runs end to end in quick mode.

One repetition of every measurement, small trees: checks that every row of the table is printed
with a measurement (none failed), and that the checks that are not timings (the module's imports,
no facts, a pinned interpreter, one module run) pass.  No timing is asserted: the full run
(scripts/bench) is for that, and its table is in docs/docsite/rst/performance.rst.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ROWS = [
    "start-default", "start-5", "start-50", "start-500",
    "naive-4", "naive-many",
    "engine-1000",
    "volume-files", "chown-curve-1", "chown-curve-2", "chown-curve-3",
    "migrate-xfs", "migrate-samefs", "migrate-samefs-entries",
    "command-vs-python", "command-vs-seed", "command-flat", "seed-volume-files",
    "pull", "pull-no-stall", "git-plus-playbook",
    "explain-argspec-task", "explain-module-task", "explain-module-process-task", "explain-module-process", "explain-links-module-process",
    "explain-links-engine",
]
CHECKS = ["module-imports", "command-imports", "start-no-facts", "start-pinned-interpreter", "start-in-process"]


@pytest.mark.slow
def test_quick_run_prints_every_row():
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "bench", "run.py"), "--quick", "--runs", "1"],
                          capture_output=True, text=True, env=env, timeout=1800, check=False)
    output = proc.stdout
    assert proc.returncode == 0, f"the suite failed:\n{output[-3000:]}\n{proc.stderr[-5000:]}"
    results = {match[0]: match[1] for match in re.findall(r"^\| ([a-z0-9-]+) \|.*\| ([A-Za-z/]+) \|(?: [^|]* \|)?$", output, re.M)}
    missing = [row for row in ROWS + CHECKS if row not in results]
    assert not missing, f"rows not printed: {missing}\n{output}"
    failed = {row: result for row, result in results.items() if result in ("ERROR", "FAIL")}
    assert not failed, f"rows without a measurement, or failed checks: {failed}\n{output}"
    # Only what needs root (tmpfs volumes, the container simulator) may be left out ("n/a").
    unmeasured = [row for row in ROWS if results[row] == "n/a"]
    assert os.geteuid() != 0 or not unmeasured, f"rows left out as root: {unmeasured}\n{output}"
