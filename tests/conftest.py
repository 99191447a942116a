# SPDX-License-Identifier: GPL-3.0-or-later
"""Make the repository importable as ansible_collections.agor.persistence for plain pytest runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _collections_root() -> str:
    """A collections tree outside the repository whose agor/persistence links to it (no loop inside the repo)."""
    if os.path.basename(os.path.dirname(os.path.dirname(REPO))) == "ansible_collections":
        return os.path.dirname(os.path.dirname(os.path.dirname(REPO)))  # already a real collection tree
    root = os.path.join(tempfile.gettempdir(), "agor-persistence-" + hashlib.sha256(REPO.encode()).hexdigest()[:10])
    link = os.path.join(root, "ansible_collections", "agor", "persistence")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        try:
            os.symlink(REPO, link)
        except FileExistsError:
            pass
    return root


COLLECTIONS_ROOT = _collections_root()
if COLLECTIONS_ROOT not in sys.path:
    sys.path.insert(0, COLLECTIONS_ROOT)
os.environ["ANSIBLE_COLLECTIONS_PATH"] = COLLECTIONS_ROOT
# pytest.ini's pythonpath does not apply under `ansible-test units`, which brings its own pytest config.
SUPPORT = os.path.join(REPO, "tests", "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)


import pytest  # noqa: E402  (after the path setup above, like the test modules)

from agent_tree import Tree, reachable  # noqa: E402


def pytest_configure(config):
    """Register the markers pytest.ini declares, for `ansible-test units` (which ignores pytest.ini)."""
    config.addinivalue_line("markers", "slow: long-running test (large trees, many processes)")
    config.addinivalue_line("markers", "container: needs a real container engine (rootful podman; tests/container)")


@pytest.fixture
def tree():
    """A sandbox home with its volume inside, plus a directory outside both (see agent_tree.Tree).

    Below a directory of its own that every account can traverse (pytest's base is 0700, and each
    pytest session resets it), since the engine acts as the account that owns the state."""
    base = tempfile.mkdtemp(prefix="agor-tree-")
    reachable(base)
    yield Tree(base)
    subprocess.run(["rm", "-rf", "--one-file-system", base], check=False)
