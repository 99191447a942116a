# SPDX-License-Identifier: GPL-3.0-or-later
"""state=present from every starting state, on real trees: check mode first (tree untouched, same
prediction), the real run, then a rerun with nothing to do (see agent_tree.converge)."""

from __future__ import annotations

import os
import stat

import pytest

from agent_tree import converge_case
from cases import PRESENT_CASES as CASES


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_present(tree, case):
    params, result = converge_case(tree, case)
    for link in params["links"]:  # the end state every link shares
        assert os.readlink(link["path"]) == link["target"], "the path must be a single-hop absolute link to its target"
        target = os.lstat(link["target"]) if os.path.lexists(link["target"]) else None
        kind = link.get("kind", "directory")
        if kind == "directory" or target is not None:
            assert target is not None and (stat.S_ISDIR if kind == "directory" else stat.S_ISREG)(target.st_mode)
