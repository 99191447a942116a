# SPDX-License-Identifier: GPL-3.0-or-later
"""Soak: restart cycles of a container (tests/support/container.py: overlayfs image layers, a
throwaway upper layer per boot, the volume a bind-mounted host directory), the agents' session data
growing at every cycle.

The image is built as in tests/functional/test_lifecycle.py, minus the rendering: a home with Claude
Code settings baked in, then ``ansible-playbook agor.persistence.build``.  Each cycle restarts the
container (everything but the volume is discarded), times the start step (``ansible-playbook
agor.persistence.start`` as root), checks as the agents' user, through the links, every file the
previous cycle wrote, and writes more: a new Claude Code transcript, a line appended to a long
conversation, ~/.claude.json rewritten the way Claude Code does it (a temporary file beside the
link's target, renamed onto it), a Codex rollout.  The volume must hold exactly what was written,
each file once (checked in full at the end), and the start time must stay flat: the last tenth of
the restarts against the first tenth, for the module's own work (timed in the container without
Ansible's constant overhead, medians) and, loosely, for the whole start step (fastest of each tenth:
Ansible's start-up dominates it and swings with the machine's load); both medians are reported.

AGOR_PERSISTENCE_SOAK_CYCLES sets the number of cycles: 25 in the default suite, 500 for the long
soak (``AGOR_PERSISTENCE_SOAK_CYCLES=500 scripts/test tests/reliability/test_soak.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import time

import pytest

from container import PATH, Engine, ensure_user
from rendering import module_params

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOME = "/home/agor"
VOLUME = f"{HOME}/.agor"
VENV = "/opt/agor-persistence"
ENV = {"PATH": f"{VENV}/bin:{PATH}"}
CYCLES = int(os.environ.get("AGOR_PERSISTENCE_SOAK_CYCLES", "25"))
VARIABLES = {
    "agor_persistence_user": "agor", "agor_persistence_group": "agor", "agor_persistence_home": HOME,
    "agor_persistence_volume": VOLUME, "agor_persistence_agents": ["claude", "codex"], "agor_persistence_users": [],
    "agor_persistence_extra_links": [], "agor_persistence_conflict": "backup", "agor_persistence_require_mount": True,
    "agor_persistence_seed_store": "/usr/local/share/agor-persistence/seed", "agor_persistence_manage_volume_root": True,
}
# The module's own work at a start, timed in the container without Ansible's constant overhead:
# what would grow if a start walked the volume.
ENGINE_TIMED = r"""
import json, sys, time
from ansible_collections.agor.persistence.plugins.module_utils._engine import run
began = time.perf_counter()
result = run(json.loads(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - began, "changed": result["changed"]}))
"""
STATE_PATHS = (".claude", ".claude.json", ".codex")

# One cycle of an agent's work, as the agents' user in the container (arguments: the cycle number).
WORK = r"""
set -eu
n=$1
mkdir -p ~/.claude/projects/-work ~/.codex/sessions/2026/01/01
printf '{"cycle": %s, "type": "user"}\n' "$n" > ~/.claude/projects/-work/session-$n.jsonl
printf '{"cycle": %s}\n' "$n" >> ~/.claude/projects/-work/long-conversation.jsonl
printf 'rollout %s\n' "$n" > ~/.codex/sessions/2026/01/01/rollout-$n.jsonl
target=$(readlink ~/.claude.json)
printf '{"numStartups": %s}\n' "$n" > "$target.tmp.$n"
mv "$target.tmp.$n" "$target"
"""


def expected_after(cycle, expected):
    """What WORK writes at ``cycle``, applied to ``expected`` (path below the home -> content)."""
    expected[f".claude/projects/-work/session-{cycle}.jsonl"] = f'{{"cycle": {cycle}, "type": "user"}}\n'
    expected[".claude/projects/-work/long-conversation.jsonl"] = "".join(
        f'{{"cycle": {n}}}\n' for n in range(cycle + 1))
    expected[f".codex/sessions/2026/01/01/rollout-{cycle}.jsonl"] = f"rollout {cycle}\n"
    expected[".claude.json"] = f'{{"numStartups": {cycle}}}\n'


def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def ok(result):
    assert result.returncode == 0, f"{result.args} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def soak_engine():
    if os.geteuid() != 0:
        pytest.skip("the container simulator needs root")
    ensure_user("agor", uid=1001)
    shared = {REPO: REPO, VENV: os.path.join(REPO, ".venv"),
              "/usr/share/ansible/collections": os.environ["ANSIBLE_COLLECTIONS_PATH"]}
    with Engine(shared=shared) as engine:
        yield engine


def test_restart_cycles_lose_nothing_and_start_time_stays_flat(soak_engine, tmp_path, figures):
    engine = soak_engine
    baked = engine.build(["sh", "-c", f'mkdir -p {HOME}/.claude && echo \'{{"theme": "dark"}}\' > {HOME}/.claude/settings.json'
                                      f" && chown -R agor:agor {HOME}"])
    image = engine.build(["ansible-playbook", "agor.persistence.build", "-e", json.dumps(VARIABLES)], base=baked, env=ENV)
    volume = tmp_path / "volume"
    volume.mkdir(mode=0o755)
    container = engine.run(image, volumes={VOLUME: str(volume)})
    expected = {".claude/settings.json": '{"theme": "dark"}\n'}
    start_times, engine_times = [], []
    params = module_params(VARIABLES, "present")
    try:
        for cycle in range(CYCLES):
            if cycle:
                container.restart()
            began = time.monotonic()
            ok(container.exec(["ansible-playbook", "agor.persistence.start", "-e", json.dumps(VARIABLES)], env=ENV))
            start_times.append(time.monotonic() - began)
            timed = json.loads(ok(container.exec([f"{VENV}/bin/python", "-c", ENGINE_TIMED, json.dumps(params)], env=dict(
                ENV, PYTHONPATH="/usr/share/ansible/collections"))).stdout)
            assert not timed["changed"], f"cycle {cycle}: a second start right after the first still changes"
            engine_times.append(timed["seconds"])
            for rel in STATE_PATHS:
                assert os.readlink(container.path(f"{HOME}/{rel}")) == f"{VOLUME}/{rel}", f"cycle {cycle}: {rel}"
            if cycle:  # the previous cycle's work, read back through the links as the agent reads it
                previous = {}
                expected_after(cycle - 1, previous)
                listed = ok(container.exec(["sha256sum", "--", *previous], user="agor")).stdout.splitlines()
                assert {line.split(None, 1)[1]: line.split()[0] for line in listed} == {
                    rel: sha256(text) for rel, text in previous.items()}, f"cycle {cycle}: the last cycle's data"
            ok(container.exec(["sh", "-c", WORK, "sh", str(cycle)], user="agor"))
            expected_after(cycle, expected)
        container.stop()
    finally:
        container.stop()

    found = {}
    for dirpath, dirnames, filenames in os.walk(volume):
        dirnames[:] = [name for name in dirnames if name != ".agent-state-link"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as handle:
                found[os.path.relpath(path, volume)] = handle.read()
    assert found == expected, "the volume holds other than exactly what the agents wrote"
    steady = start_times[1:] or start_times  # the first boot seeds the volume: not a restart
    engine_steady = engine_times[1:] or engine_times
    decile = max(1, len(steady) // 10)
    first, last = (statistics.median(times) for times in (steady[:decile], steady[-decile:]))
    engine_first, engine_last = (statistics.median(times) for times in (engine_steady[:decile], engine_steady[-decile:]))
    figures(cycles=CYCLES, files=len(found),
            start_step_s=f"first decile median {first:.2f}, last decile median {last:.2f}, slowest {max(start_times):.2f}",
            module_ms=f"first decile median {engine_first * 1000:.1f}, last decile median {engine_last * 1000:.1f}")
    # The whole start step is mostly Ansible's constant cost, and swings with the machine's load:
    # checked loosely, on the fastest start of each tenth.  The module's own work is checked tightly.
    fastest_first, fastest_last = min(steady[:decile]), min(steady[-decile:])
    assert fastest_last <= 2 * fastest_first + 1.0, f"the start step grew from {fastest_first:.2f} s to {fastest_last:.2f} s"
    assert engine_last <= max(2 * engine_first, engine_first + 0.05), (
        f"the module's work at a start grew from {engine_first * 1000:.1f} ms to {engine_last * 1000:.1f} ms")
