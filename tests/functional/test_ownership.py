# SPDX-License-Identifier: GPL-3.0-or-later
"""owner and group, as root: applied to what the module creates and to an existing target, one
entry at a time, never recursively and never through a link; migrated entries keep theirs."""

from __future__ import annotations

import grp
import os
import pwd

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, Link, converge, run_engine, snapshot

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

pytestmark = pytest.mark.usefixtures("as_root")

USER, GROUP = "daemon", "nogroup"  # present on Debian and its images; nothing of theirs is touched


@pytest.fixture
def ids():
    try:
        return pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    except KeyError:
        pytest.skip(f"needs the system account {USER} and group {GROUP}")


def owner(path):
    st = os.lstat(path)
    return st.st_uid, st.st_gid, oct(st.st_mode & 0o7777)


def test_everything_created_belongs_to_owner_and_group(tree, ids):
    uid, gid = ids
    tree.build({"seed:opencode/opencode.json": "{}"})
    links = [
        {"path": "home:.claude", "target": "vol:agents/claude"},  # a parent below the volume to create
        CLAUDE_JSON,  # a file target from initial_content
        {"path": "home:.local/share/opencode", "target": "vol:opencode"},  # home parents to create, a seed
    ]
    converge(tree.params(*links, owner=USER, group=GROUP, seed_store="seed:"), tree.root)

    assert owner(tree("vol:agents")) == (uid, gid, "0o755")
    assert owner(tree("vol:agents/claude")) == (uid, gid, "0o700")
    assert owner(tree("vol:.claude.json")) == (uid, gid, "0o600")
    assert owner(tree("vol:opencode")) == (uid, gid, "0o700")
    assert owner(tree("vol:opencode/opencode.json"))[:2] == (uid, gid), "seeded entries belong to the owner"
    assert owner(tree("home:.local")) == (uid, gid, "0o755")
    assert owner(tree("home:.local/share")) == (uid, gid, "0o755")
    for path in ("home:.claude", "home:.claude.json", "home:.local/share/opencode"):
        assert owner(tree(path))[:2] == (uid, gid), f"{path}: the link itself belongs to the owner"
    assert owner(tree.volume)[:2] == (0, 0), "the volume root is left alone without manage_volume_root"
    assert owner(tree("seed:opencode/opencode.json"))[:2] == (0, 0), "the seed store is not re-owned"


def test_modes_and_per_link_owner(tree, ids):
    uid, gid = ids
    nobody = pwd.getpwnam("nobody")
    links = [CLAUDE, dict(CLAUDE_JSON, owner="nobody")]
    converge(tree.params(*links, owner=USER, group=GROUP, directory_mode="0750", file_mode="0640"), tree.root)
    assert owner(tree("vol:.claude")) == (uid, gid, "0o750")
    assert owner(tree("vol:.claude.json")) == (nobody.pw_uid, nobody.pw_gid, "0o640")


def test_existing_target_reowned_alone_never_its_content_nor_through_links(tree, ids):
    uid, gid = ids
    tree.build({"out:victim": "root's file", "vol:.claude/projects/s.jsonl": "S", "vol:.claude/planted": Link("out:victim")})
    content = {rel: entry for rel, entry in snapshot(tree("vol:.claude")).items() if rel}
    outside = snapshot(tree.outside)

    result = converge(tree.params(CLAUDE, owner=USER, group=GROUP), tree.root)

    assert result["links"][0]["actions"] == ["set_owner", "link"]
    assert owner(tree("vol:.claude"))[:2] == (uid, gid)
    assert {rel: entry for rel, entry in snapshot(tree("vol:.claude")).items() if rel} == content, "not recursive"
    assert snapshot(tree.outside) == outside


def test_migrated_entries_keep_their_owner(tree, ids):
    uid, gid = ids
    tree.build({"home:.claude/s.jsonl": "S", "home:.claude/sub/t.jsonl": "T"})
    os.chown(tree("home:.claude/s.jsonl"), 1234, 2345)
    converge(tree.params(CLAUDE, owner=USER, group=GROUP), tree.root)
    assert owner(tree("vol:.claude/s.jsonl"))[:2] == (1234, 2345)
    assert owner(tree("vol:.claude/sub/t.jsonl"))[:2] == (0, 0)
    assert owner(tree("vol:.claude"))[:2] == (uid, gid)


def test_manage_volume_root_reowns_the_root_only(tree, ids):
    uid, gid = ids
    tree.build({"vol:agor.db": "db"})
    result = converge(tree.params(CLAUDE, owner=USER, group=GROUP, manage_volume_root=True), tree.root)
    assert result["volume_owner_changed"]
    assert owner(tree.volume)[:2] == (uid, gid)
    assert owner(tree("vol:agor.db"))[:2] == (0, 0)


def test_hard_linked_target_is_not_reowned(tree, ids):
    """A file target with a second name (perhaps /etc/shadow's, planted by the agents' user) keeps its owner."""
    tree.build({"out:victim": "root's file"})
    os.link(tree("out:victim"), tree("vol:.claude.json"))
    before = tree.user_view()
    with pytest.raises(AgentStateLinkError, match="is a hard link .* refusing to change its owner"):
        run_engine(tree.params(CLAUDE_JSON, owner=USER, group=GROUP))
    assert owner(tree("out:victim"))[:2] == (0, 0)
    assert tree.user_view() == before


def test_home_parent_linked_by_another_user_is_refused(tree, ids):
    """A link on the way to a state path is followed only when root made it (like /home -> /var/home)."""
    uid, gid = ids
    tree.build({"out:elsewhere/keep": "K", "home:.config": Link("out:elsewhere")})
    os.lchown(tree("home:.config"), uid, gid)
    before = tree.user_view()
    for check_mode in (True, False):
        with pytest.raises(AgentStateLinkError, match=r"component '\.config' is a symlink owned by uid \d+; refusing to follow it"):
            run_engine(tree.params({"path": "home:.config/opencode", "target": "vol:opencode"}), check_mode=check_mode)
    assert tree.user_view() == before

    os.lchown(tree("home:.config"), 0, 0)
    converge(tree.params({"path": "home:.config/opencode", "target": "vol:opencode"}), tree.root)
    assert os.readlink(tree("out:elsewhere/opencode")) == tree("vol:opencode")
