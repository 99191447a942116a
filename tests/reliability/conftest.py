# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the reliability suite (issue 5): real mounts, and the figures each test reports.

Every test here needs root in a private mount namespace, as scripts/test runs the suite.
"""

from __future__ import annotations

from sandbox_fixtures import figures, mounts, reachable_base, report_figures  # noqa: F401  # pylint: disable=unused-import


def pytest_terminal_summary(terminalreporter):
    report_figures(terminalreporter, "reliability")
