# SPDX-License-Identifier: GPL-3.0-or-later
"""One user's state under another user's directories (issue 9, second bullet).

The agents' user (ATTACKER) owns the volume root; a further user (VICTIM, with ``agor_persistence_users``)
keeps its state below ``<volume>/users/victim/``, linked with ``owner: victim``.  The primary user
can always rename what lies directly in the volume root (the security model says so), but no run
may hand it the other user's entries: the directories from ``users`` down to each of the other
user's targets must end owned by root or that user and writable by nobody else (``users`` root's,
0755), or the run refuses naming the offending component.  No entry of root's or the other user's
may become the attacker's, no content may be lost, nothing outside changes.
"""

from __future__ import annotations

import os
import stat

import pytest

from agent_tree import CLAUDE, contents, snapshot, write
from attacker import (
    ATTACKER, VICTIM, VICTIM_HOME, as_user, assert_no_root_owned, assert_refusal_names, changed_keys,
    owners_by_inode, protected, root_watch, run_or_refuse, taken_over,
)
from mounts import give_to
from guarantees import lost

META = ".agent-state-link"  # the module's documented bookkeeping directory below the volume


def two_users(tree):
    """The primary user's ~/.claude and the victim's, as the role links them."""
    victim = {"path": os.path.join(VICTIM_HOME, ".claude"), "target": "vol:users/victim/.claude",
              "owner": str(VICTIM), "group": str(VICTIM)}
    return tree.params(CLAUDE, victim, owner=str(ATTACKER), group=str(ATTACKER), manage_volume_root=True)


def pre_create_0777(tree):
    """Before the first start: users/victim/.claude made by the attacker, mode 0777."""
    os.makedirs(tree("vol:users/victim/.claude"))
    os.chmod(tree("vol:users/victim/.claude"), 0o777)


def rename_users_away(tree):
    os.rename(tree("vol:users"), tree("vol:users.away"))
    os.mkdir(tree("vol:users"))


def rename_users_onto_own_target(tree):
    os.rename(tree("vol:.claude"), tree("vol:.claude.mine"))
    os.rename(tree("vol:users"), tree("vol:.claude"))


def rename_bookkeeping_onto_own_target(tree):
    os.rename(tree("vol:.claude"), tree("vol:.claude.mine"))
    os.rename(tree(f"vol:{META}"), tree("vol:.claude"))


ATTACKS = {
    "users/victim/.claude pre-created 0777 by the attacker": (pre_create_0777, False, ["vol:users"]),
    "users renamed away and made again": (rename_users_away, True, ["vol:users"]),
    "users renamed onto the attacker's own target": (rename_users_onto_own_target, True, ["vol:.claude"]),
    "bookkeeping directory renamed onto the attacker's own target": (rename_bookkeeping_onto_own_target, True, ["vol:.claude"]),
}


@pytest.mark.parametrize("attack, after_a_start, offending", ATTACKS.values(), ids=ATTACKS.keys())
def test_cross_user_in_one_volume(arena, attack, after_a_start, offending):
    tree = arena
    tree.build({"home:.claude/s.jsonl": "attacker's session"})
    give_to(ATTACKER, tree.home)
    if after_a_start:  # the victim's target from an earlier start, in conflict with its home: a backup is made
        write(tree("vol:users/victim/.claude/settings.json"), '{"model": "an earlier start"}')
        give_to(VICTIM, tree("vol:users/victim"))
    params = two_users(tree)
    if after_a_start:
        _result, refusal = run_or_refuse(params)
        assert refusal is None, f"the first start, before any attack: {refusal}"
    # Root's users directory, by identity: the attacker may rename it (the model allows that), and
    # wherever it goes it is still the one root made, not something this run left.
    users = os.lstat(tree("vol:users")) if os.path.isdir(tree("vol:users")) else None
    roots_own = [(users.st_dev, users.st_ino)] if users is not None and users.st_uid == 0 else []
    attacked = as_user(ATTACKER, attack, tree)
    assert attacked, "the attacker could not set up its attack"
    before, victim_before = protected(tree, victim=False), snapshot(VICTIM_HOME)
    owners, manifest = owners_by_inode(tree.home, VICTIM_HOME), contents(tree.home) + contents(VICTIM_HOME)
    volume_names = sorted(os.listdir(tree("vol:")))

    with root_watch([tree.home, VICTIM_HOME], planted=roots_own) as seen:
        _result, refusal = run_or_refuse(params)

    assert protected(tree, victim=False) == before, changed_keys(before, protected(tree, victim=False))
    handed = taken_over(owners, owners_by_inode(tree.home, VICTIM_HOME))
    assert not handed, "the run handed the attacker entries of root's or the other user's:\n" + "\n".join(handed[:10])
    assert not lost(manifest, contents(tree.home) + contents(VICTIM_HOME)), "file contents lost"
    if refusal is not None:
        assert_refusal_names(refusal, *(tree(ref) for ref in offending))
        assert snapshot(VICTIM_HOME) == victim_before, "refused, yet the other user's home changed"
        assert sorted(os.listdir(tree("vol:"))) == volume_names, "refused, yet root made directories in the volume first"
    else:
        assert_beyond_the_attackers_reach(tree, params["links"][1]["target"])
    assert_no_root_owned([tree.home, VICTIM_HOME], seen, planted=roots_own)


def assert_beyond_the_attackers_reach(tree, target):
    """``<volume>/users`` root's 0755; from ``users/<name>`` down to the target, the other user's
    (or root's) and writable by nobody else."""
    users = os.lstat(tree("vol:users"))
    assert (users.st_uid, stat.S_IMODE(users.st_mode)) == (0, 0o755), (
        f"{tree('vol:users')}: uid {users.st_uid} mode {stat.S_IMODE(users.st_mode):o}, expected root's 0755")
    path = tree("vol:users")
    for part in os.path.relpath(target, path).split("/"):
        path = os.path.join(path, part)
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode), f"{path}: not a directory"
        assert st.st_uid in (0, VICTIM) and not st.st_mode & 0o022, (
            f"{path}: uid {st.st_uid} mode {stat.S_IMODE(st.st_mode):o}; the other user's state must be writable by it alone")
    name = os.lstat(tree("vol:users/victim"))
    assert name.st_uid == VICTIM, f"users/victim owned by uid {name.st_uid}, expected the user's own"


def test_users_directory_owned_by_root_and_each_name_by_its_user(arena):
    """A plain start with a further user: ``<volume>/users`` root's 0755, ``users/victim`` the victim's."""
    tree = arena
    tree.build({"home:.claude/s.jsonl": "attacker's session"})
    give_to(ATTACKER, tree.home)
    params = two_users(tree)

    _result, refusal = run_or_refuse(params)

    assert refusal is None, refusal
    assert_beyond_the_attackers_reach(tree, params["links"][1]["target"])
    assert as_user(VICTIM, write, os.path.join(VICTIM_HOME, ".claude", "check"), "written through the link")
    assert os.path.isfile(tree("vol:users/victim/.claude/check"))
    assert_no_root_owned([tree.home, VICTIM_HOME])
