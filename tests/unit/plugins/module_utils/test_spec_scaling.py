# SPDX-License-Identifier: GPL-3.0-or-later
"""The fast paths build_job takes for long link lists (see tests/bench) decide exactly as before."""

from __future__ import annotations

import itertools
import posixpath

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.agor.persistence.plugins.module_utils._spec import _nesting, build_job, is_within

# Short components from a small alphabet, '-' and '.' included: they sort before '/' ('/a-b' lies
# between '/a' and '/a/b'), the case a naive neighbour comparison gets wrong.
COMPONENT = st.text(alphabet="ab-.", min_size=1, max_size=3).filter(lambda c: c not in (".", ".."))
PATH = st.lists(COMPONENT, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))


def pairwise(paths):
    return any(a == b or is_within(a, b) or is_within(b, a) for a, b in itertools.combinations(paths, 2))


@settings(max_examples=500, deadline=None)
@given(st.lists(PATH, max_size=8))
def test_nesting_agrees_with_the_pairwise_check(paths):
    paths = [posixpath.normpath(path) for path in paths]
    assert _nesting(paths) == pairwise(paths)


def test_many_owners_of_one_name_resolve_alike():
    """Ownership is looked up once per distinct owner and group; each link still gets its own."""
    links = [{"path": f"/home/agor/.l{index}", "target": f"/home/agor/.agor/l{index}", "owner": "0", "group": str(index % 3)}
             for index in range(30)]
    job = build_job({"links": links, "volume": "/home/agor/.agor"})
    assert [(link.uid, link.gid) for link in job.links] == [(0, index % 3) for index in range(30)]
    assert [job.relative_target(link) for link in job.links] == [f"l{index}" for index in range(30)]
