# SPDX-License-Identifier: GPL-3.0-or-later
"""What `ansible-playbook agor.persistence.audit` prints: each drift once, the totals, a JSON report
when asked, exit status 2 on drift, no `changed` and no `ignored`, and nothing changed."""

from __future__ import annotations

import json
import os
import re

from agent_tree import snapshot
from rendering import playbook, sandbox_variables

RECAP = re.compile(r"^localhost\s+: ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)\s+skipped=\d+\s+rescued=0\s+ignored=(\d+)",
                   re.MULTILINE)


def audit(tree, **variables):
    """Run the audit; return (process, its recap's changed, failed and ignored counts)."""
    proc = playbook("audit", sandbox_variables(tree, **variables), check=False)
    recap = RECAP.search(proc.stdout)
    assert recap, proc.stdout + proc.stderr
    return proc, tuple(int(number) for number in recap.groups())


def test_each_drift_printed_once_with_totals_and_report(tree, tmp_path_factory):
    variables = {"agor_persistence_agents": ["claude", "codex"]}
    playbook("start", sandbox_variables(tree, **variables))
    os.remove(tree("home:.codex"))
    os.makedirs(tree("home:.codex/sessions"))
    report = tmp_path_factory.mktemp("report") / "report.json"  # outside the sandbox
    before = snapshot(tree.root)

    proc, (changed, failed, ignored) = audit(tree, agor_persistence_audit_report=str(report), **variables)

    assert proc.returncode == 2, proc.stdout
    assert (changed, failed, ignored) == (0, 1, 0)
    drift = f"{tree('home:.codex')}: is directory, expected link to {tree('vol:.codex')}; start would move, link"
    assert proc.stdout.count(tree("home:.codex") + ":") == 1, proc.stdout
    assert json.dumps(f"localhost: {drift}") in proc.stdout
    assert json.dumps("1 of 1 host(s) drifted") in proc.stdout
    assert json.loads(report.read_text()) == {"hosts": {"localhost": [drift]}, "drifted": ["localhost"],
                                              "lines": [f"localhost: {drift}", "1 of 1 host(s) drifted"]}
    assert snapshot(tree.root) == before


def test_missing_volume_reported_once(tree):
    volume = tree.home + "/no-volume"
    proc, (changed, failed, ignored) = audit(tree, agor_persistence_volume=volume, agor_persistence_require_mount=True)
    assert proc.returncode == 2, proc.stdout
    assert (changed, failed, ignored) == (0, 1, 0)
    assert proc.stdout.count(f"{volume} does not exist") == 1, proc.stdout
    assert not os.path.exists(volume)


def test_clean_host_exits_zero(tree):
    playbook("start", sandbox_variables(tree))
    before = snapshot(tree.root)
    proc, (changed, failed, ignored) = audit(tree)
    assert proc.returncode == 0, proc.stdout
    assert (changed, failed, ignored) == (0, 0, 0)
    assert json.dumps("0 of 1 host(s) drifted") in proc.stdout
    assert snapshot(tree.root) == before
