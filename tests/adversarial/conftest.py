# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the adversarial suite (issue 9): the engine as root, the agents' user attacking.

Every test here needs root in a private mount namespace, as scripts/test runs the suite.
"""

from __future__ import annotations

import os

import pytest

from agent_tree import Tree, write
from attacker import ATTACKER, SHADOW, VICTIM, VICTIM_FILES, VICTIM_HOME
from mounts import give_to
from sandbox_fixtures import figures, mounts, reachable_base, report_figures  # noqa: F401  # pylint: disable=unused-import


def pytest_terminal_summary(terminalreporter):
    report_figures(terminalreporter, "adversarial")


@pytest.fixture
def arena(tmp_path, reachable_base, mounts):  # noqa: F811  (the fixtures imported above)
    """As in a container after a start, with an attacker inside: a sandbox home (Tree) owned by the
    agents' user ATTACKER, its volume a tmpfs whose root that user owns (manage_volume_root); a
    private copy of /etc bind-mounted over it (holding a root-only /etc/opencode/auth.json), a
    tmpfs /home with another user's home (VICTIM_HOME, VICTIM_FILES, modes 0600 for secrets), and a
    root-only stand-in for /etc/shadow at out:shadow, on the home's filesystem (for hard links)."""
    mounts.private_copy("/etc", str(tmp_path))
    write("/etc/opencode/auth.json", "root's opencode token")
    os.chmod("/etc/opencode/auth.json", 0o600)
    mounts.tmpfs("/home", size="16m")
    for rel, text in VICTIM_FILES.items():
        write(os.path.join(VICTIM_HOME, rel), text)
        if "auth" in rel or "ssh" in rel:
            os.chmod(os.path.join(VICTIM_HOME, rel), 0o600)
    give_to(VICTIM, VICTIM_HOME)
    tree = Tree(reachable_base)
    mounts.tmpfs(tree.volume, size="64m")
    give_to(ATTACKER, tree.home)
    write(tree("out:shadow"), SHADOW)
    os.chmod(tree("out:shadow"), 0o600)
    return tree
