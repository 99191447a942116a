# SPDX-License-Identifier: GPL-3.0-or-later
"""Parameter validation: every refusal names the parameter and the problem."""

from __future__ import annotations

import pytest

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError, build_job

VOLUME = "/home/agor/.agor"


def params(*links, **overrides):
    base = {"links": list(links) or [{"path": "/home/agor/.claude", "target": VOLUME + "/.claude"}], "volume": VOLUME}
    base.update(overrides)
    return base


REFUSALS = [
    ("relative path", params({"path": "home/agor/.claude", "target": VOLUME + "/.claude"}), "links[0].path: 'home/agor/.claude' is a relative path"),
    ("relative target", params({"path": "/home/agor/.claude", "target": ".agor/.claude"}), "links[0].target: '.agor/.claude' is a relative path"),
    ("relative volume", params(volume="data"), "volume: 'data' is a relative path"),
    ("dot-dot", params({"path": "/home/agor/../x", "target": VOLUME + "/x"}), "links[0].path: '/home/agor/../x' contains '..'"),
    ("target outside volume", params({"path": "/home/agor/.claude", "target": "/srv/.claude"}), "links[0].target: /srv/.claude lies outside volume"),
    ("target is the volume", params({"path": "/home/agor/.claude", "target": VOLUME}), "lies outside volume"),
    ("path equals target", params({"path": VOLUME + "/.claude", "target": VOLUME + "/.claude"}), "links[0].path: /home/agor/.agor/.claude equals its target"),
    ("path inside target", params({"path": VOLUME + "/.claude/x", "target": VOLUME + "/.claude"}), "lies inside its target"),
    ("path contains target", params({"path": "/home/agor", "target": VOLUME + "/.claude"}), "links[0].path: /home/agor contains its target"),
    ("path inside volume", params({"path": VOLUME + "/home-claude", "target": VOLUME + "/.claude"}), "overlaps volume"),
    ("same path twice", params({"path": "/home/agor/.claude", "target": VOLUME + "/a"}, {"path": "/home/agor/.claude", "target": VOLUME + "/b"}),
     "links[1].path: /home/agor/.claude is given twice"),
    ("same target twice", params({"path": "/home/agor/.a", "target": VOLUME + "/a"}, {"path": "/home/agor/.b", "target": VOLUME + "/a"}),
     "links[1].target: /home/agor/.agor/a is given twice"),
    ("nested paths", params({"path": "/home/agor/.config", "target": VOLUME + "/a"}, {"path": "/home/agor/.config/opencode", "target": VOLUME + "/b"}),
     "are nested"),
    ("unknown kind", params({"path": "/home/agor/.claude", "target": VOLUME + "/.claude", "kind": "socket"}),
     "links[0].kind: 'socket' is not one of directory, file"),
    ("empty initial content", params({"path": "/home/agor/.claude.json", "target": VOLUME + "/.claude.json", "kind": "file", "initial_content": ""}),
     "links[0].initial_content: must be a non-empty string"),
    ("initial content on a directory", params({"path": "/home/agor/.claude", "target": VOLUME + "/.claude", "initial_content": "{}"}),
     "links[0].initial_content: only allowed with kind=file"),
    ("unknown owner", params(owner="no-such-user-agor"), "owner: unknown user 'no-such-user-agor'"),
    ("unknown group", params(group="no-such-group-agor"), "group: unknown group 'no-such-group-agor'"),
    ("unknown link owner", params({"path": "/home/agor/.claude", "target": VOLUME + "/.claude", "owner": "no-such-user-agor"}),
     "links[0].owner: unknown user"),
    ("bad conflict policy", params(conflict="overwrite"), "conflict: 'overwrite' is not one of backup, fail"),
    ("bad state", params(state="linked"), "state: 'linked' is not one of present, prepared, absent"),
    ("bad mode", params(directory_mode="rwx"), "directory_mode: 'rwx' is not an octal mode"),
    ("no links", params(links=[]), "links: give a non-empty list"),
    ("target in bookkeeping dir", params({"path": "/home/agor/.x", "target": VOLUME + "/.agent-state-link/x"}), "bookkeeping directory"),
    ("prepared without seed store", params(state="prepared"), "seed_store: required with state=prepared"),
    ("seed store inside volume", params(seed_store=VOLUME + "/seed"), "seed_store: /home/agor/.agor/seed overlaps volume"),
    ("negative lock timeout", params(lock_timeout=-1), "lock_timeout: -1 is not a number of seconds"),
]


@pytest.mark.parametrize("raw, message", [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS])
def test_refusal_names_parameter_and_problem(raw, message):
    with pytest.raises(AgentStateLinkError) as excinfo:
        build_job(raw)
    assert message in str(excinfo.value)


def test_valid_job_resolves_owner_and_defaults():
    job = build_job(params(owner="0"))
    assert (job.uid, job.state, job.conflict, job.require_mount, job.directory_mode) == (0, "present", "backup", True, 0o700)
    assert job.relative_target(job.links[0]) == ".claude"
