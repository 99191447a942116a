# SPDX-License-Identifier: GPL-3.0-or-later
"""Crash injection: SIGKILL the engine during a cross-filesystem migration, then rerun.

The home is an overlay over an image layer and the volume a tmpfs inside it (mounts.ImageSandbox),
so every move is a copy into the volume's staging area, a sync, a rename into place, a sync, then
the removal of the copied sources.  Two sweeps:

- over time: a first, uninterrupted run of a large migration measures its duration; then the
  engine is killed at KILL_TIMES moments spread evenly over that duration (a run that ends before
  its moment, faster than the first, shortens the duration and the moment is tried again);
- over every step boundary: on a smaller tree holding every kind of step (merge, duplicate, conflict
  backups, a link planted in the volume, a wrong-kind entry, nested targets, a file target, new
  parents in the home and in the volume), the engine is run once to count the calls that change the
  filesystem, then killed just before each of them in turn (fault_injection.run_with_faults).

After every kill: no file content is missing from home and volume (a content may be there twice,
never zero times).  Then check mode predicts the rerun exactly, the rerun succeeds, every original
file is exactly once in the volume (backups included), and a further run has nothing to do.  In the
step sweep the end state after kill + rerun must equal the uninterrupted run's, owners and modes
included.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time

from agent_tree import (
    CLAUDE, CLAUDE_JSON, CODEX, Link, engine_command, engine_env, migration_phase, outline, populate, run_engine,
)
from fault_injection import run_with_faults
from guarantees import killed_before_each_call, assert_converged, assert_nothing_lost, end_state
from mounts import ImageSandbox

OWNER = {"owner": "1001", "group": "1001"}
KILL_TIMES = 24
LARGE_FILES, LARGE_BIG_FILES = 4000, 6


def large_sandbox(base, mounts):
    """A grown Claude Code state (4000 sessions, odd names, links inside, 6 files of 4 MiB) and a
    Codex state in the image; the volume holds settings.json and .claude.json from an earlier
    start, so backups are made too."""
    return ImageSandbox(
        base, mounts,
        image={"home:.claude.json": '{"userID": "image"}', "home:.codex/config.toml": 'model = "o3"',
               "home:.codex/sessions/2026/01/01/rollout-1.jsonl": "{}\n"},
        volume={"vol:.claude/settings.json": '{"model": "sonnet"}', "vol:.claude.json": '{"userID": "volume"}'},
        grow=lambda layer: populate(layer("home:.claude"), files=LARGE_FILES, big=LARGE_BIG_FILES), owner=int(OWNER["owner"]),
    )


def rerun_completes(tree, params, manifest, when):
    """After a kill: check mode predicts the rerun, which completes; then nothing is left to do."""
    predicted = run_engine(params, check_mode=True)
    result = run_engine(params)
    assert outline(predicted) == outline(result), f"{when}: check mode mispredicted the rerun"
    assert_converged(tree, params, manifest)
    again = run_engine(params)
    assert not again["changed"], f"{when}: a third run still changes {outline(again)}"
    return result


def test_sigkill_swept_over_a_large_migration(tmp_path, mounts, figures):
    sandbox = large_sandbox(str(tmp_path), mounts)
    tree = sandbox.tree
    params = tree.params(CLAUDE, CLAUDE_JSON, CODEX, **OWNER)
    manifest = tree.manifest()

    began = time.monotonic()
    proc = subprocess.run(engine_command(params), env=engine_env(), capture_output=True, text=True, timeout=600, check=False)
    duration = time.monotonic() - began
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_converged(tree, params, manifest)

    phases, killed, trials = collections.Counter(), 0, 0
    fractions = [(index + 0.5) / KILL_TIMES for index in range(KILL_TIMES)]
    while fractions and trials < 3 * KILL_TIMES:
        tree, trials = sandbox.reset(), trials + 1
        at = duration * fractions[0]
        began = time.monotonic()
        process = subprocess.Popen(engine_command(params), env=engine_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   start_new_session=True)
        try:
            process.wait(timeout=at)
            duration = time.monotonic() - began  # this run was faster than the first (less load): kill earlier
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the engine and its account's process, as a container's kill
        _out, err = process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), err
        if process.returncode == -signal.SIGKILL:  # else it ended first, even as the signal was sent: again
            killed += 1
            fractions.pop(0)
        phases[migration_phase(tree)] += 1
        when = f"killed at {at:.2f} s of {duration:.2f} s"
        assert_nothing_lost(tree, manifest, when)
        result = rerun_completes(tree, params, manifest, when)
        backed_up = {entry["path"] for record in result["links"] for entry in record["backups"]}
        assert backed_up <= {tree("home:.claude/settings.json"), tree("home:.claude.json")}

    figures(files=sum(manifest.values()), run_s=round(duration, 2), kill_times=KILL_TIMES, killed=killed, trials=trials,
            phases=dict(phases))
    assert killed == KILL_TIMES, f"only {killed} of {KILL_TIMES} runs were still going when killed ({trials} trials)"
    assert len(phases) >= 3, f"the kills did not spread over the run: {dict(phases)}"


# Every kind of step, small enough to kill before each filesystem call in turn.
STEPS_IMAGE = {
    "home:.claude/settings.json": "home settings",                      # conflict: backed up
    "home:.claude/same.json": "same",                                   # identical in the volume: dropped
    "home:.claude/projects/-work/s1.jsonl": "s1",
    "home:.claude/projects/-work/deep/er/s2.jsonl": "s2",               # merged into an existing directory
    "home:.claude/projects/-new/s3.jsonl": "s3",
    "home:.claude/empty-dir/.keep": "",
    "home:.claude/odd name\n✓": "odd",
    "home:.claude/links/relative": Link("../settings.json"),            # links inside stay links
    "home:.claude/links/shadow": Link("/etc/shadow"),
    "home:.claude.json": '{"userID": "home"}',                          # conflicting file target
    "home:.codex": "a file where a directory belongs",                  # wrong kind: backed up
    "home:.gemini/tmp/p/chats/c.json": "chat",                          # the volume holds a planted link there
    "home:.copilot/session-state/a.json": "copilot",                    # target two new parents deep
}
STEPS_VOLUME = {
    "vol:.claude/settings.json": "volume settings",
    "vol:.claude/same.json": "same",
    "vol:.claude/projects/-work/old.jsonl": "old",
    "vol:.claude.json": '{"userID": "volume"}',
    "vol:.gemini": Link("/nonexistent/elsewhere"),
}
STEPS_LINKS = [
    CLAUDE, CLAUDE_JSON, CODEX,
    {"path": "home:.gemini", "target": "vol:.gemini"},
    {"path": "home:.config/opencode", "target": "vol:.config/opencode"},       # a new parent in the home
    {"path": "home:.copilot", "target": "vol:users/agor/.copilot"},
]


def test_sigkill_before_every_filesystem_call(tmp_path, mounts, figures):
    sandbox = ImageSandbox(str(tmp_path), mounts, image=STEPS_IMAGE, volume=STEPS_VOLUME, owner=int(OWNER["owner"]))
    tree = sandbox.tree
    params = tree.params(*STEPS_LINKS, **OWNER)
    manifest = tree.manifest()
    predicted = run_engine(params, check_mode=True)
    code, calls = run_with_faults(params)
    assert code == 0
    reference = end_state(tree)
    expected = tree.manifest()
    assert set(expected) == set(manifest), "the uninterrupted run lost a content"

    started = time.monotonic()
    for _call, tree, when in killed_before_each_call(sandbox, params, calls, manifest):
        rerun_completes(tree, params, expected, when)
        assert end_state(tree) == reference, f"{when}: the rerun's end state differs from an uninterrupted run's"

    steps = sum(len(record["steps"]) for record in predicted["links"])
    figures(plan_steps=steps, kill_points=len(calls), calls=dict(collections.Counter(calls)),
            sweep_s=round(time.monotonic() - started, 1))
