# SPDX-License-Identifier: GPL-3.0-or-later
"""Resource faults on real filesystems: a full volume (blocks or inodes), a read-only volume,
permission denied (the engine as the agents' user against root-owned directories), and a home on a
read-only layer.  Each run must fail with an error naming the cause, leave every home file readable
through its path with the same content, and a rerun must succeed once the fault is gone."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, CODEX, Tree, engine_command, engine_env, run_engine, write
from guarantees import assert_converged, read_through
from mounts import ImageSandbox

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

LINKS = (CLAUDE_JSON, CLAUDE, CODEX)
USER = 1001

STATE = {
    "home:.claude.json": '{"userID": "home"}',
    "home:.claude/settings.json": '{"model": "opus"}',
    "home:.claude/projects/-work/session.jsonl": '{"n": 1}\n' * 100,
    "home:.codex/auth.json": '{"token": "t"}',
}


def big_state(tree, files=0, megabytes=0):
    tree.build(STATE)
    for index in range(files):
        write(tree(f"home:.claude/projects/-many/s{index}.jsonl"), f"{index}\n")
    for index in range(megabytes):
        with open(tree(f"home:.claude/projects/-work/big-{index}.bin"), "wb") as handle:
            handle.write(bytes([index]) * (1 << 20))


def home_view(tree):
    """Every home state path's files as a program reads them through the path (links followed)."""
    return {link["path"]: read_through(tree(link["path"])) for link in LINKS}


def fails_naming(cause, run):
    with pytest.raises(AgentStateLinkError) as excinfo:
        run()
    message = str(excinfo.value)
    assert cause in message, message
    return message


@pytest.mark.parametrize("limit, files, megabytes", [("size=1m", 0, 3), ("size=64m,nr_inodes=40", 200, 0)],
                         ids=["blocks", "inodes"])
def test_volume_full(tree, mounts, figures, limit, files, megabytes):
    size, extra = (limit.split(",", 1) + [""])[:2]
    mounts.tmpfs(tree.volume, size=size.split("=")[1], options=extra)
    big_state(tree, files, megabytes)
    params, manifest, before = tree.params(*LINKS), tree.manifest(), home_view(tree)

    message = fails_naming("no space left on the device", lambda: run_engine(params))

    assert home_view(tree) == before, "home data changed or unreadable after the failure"
    mounts.remount(tree.volume, "size=256m,nr_inodes=100000")
    run_engine(params)
    assert_converged(tree, params, manifest)
    figures(message=message[:100])


@pytest.mark.parametrize("used_before", [False, True], ids=["fresh volume", "volume used before"])
def test_volume_read_only(tree, mounts, figures, used_before):
    mounts.tmpfs(tree.volume)
    tree.build(STATE)
    if used_before:  # the bookkeeping directory and its lock exist already
        run_engine(tree.params({"path": "home:.gemini", "target": "vol:.gemini"}))
    params, manifest, before = tree.params(*LINKS), tree.manifest(), home_view(tree)
    mounts.remount(tree.volume, "ro")

    message = fails_naming("read-only filesystem", lambda: run_engine(params))

    assert home_view(tree) == before
    mounts.remount(tree.volume, "rw")
    run_engine(params)
    assert_converged(tree, params, manifest)
    figures(message=message[:100])


@pytest.fixture
def open_tree(reachable_base, mounts):
    """A sandbox the agents' user (uid 1001) can reach, its volume a tmpfs owned by root (as Railway
    mounts volumes)."""
    tree = Tree(reachable_base)
    mounts.tmpfs(tree.volume)
    return tree


def chown_tree(path, uid, skip=None):
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [name for name in dirnames if os.path.join(dirpath, name) != skip]
        for name in [dirpath] + [os.path.join(dirpath, entry) for entry in dirnames + filenames]:
            os.lchown(name, uid, uid)


def run_as_user(params):
    """The engine as uid 1001 (setpriv, no supplementary groups), in a process of its own."""
    argv = ["setpriv", f"--reuid={USER}", f"--regid={USER}", "--clear-groups", "--", *engine_command(params)]
    proc = subprocess.run(argv, env=engine_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.stdout, f"no result, only: {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.parametrize("where", ["volume root", "target directory"])
def test_permission_denied(open_tree, figures, where):
    tree = open_tree
    tree.build(STATE)
    if where == "target directory":  # the user owns the volume, but root made the Claude target
        os.chown(tree.volume, USER, USER)
        os.makedirs(tree("vol:.claude/projects"))
    chown_tree(tree.home, USER, skip=tree.volume)
    os.chown(tree.volume, *((USER, USER) if where == "target directory" else (0, 0)))
    params = tree.params(*LINKS, owner=str(USER), group=str(USER))
    manifest, before = tree.manifest(), home_view(tree)

    code, result = run_as_user(params)

    assert code == 1 and result.get("failed"), result
    message = result["msg"]
    # Refused up front, naming the root-owned directory (or, where it gets that far, the denial).
    assert any(cause in message for cause in ("is owned by uid 0", "permission denied", "operation not permitted")), message
    assert home_view(tree) == before
    chown_tree(tree.volume, USER)  # the root start step's manage_volume_root does it for the volume root
    code, result = run_as_user(params)
    assert code == 0, result
    assert_converged(tree, params, manifest)
    figures(message=message[:100])


def test_home_on_a_read_only_layer(tmp_path, mounts, figures):
    """The image layer holding the home is read-only: copies reach the volume, the sources cannot
    go.  The run fails naming the cause; once the home is writable, the rerun drops the sources
    (identical copies are in the volume) and links."""
    sandbox = ImageSandbox(str(tmp_path), mounts, image=STATE)
    tree = sandbox.tree
    params, manifest, before = tree.params(*LINKS), tree.manifest(), home_view(tree)
    mounts.bind(tree.home, tree.home, recursive=True)
    mounts.remount(tree.home, "bind,ro")

    message = fails_naming("read-only filesystem", lambda: run_engine(params))

    assert home_view(tree) == before
    mounts.umount(tree.home)
    result = run_engine(params)
    assert_converged(tree, params, manifest)
    figures(message=message[:100], rerun_actions=[record["actions"] for record in result["links"]])
