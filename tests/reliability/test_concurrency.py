# SPDX-License-Identifier: GPL-3.0-or-later
"""4 and 16 runs at once on one container: the entrypoint (ansible-playbook agor.persistence.start),
a scheduled audit (ansible-playbook agor.persistence.audit) and further starts and audits straight
through the engine, some of them with a short lock timeout.  The home is an image layer holding a
grown state, so the first start is still migrating while the others arrive.

Every run must succeed or fail with the clear lock-timeout message and nothing else; exactly one
run changes anything; the end state is the one a single run makes: each file exactly once in the
volume, one backup directory holding each conflicting entry once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from agent_tree import engine_command, engine_env, populate, run_engine
from fault_injection import run_with_faults, start_with_faults
from guarantees import assert_converged
from mounts import ImageSandbox
from rendering import ansible_env, module_params

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

SHORT_LOCK_TIMEOUT = 0.3
AGENTS_UID = 1001  # the agents' account: owns the image's home and the volume, as in a container


def role_variables(tree):
    return {
        "agor_persistence_user": str(AGENTS_UID), "agor_persistence_group": str(AGENTS_UID),
        "agor_persistence_home": tree.home, "agor_persistence_volume": tree.volume,
        "agor_persistence_seed_store": tree.seed_store, "agor_persistence_agents": ["claude", "codex"],
        "agor_persistence_users": [], "agor_persistence_extra_links": [], "agor_persistence_conflict": "backup",
        "agor_persistence_require_mount": True, "agor_persistence_manage_volume_root": True,
    }


def launch(kind, tree, variables, params):
    """One run: ansible-start, ansible-audit, start, short-start (lock_timeout 0.3 s) or audit."""
    if kind.startswith("ansible-"):
        argv = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), f"agor.persistence.{kind[8:]}",
                "-e", json.dumps(variables)]
        env = ansible_env()
    else:
        run_params = dict(params, lock_timeout=SHORT_LOCK_TIMEOUT) if kind == "short-start" else params
        argv, env = engine_command(run_params) + (["--check"] if kind == "audit" else []), engine_env()
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(kind, proc):
    """'changed', 'unchanged', 'drift' (an audit that saw work to do), 'lock timeout', or the failure."""
    out, err = proc.communicate(timeout=600)
    if kind.startswith("ansible-"):
        if "lock_timeout:" in out:
            return "lock timeout"
        if kind == "ansible-audit" and proc.returncode == 2 and "start would" in out and "audit failed" not in out:
            return "drift"
        if proc.returncode != 0:
            return f"{kind} failed ({proc.returncode}): {out[-2000:]} {err[-2000:]}"
        return "changed" if "changed=1" in out else "unchanged"
    if not out.strip():
        return f"{kind} crashed: {err[-2000:]}"
    result = json.loads(out.splitlines()[-1])
    if result.get("failed"):
        return "lock timeout" if result["msg"].startswith("lock_timeout:") else f"{kind} failed: {result['msg']}"
    if kind == "audit":
        return "drift" if result["changed"] else "unchanged"
    return "changed" if result["changed"] else "unchanged"


KINDS = ("start", "audit", "short-start", "audit")


@pytest.mark.parametrize("runs", [4, 16])
def test_simultaneous_starts_and_audits(tmp_path, mounts, figures, runs):
    sandbox = ImageSandbox(
        str(tmp_path), mounts,
        image={"home:.claude.json": '{"userID": "image"}', "home:.codex/config.toml": 'model = "o3"'},
        volume={"vol:.claude/settings.json": '{"model": "sonnet"}', "vol:.claude.json": '{"userID": "volume"}'},
        grow=lambda layer: populate(layer("home:.claude"), files=3000), owner=AGENTS_UID,
    )
    tree = sandbox.tree
    variables = role_variables(tree)
    params = module_params(variables, "present")
    manifest = tree.manifest()

    kinds = ["ansible-start", "ansible-audit"] + [KINDS[index % len(KINDS)] for index in range(runs - 2)]
    began = time.monotonic()
    procs = [(kind, launch(kind, tree, variables, params)) for kind in kinds]
    outcomes = [(kind, outcome(kind, proc)) for kind, proc in procs]
    elapsed = time.monotonic() - began

    unexpected = [(kind, result) for kind, result in outcomes
                  if result not in ("changed", "unchanged", "drift", "lock timeout")
                  or (result == "lock timeout" and kind != "short-start")
                  or (result == "drift" and "audit" not in kind)]
    assert not unexpected, unexpected
    changed = [kind for kind, result in outcomes if result == "changed"]
    assert len(changed) == 1, f"exactly one run migrates, the others find nothing to do: {outcomes}"
    assert_converged(tree, params, manifest)
    backups = os.listdir(os.path.join(tree.meta, "backups"))
    assert len(backups) == 1
    backup = os.path.join(tree.meta, "backups", backups[0])
    assert sorted(os.path.relpath(os.path.join(d, f), backup) for d, _s, fs in os.walk(backup) for f in fs) == sorted(
        os.path.relpath(tree(ref), "/") for ref in ("home:.claude.json", "home:.claude/settings.json"))
    assert os.stat(tree.volume).st_uid == 1001
    tally = {}
    for kind, result in outcomes:
        tally[f"{kind}: {result}"] = tally.get(f"{kind}: {result}", 0) + 1
    figures(runs=runs, seconds=round(elapsed, 1), outcomes=tally)


def test_an_audit_waits_for_a_start_it_would_otherwise_read_half_done(tmp_path, mounts, figures):
    """The start is stopped (SIGSTOP) in the middle of its migration, holding the volume's lock.
    An audit must not plan that half-migrated tree (racing a start, it used to fail with "No such
    file or directory", or report a half-done state): with a short lock timeout it fails with the
    lock timeout, and with the default one it waits, then finds nothing to do."""
    sandbox = ImageSandbox(str(tmp_path), mounts, image={"home:.codex/config.toml": 'model = "o3"'},
                           grow=lambda layer: populate(layer("home:.claude"), files=300), owner=AGENTS_UID)
    tree = sandbox.tree
    params = module_params(role_variables(tree), "present")
    _code, calls = run_with_faults(params)
    tree = sandbox.reset()
    start = start_with_faults(params, stop_before=len(calls) // 2)
    try:
        _wait_until_stopped(start.pid)
        with pytest.raises(AgentStateLinkError, match="^lock_timeout: "):
            run_engine(dict(params, lock_timeout=0.3), check_mode=True)
        audit = subprocess.Popen(engine_command(params) + ["--check"], env=engine_env(), stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        assert audit.poll() is None, "the audit did not wait for the start"
    finally:
        os.killpg(start.pid, signal.SIGCONT)  # the whole group: an account's process too
    assert start.wait()[0] == 0
    out, _err = audit.communicate(timeout=120)
    assert json.loads(out)["changed"] is False, out
    figures(start_stopped_at=f"call {len(calls) // 2} of {len(calls)}")


def _wait_until_stopped(group):
    """Until a process of the start's process group (root's, or the account's it forked) is stopped."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] == "T" and int(fields[2]) == group:
                return
        time.sleep(0.01)
    raise AssertionError("the start never reached the call it was to stop at")
