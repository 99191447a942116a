# SPDX-License-Identifier: GPL-3.0-or-later
"""A hostile volume, the engine running as root: the agents' user (uid 1001, who owns the home and
the volume) plants symlinks at targets, inside target directories and at intermediate directories
(to /etc, to /etc/shadow, to another user's home), hard links to root-owned files, and swaps a
target for a link between check and use, in a loop, while the engine runs again and again.

Nothing outside the volume and the configured paths may change owner, mode or content; no state
path may end up resolving outside the volume; each run completes safely or refuses with a clear
error (an AgentStateLinkError, never a traceback).

/etc and /home are shielded for the test's mount namespace: /etc by a private copy bind-mounted
over it (a buggy run would write there, not on the host), /home by a tmpfs holding a fake
/home/victim.
"""

from __future__ import annotations

import os
import time

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, CODEX, Link, Tree, run_engine, snapshot, write
from attacker import ATTACKER, VICTIM, as_user, racing, run_or_refuse
from mounts import give_to
from guarantees import assert_linked, assert_nothing_lost, user_data

NESTED = {"path": "home:.copilot", "target": "vol:users/agor/.copilot"}
PROTECTED_FILES = ("/etc/shadow", "/etc/passwd", "/etc/group")


@pytest.fixture
def hostile(tmp_path, reachable_base, mounts):
    """A sandbox with its volume on a tmpfs, a private copy of /etc, a fake /home/victim, and
    a root-owned secret (0600) beside the home, on the home's filesystem (for hard links)."""
    mounts.private_copy("/etc", str(tmp_path))
    mounts.tmpfs("/home", size="16m")
    write("/home/victim/.codex/auth.json", "victim's token")
    write("/home/victim/.ssh/id_ed25519", "victim's key")
    for dirpath, dirnames, filenames in os.walk("/home/victim"):
        for name in [dirpath] + [os.path.join(dirpath, entry) for entry in dirnames + filenames]:
            os.lchown(name, VICTIM, VICTIM)
    os.chmod("/home/victim/.ssh/id_ed25519", 0o600)
    tree = Tree(reachable_base)
    mounts.tmpfs(tree.volume)
    write(tree("out:root-secret"), "root's secret")
    os.chmod(tree("out:root-secret"), 0o600)
    return tree


def protected(tree):
    """What must not change: the sensitive files, /etc's own entry and listing, the victim's home,
    everything beside the sandbox's home."""
    state = {path: snapshot(path)[""] for path in PROTECTED_FILES}
    st = os.lstat("/etc")
    state["/etc"] = (st.st_mode, st.st_uid, st.st_gid, tuple(sorted(os.listdir("/etc"))))
    state["/home/victim"] = snapshot("/home/victim")
    state["outside"] = snapshot(tree.outside)
    return state


def write_session(tree, index):
    if os.path.islink(tree("home:.claude")):
        os.unlink(tree("home:.claude"))
    os.makedirs(tree(f"home:.claude/run-{index}"))
    write(tree(f"home:.claude/run-{index}/session.jsonl"), f"session of run {index}")


def pending_sessions(tree):
    """How many sessions of earlier runs wait in a real ~/.claude (none when it is a link)."""
    home_claude = tree("home:.claude")
    if os.path.islink(home_claude) or not os.path.isdir(home_claude):
        return 0
    return sum(name.startswith("run-") for name in os.listdir(home_claude))


PLANTED = {
    "target linked to /etc": ({"vol:.claude": Link("/etc"), "home:.claude/settings.json": "{}"}, [CLAUDE]),
    "file target linked to /etc/shadow": ({"vol:.claude.json": Link("/etc/shadow"), "home:.claude.json": '{"a": 1}'}, [CLAUDE_JSON]),
    "file target linked to /etc/shadow, nothing in the home": ({"vol:.claude.json": Link("/etc/shadow")}, [CLAUDE_JSON]),
    "target linked to another user's home": ({"vol:.codex": Link("/home/victim/.codex"), "home:.codex/auth.json": "mine"}, [CODEX]),
    "links inside the target": (
        {"vol:.claude/projects": Link("/home/victim"), "vol:.claude/settings.json": Link("/etc/shadow"),
         "vol:.claude/todos": Link("/etc"), "home:.claude/projects/-work/s.jsonl": "session",
         "home:.claude/settings.json": "{}", "home:.claude/todos/t.json": "todo"}, [CLAUDE]),
    "intermediate directory linked to /etc": ({"vol:users": Link("/etc"), "home:.copilot/config.json": "{}"}, [NESTED]),
    "intermediate directory linked to another user's home": (
        {"vol:users/agor": Link("/home/victim"), "home:.copilot/config.json": "{}"}, [NESTED]),
    "home path linked to /etc": ({"home:.claude": Link("/etc")}, [CLAUDE]),
    "home file linked to /etc/shadow": ({"home:.claude.json": Link("/etc/shadow")}, [CLAUDE_JSON]),
    "links to /etc/shadow inside the home state": (
        {"home:.claude/shadow": Link("/etc/shadow"), "home:.claude/etc": Link("/etc"), "home:.claude/a": "a"}, [CLAUDE]),
}


@pytest.mark.parametrize("layout, links", PLANTED.values(), ids=PLANTED.keys())
def test_planted_symlinks(hostile, layout, links):
    tree = hostile
    tree.build(layout)
    give_to(ATTACKER, tree.home)
    params = tree.params(*links, owner=str(ATTACKER), group=str(ATTACKER))
    before, manifest = protected(tree), tree.manifest()

    result, refusal = run_or_refuse(params)

    assert protected(tree) == before, "something outside the volume and the configured paths changed"
    assert refusal is None, f"a planted link should be backed up, not refused: {refusal}"
    assert_linked(tree, params)
    assert_nothing_lost(tree, manifest, "after the run")
    assert "root's secret" not in {open(p).read() for p in _files(tree.volume)}
    assert not run_engine(params)["changed"]
    for entry in (entry for record in result["links"] for entry in record["backups"]):
        assert entry["backup"].startswith(tree.meta + "/backups/")


def _files(root):
    return [os.path.join(d, f) for d, _s, fs in os.walk(root) for f in fs if not os.path.islink(os.path.join(d, f))]


# Both refused: the first before any change (a target must be the link's owner's), the second when
# the agents' user's own process cannot read the root-only file it planted (nothing copied, nothing lost).
HARD_LINKED = {
    "file target hard-linked to a root-owned file": ("vol:.claude.json", [CLAUDE_JSON], "is owned by uid 0, not by the link's owner"),
    "file in the home state hard-linked to a root-owned file": ("home:.claude/stolen", [CLAUDE], "permission denied at stolen"),
}


@pytest.mark.parametrize("place, links, refusal", HARD_LINKED.values(), ids=HARD_LINKED.keys())
def test_hard_links_to_root_owned_files(hostile, place, links, refusal):
    tree = hostile
    secret = tree("out:root-secret")
    if place.startswith("vol:"):  # hard links cannot cross filesystems: a root-owned file on the volume
        secret = tree("vol:agor.db")
        write(secret, "root's database")
        os.chmod(secret, 0o600)
    tree.build({"home:.claude/s.jsonl": "session"})
    give_to(ATTACKER, tree.home)
    os.chown(secret, 0, 0)
    os.link(secret, tree(place))
    params = tree.params(*links, owner=str(ATTACKER), group=str(ATTACKER))
    before, secret_before = protected(tree), snapshot(secret)[""]

    result, message = run_or_refuse(params)

    assert protected(tree) == before
    assert snapshot(secret)[""] == secret_before, "the root-owned file changed owner, mode or content"
    if refusal:
        assert message is not None and refusal in message, message
    else:
        assert message is None, message
        assert_linked(tree, params)
        copied = tree(place.replace("home:", "vol:"))
        assert os.stat(copied)[4:6] == (0, 0) and os.stat(copied).st_mode & 0o777 == 0o600, (
            "a copy of a root-owned file must stay root's, unreadable to the agents' user")


RACE_RUNS, RACE_SECONDS = 40, 2.0


def test_target_swapped_for_a_link_between_check_and_use(hostile, figures):
    """A second process, as the agents' user, keeps swapping the targets, an intermediate
    directory and the home path for links to /etc, /etc/shadow and the victim's home, while the
    engine runs again and again (RACE_RUNS times and RACE_SECONDS at least, then on until one run
    has completed), each time with new state to migrate in the home."""
    tree = hostile
    links = [CLAUDE, CLAUDE_JSON, NESTED]
    params = tree.params(*links, owner=str(ATTACKER), group=str(ATTACKER))
    tree.build({"vol:.claude/old.jsonl": "old", "vol:users/agor/.copilot/c.json": "c"})
    give_to(ATTACKER, tree.home)
    os.chown(tree.volume, ATTACKER, ATTACKER)
    before = protected(tree)
    written = []
    # One path at a time swapped for a link and back, with a random pause between rounds (always
    # swapping, the engine would refuse every run; it must also be caught mid-run).
    swaps = [("vol:.claude", "/etc"), ("vol:.claude.json", "/etc/shadow"), ("vol:users", "/home/victim"), ("home:.claude", "/etc")]
    outcomes, index = {}, 0
    began = time.monotonic()
    with racing([{"swap": tree(path), "to": dest} for path, dest in swaps]) as report:
        # The racer wins most runs (some path is swapped most of the time), so runs go on past the
        # minimum until one has completed, for up to ten times as long.
        while (index < RACE_RUNS or time.monotonic() - began < RACE_SECONDS
               or not outcomes.get("completed") and time.monotonic() - began < 10 * RACE_SECONDS):
            index += 1
            # New state in a real ~/.claude, written as the agents' user: the racer may be swapping
            # that path for a link to /etc this very moment, and root writing through it would
            # be the test's own escape, not the engine's.  Not while three or more wait there: each
            # run the racer fails leaves them all for the next, whose longer migration it fails
            # more surely, until no run completes at all.
            if pending_sessions(tree) < 3 and as_user(ATTACKER, write_session, tree, index):
                written.append(f"session of run {index}")
            _result, refusal = run_or_refuse(params)
            key = "completed" if refusal is None else refusal.split(";", maxsplit=1)[0][:300]
            outcomes[key] = outcomes.get(key, 0) + 1
            assert protected(tree) == before, f"run {index}: something outside the volume changed"
    for path in (tree(path) for path, _dest in swaps):
        if os.path.islink(path):  # the racer was stopped in the middle of a swap
            os.unlink(path)
        if os.path.lexists(path + ".racer") and not os.path.lexists(path):
            os.rename(path + ".racer", path)

    run_engine(params)

    assert protected(tree) == before
    assert_linked(tree, params)
    found = {open(path, encoding="utf-8").read() for path in _files(tree.volume) + _files(tree.home)}
    assert set(written) <= found, f"lost: {set(written) - found}"
    figures(runs=index, racer_swaps=report["moves"], outcomes=outcomes)
    assert report["moves"] >= 20, f"the racer hardly ran: {report['moves']} swaps"
    assert outcomes.get("completed", 0) >= 1


def replant_at_the_target(tree):
    os.rename(tree("vol:.claude"), tree("vol:.claude-moved-aside"))
    os.symlink("/home/victim", tree("vol:.claude"))


def replant_below_users(tree):  # users and users/agor, which the failed run made; users/agor moved aside
    os.makedirs(tree("vol:users/agor"), exist_ok=True)
    os.rename(tree("vol:users/agor"), tree("vol:users/agor-moved-aside"))
    os.symlink("/home/victim", tree("vol:users/agor"))


# (layout, link, the attacker's move after the failed run, where the rerun backs up the new link,
# where the failed run backed up the first)
REPLANTED = {
    "a link planted at the target again": (
        {"vol:.claude": Link("/etc"), "home:.claude/s.jsonl": "session"}, CLAUDE, replant_at_the_target, "/.claude.1", "/.claude"),
    "a link planted below a directory whose link was backed up": (
        {"vol:users": Link("/etc"), "home:.copilot/config.json": "{}"}, NESTED, replant_below_users, "/users.1/agor", "/users"),
}


@pytest.mark.parametrize("layout, link, replant, second, first", REPLANTED.values(), ids=REPLANTED.keys())
def test_link_planted_again_after_a_failed_run(hostile, mounts, layout, link, replant, second, first):
    """A run backs up a link planted in the target's chain, then fails (the home is read-only: the
    sources cannot go) and keeps its backup directory for the rerun.  The attacker plants a link
    there again, at the target or below the directory whose link was backed up: the rerun must
    back it up beside the first one (``<name>.1``), not refuse.  Before each fix every later run
    refused, on the first backup's name or on the link in the way, so the container never started
    again."""
    tree = hostile
    tree.build(layout)
    give_to(ATTACKER, tree.home)
    params = tree.params(link, owner=str(ATTACKER), group=str(ATTACKER))
    before = protected(tree)
    fail_on_a_read_only_home(tree, mounts, params)
    assert as_user(ATTACKER, replant, tree)
    manifest = user_data(tree)  # the user's files now, not the kept backup's pending-backup record

    result, refusal = run_or_refuse(params)

    assert refusal is None, refusal
    assert protected(tree) == before
    assert_linked(tree, params)
    assert_nothing_lost(tree, manifest, "after the rerun")
    backups = [entry["backup"] for record in result["links"] for entry in record["backups"]]
    assert len(backups) == 1 and backups[0].endswith(second) and os.readlink(backups[0]) == "/home/victim", backups
    assert os.readlink(backups[0][:-len(second)] + first) == "/etc", "the first planted link, backed up by the failed run"


def fail_on_a_read_only_home(tree, mounts, params):
    """One run that backs up what conflicts, then fails (the sources cannot go) keeping its backup
    directory for the rerun (the pending-backup record)."""
    mounts.bind(tree.home, tree.home, recursive=True)
    mounts.remount(tree.home, "bind,ro")
    _result, refusal = run_or_refuse(params)
    assert refusal is not None and "read-only filesystem" in refusal
    mounts.umount(tree.home)
    assert os.path.exists(os.path.join(tree.meta, "pending-backup"))


def test_home_file_changed_again_after_a_failed_run(hostile, mounts):
    """The same for a conflicting home file that changes again before the rerun: backed up beside
    the first backup, nothing refused, nothing lost."""
    tree = hostile
    tree.build({"vol:.claude.json": '{"userID": "volume"}', "home:.claude.json": '{"userID": "first"}'})
    params = tree.params(CLAUDE_JSON)
    fail_on_a_read_only_home(tree, mounts, params)
    write(tree("home:.claude.json"), '{"userID": "second"}')
    manifest = user_data(tree)

    result, refusal = run_or_refuse(params)

    assert refusal is None, refusal
    assert_linked(tree, params)
    assert_nothing_lost(tree, manifest, "after the rerun")
    [entry] = [entry for record in result["links"] for entry in record["backups"]]
    assert entry["backup"].endswith("/.claude.json.1")
    assert open(entry["backup"], encoding="utf-8").read() == '{"userID": "second"}'
    assert open(entry["backup"][:-2], encoding="utf-8").read() == '{"userID": "first"}'
