# SPDX-License-Identifier: GPL-3.0-or-later
"""owner and group, as root: everything a link's run creates belongs to the link's owner (it is made
by a process of that account); an existing target of another account is refused, never re-owned;
renamed entries keep their owner; root re-owns the volume root alone, and makes users/<name>."""

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
def ids(tree):
    """The account's ids; the sandbox's home and volume root are that account's, as in a container."""
    try:
        uid, gid = pwd.getpwnam(USER).pw_uid, grp.getgrnam(GROUP).gr_gid
    except KeyError:
        pytest.skip(f"needs the system account {USER} and group {GROUP}")
    tree.give_to(uid, gid, "vol:")
    return uid, gid


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
    assert owner(tree("seed:opencode/opencode.json"))[:2] == (0, 0), "the seed store is not re-owned"


def test_owner_omitted_means_the_homes_owner_never_root(tree, ids):
    uid, gid = ids
    tree.build({"home:.claude/s.jsonl": "S"})
    os.chown(tree("home:.claude"), uid, gid)
    os.chown(tree("home:.claude/s.jsonl"), uid, gid)
    converge(tree.params(CLAUDE, CLAUDE_JSON), tree.root)
    for path in ("home:.claude", "home:.claude.json", "vol:.claude", "vol:.claude.json", "vol:.claude/s.jsonl"):
        assert owner(tree(path))[:2] == (uid, gid), path


def test_modes_and_a_further_account_below_users(tree, ids):
    """A link of another account keeps its target below <volume>/users/<name>/: root makes users
    (root's, 0755) and users/<name> (the account's, 0700); that account does the rest."""
    uid, gid = ids
    nobody = pwd.getpwnam("nobody")
    other_home = os.path.join(tree.root, "home", "nobody")
    os.makedirs(other_home)
    os.chown(other_home, nobody.pw_uid, nobody.pw_gid)
    links = [CLAUDE, dict(CLAUDE_JSON, path=f"{other_home}/.claude.json", target="vol:users/nobody/.claude.json", owner="nobody")]
    result = converge(tree.params(*links, owner=USER, group=GROUP, directory_mode="0750", file_mode="0640"), tree.root)

    assert owner(tree("vol:.claude")) == (uid, gid, "0o750")
    assert owner(tree("vol:users")) == (0, 0, "0o755")
    assert owner(tree("vol:users/nobody")) == (nobody.pw_uid, nobody.pw_gid, "0o700")
    assert owner(tree("vol:users/nobody/.claude.json")) == (nobody.pw_uid, nobody.pw_gid, "0o640")
    assert owner(f"{other_home}/.claude.json")[:2] == (nobody.pw_uid, nobody.pw_gid)
    assert result["links"][1]["actions"] == ["create_directory", "create_file", "link"]


def test_users_is_made_at_once_in_a_set_group_id_volume_root(tree, ids):
    """The volume root's owner can set its set-group-ID bit: root still makes users with one mkdir
    (taking that group and bit, with no write for the group), never under a temporary name in the
    volume root, a root-owned entry that owner could move (found by an attacker review)."""
    uid, gid = ids
    os.chmod(tree.volume, 0o2755)
    nobody = pwd.getpwnam("nobody")
    other_home = os.path.join(tree.root, "home", "nobody")
    os.makedirs(other_home)
    os.chown(other_home, nobody.pw_uid, nobody.pw_gid)
    links = [CLAUDE, dict(CLAUDE_JSON, path=f"{other_home}/.claude.json", target="vol:users/nobody/.claude.json", owner="nobody")]
    converge(tree.params(*links, owner=USER, group=GROUP), tree.root)

    assert owner(tree("vol:users")) == (0, gid, "0o2755")
    assert owner(tree("vol:users/nobody")) == (nobody.pw_uid, nobody.pw_gid, "0o700")


def test_a_further_account_outside_users_is_refused(tree, ids):
    before = tree.user_view()
    with pytest.raises(AgentStateLinkError, match=r"links\[1\]\.target: .* belongs to uid \d+, but .* is owned by uid"):
        run_engine(tree.params(CLAUDE, dict(CLAUDE_JSON, owner="nobody"), owner=USER, group=GROUP))
    assert tree.user_view() == before


def test_existing_target_of_another_account_is_refused_not_reowned(tree, ids):
    uid, gid = ids
    tree.build({"out:victim": "root's file", "vol:.claude/projects/s.jsonl": "S", "vol:.claude/planted": Link("out:victim")})
    before, outside = tree.user_view(), snapshot(tree.outside)
    for check_mode in (True, False):
        with pytest.raises(AgentStateLinkError, match=r"\.agor/\.claude is owned by uid 0, not by the link's owner uid"):
            run_engine(tree.params(CLAUDE, owner=USER, group=GROUP), check_mode=check_mode)
    assert tree.user_view() == before
    assert snapshot(tree.outside) == outside


def test_group_of_an_existing_target_set_alone_never_its_content_nor_through_links(tree, ids):
    uid, gid = ids
    tree.build({"out:victim": "root's file", "vol:.claude/projects/s.jsonl": "S", "vol:.claude/planted": Link("out:victim")})
    for rel in ("", "/projects", "/projects/s.jsonl"):
        os.lchown(tree("vol:.claude") + rel, uid, 0)
    content = {rel: entry for rel, entry in snapshot(tree("vol:.claude")).items() if rel}
    outside = snapshot(tree.outside)

    result = converge(tree.params(CLAUDE, owner=USER, group=GROUP), tree.root)

    assert result["links"][0]["actions"] == ["set_group", "link"]
    assert owner(tree("vol:.claude"))[:2] == (uid, gid)
    assert {rel: entry for rel, entry in snapshot(tree("vol:.claude")).items() if rel} == content, "not recursive"
    assert snapshot(tree.outside) == outside


def test_renamed_entries_keep_their_owner(tree, ids):
    uid, gid = ids
    tree.build({"home:.claude/s.jsonl": "S", "home:.claude/sub/t.jsonl": "T"})
    for path in ("home:.claude", "home:.claude/sub", "home:.claude/sub/t.jsonl"):
        os.chown(tree(path), uid, gid)
    os.chown(tree("home:.claude/s.jsonl"), 1234, 2345)
    converge(tree.params(CLAUDE, owner=USER, group=GROUP), tree.root)
    assert owner(tree("vol:.claude/s.jsonl"))[:2] == (1234, 2345)
    assert owner(tree("vol:.claude/sub/t.jsonl"))[:2] == (uid, gid)
    assert owner(tree("vol:.claude"))[:2] == (uid, gid)


def test_manage_volume_root_reowns_the_root_only(tree, ids):
    uid, gid = ids
    os.chown(tree.volume, 0, 0)  # as Railway mounts it
    tree.build({"vol:agor.db": "db"})
    result = converge(tree.params(CLAUDE, owner=USER, group=GROUP, manage_volume_root=True), tree.root)
    assert result["volume_owner_changed"]
    assert owner(tree.volume)[:2] == (uid, gid)
    assert owner(tree("vol:agor.db"))[:2] == (0, 0)
    assert result["diff"][0] == {"before_header": tree.volume, "after_header": tree.volume,
                                 "before": "owner: root:root\n", "after": f"owner: {USER}:{GROUP}\n"}


@pytest.mark.parametrize("mode", [0o700, 0o711, 0o755], ids=oct)
@pytest.mark.parametrize("conflict", ["backup", "fail"])
def test_manage_volume_root_hands_over_a_volume_root_only_root_could_enter(tree, ids, mode, conflict):
    """A fresh volume mounted root's, perhaps closed to others: the first start hands it to the
    account before that account's process plans anything in it (conflict=fail plans every account's
    links before root acts: that once refused every start on a 0700 volume root)."""
    uid, gid = ids
    tree.build({"vol:agor.db": "db", "home:.claude/s.jsonl": "session"})
    for path in ("home:.claude", "home:.claude/s.jsonl"):
        os.chown(tree(path), uid, gid)
    os.chown(tree.volume, 0, 0)
    os.chmod(tree.volume, mode)
    params = tree.params(CLAUDE, owner=USER, group=GROUP, manage_volume_root=True, conflict=conflict)

    result = run_engine(params)

    assert result["volume_owner_changed"]
    assert owner(tree.volume) == (uid, gid, oct(mode))
    assert open(tree("vol:.claude/s.jsonl"), encoding="utf-8").read() == "session"
    assert os.readlink(tree("home:.claude")) == tree("vol:.claude")
    assert not run_engine(params)["changed"]


def test_hard_linked_target_is_not_reowned(tree, ids):
    """A file target with a second name (perhaps /etc/shadow's, planted by the agents' user) is
    another account's file: refused before any change, its owner and content untouched."""
    tree.build({"out:victim": "root's file"})
    os.link(tree("out:victim"), tree("vol:.claude.json"))
    before = tree.user_view()
    with pytest.raises(AgentStateLinkError, match=r"\.claude\.json is owned by uid 0, not by the link's owner"):
        run_engine(tree.params(CLAUDE_JSON, owner=USER, group=GROUP))
    assert owner(tree("out:victim"))[:2] == (0, 0)
    assert tree.user_view() == before


def test_home_parent_linked_by_another_user_is_refused(tree, ids):
    """A link on the way to a state path is followed only when root made it, in a directory only
    root can write (like /home -> /var/home)."""
    uid, gid = ids
    tree.build({"out:elsewhere/keep": "K", "home:.config": Link("out:elsewhere")})
    os.lchown(tree("home:.config"), uid, gid)
    before = tree.user_view()
    for check_mode in (True, False):
        with pytest.raises(AgentStateLinkError, match=r"component '\.config' is a symlink owned by uid \d+ in a directory"):
            run_engine(tree.params({"path": "home:.config/opencode", "target": "vol:opencode"}), check_mode=check_mode)
    assert tree.user_view() == before

    os.lchown(tree("home:.config"), 0, 0)  # root's link, but in the account's home: still refused
    before = tree.user_view()
    with pytest.raises(AgentStateLinkError, match=r"component '\.config' is a symlink owned by uid 0 in a directory owned by uid"):
        run_engine(tree.params({"path": "home:.config/opencode", "target": "vol:opencode"}))
    assert tree.user_view() == before


def test_build_with_nothing_to_keep_makes_only_the_links(tree, ids):
    """An image with nothing at the state paths: the build makes the (dangling) links, owned by the
    account, and no seed store (found by the real-engine suite: it failed 'could not be created')."""
    uid, gid = ids
    result = converge(tree.params(CLAUDE, state="prepared", seed_store="seed:", owner=USER, group=GROUP), tree.root)
    assert [record["actions"] for record in result["links"]] == [["link"]]
    assert owner(tree("home:.claude"))[:2] == (uid, gid)
    assert not os.path.lexists(tree.seed_store)
