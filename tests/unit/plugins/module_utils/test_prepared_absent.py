# SPDX-License-Identifier: GPL-3.0-or-later
"""state=prepared (image build: into the seed store, volume untouched) and state=absent (rollback:
a real copy back at the path, the volume keeps its own), from every starting state."""

from __future__ import annotations

import pytest

from agent_tree import converge_case, snapshot
from cases import ABSENT_CASES, PREPARED_CASES


@pytest.mark.parametrize("case", PREPARED_CASES, ids=[case.id for case in PREPARED_CASES])
def test_prepared(tree, case):
    volume = snapshot(tree.volume)
    converge_case(tree, case)
    assert snapshot(tree.volume) == volume, "state=prepared must leave the volume alone"


@pytest.mark.parametrize("case", ABSENT_CASES, ids=[case.id for case in ABSENT_CASES])
def test_absent(tree, case):
    tree.build(case.start)
    volume = volume_content(tree)
    tree.build = lambda layout: None  # already built, to snapshot the volume first
    converge_case(tree, case)
    assert volume_content(tree) == volume, "state=absent must leave the volume's copy as it was"


def volume_content(tree):
    """The volume's entries but its root and the module's bookkeeping (the lock of the run)."""
    return {rel: entry for rel, entry in snapshot(tree.volume).items() if rel and not rel.startswith(".agent-state-link")}
