# SPDX-License-Identifier: GPL-3.0-or-later
"""Messages in the caller's terms: a link's label instead of its position, and parameter names
renamed by the module's ``labels`` (what the role uses to name its own variables)."""

from __future__ import annotations

import pytest

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError, build_job, relabel

VOLUME = "/home/agor/.agor"
ROLE_LABELS = {"volume": "agor_persistence_volume", "require_mount": "agor_persistence_require_mount",
               "owner": "agor_persistence_user", "seed_store": "agor_persistence_seed_store"}
CLAUDE = {"path": "/home/agor/.claude", "target": VOLUME + "/.claude", "label": "agent claude (~/.claude)"}

LABELLED = [
    ("duplicate path", [CLAUDE, {"path": "/home/agor/.claude", "target": VOLUME + "/x", "label": "agor_persistence_extra_links[0]"}],
     "path of agor_persistence_extra_links[0]: /home/agor/.claude is given twice (also path of agent claude (~/.claude))"),
    ("unknown owner", [dict(CLAUDE, owner="agor_no_such_user")], "owner of agent claude (~/.claude): unknown user 'agor_no_such_user'"),
    ("unlabelled link keeps its position", [CLAUDE, {"path": "/home/agor/.codex", "target": "/srv/.codex"}],
     "links[1].target: /srv/.codex lies outside volume"),
]


@pytest.mark.parametrize("links, message", [case[1:] for case in LABELLED], ids=[case[0] for case in LABELLED])
def test_labelled_links_are_named_by_their_label(links, message):
    with pytest.raises(AgentStateLinkError) as refused:
        build_job({"links": links, "volume": VOLUME})
    assert str(refused.value).startswith(message)


RELABELLED = [
    ("volume: /v is not on a mounted volume ... or set require_mount=false (image builds, tests).",
     "agor_persistence_volume: /v is not on a mounted volume ... or set agor_persistence_require_mount=false (image builds, tests)."),
    ("owner: unknown user 'x'", "agor_persistence_user: unknown user 'x'"),
    ("links[0].owner: unknown user 'x'", "links[0].owner: unknown user 'x'"),  # a link's field is not the parameter
    ("seed_store: /s overlaps volume /v; the seed store must lie outside", "agor_persistence_seed_store: /s overlaps volume /v; "
     "the seed store must lie outside"),
]


@pytest.mark.parametrize("message, expected", RELABELLED)
def test_relabel_renames_parameters_only_where_named(message, expected):
    assert relabel(message, ROLE_LABELS) == expected
    assert relabel(message, {}) == message
