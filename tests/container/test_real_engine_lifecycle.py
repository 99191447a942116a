# SPDX-License-Identifier: GPL-3.0-or-later
"""Restart and redeploy on a real engine: every agent CLI resumes its conversation with its context.

For each rendered flavour and both volume layouts, the user's image (the Agor-like image plus the
rendered snippet) runs with its own entrypoint; each of the five CLIs completes a first turn as
agor against the fake model API; then after ``podman restart``, and again after a redeploy (the
image rebuilt at the next release, the container removed, a new one on the same volume), each CLI
resumes its session and the request the fake API receives carries the first turn's user text.
``~/.claude.json`` keeps its ``userID`` throughout.

The control is the same image without the snippet, on Railway's layout: its conversations are lost
at the redeploy. (``podman restart`` keeps a container's own writable layer, so there the control
still resumes: Railway's restart is a new container, which is what the redeploy step does. With
docker-compose's layout the whole home is in the volume, so the control would keep everything.)
"""

from __future__ import annotations

import statistics
import time
import typing as t

import pytest

from lifecycle import LAYOUTS, MEASURED, FLAVOURS, Turn, claude_user_id, daemon_user, first_turns, restart, resumes, start
from podman_engine import Container

pytestmark = [pytest.mark.container, pytest.mark.slow]


def not_resumed(turns: t.Mapping[str, Turn]) -> t.List[str]:
    return [f"{name} (exit {turn.returncode}): {(turn.stdout + turn.stderr).strip()[-600:]}"
            for name, turn in turns.items() if turn.returncode != 0 or not turn.context_seen]


def image_entrypoint_runs(container: Container) -> None:
    """The image's own entrypoint ran after the start step, as agor, and its daemon stays up."""
    assert "agor entrypoint: running as agor with HOME=/home/agor" in container.logs()
    assert daemon_user(container) == "agor"
    assert container.running


def measure_start_step(container: Container, flavour: str) -> None:
    """The start step by hand in the running container (links in place), against ``podman exec true``."""
    def seconds(argv: t.Sequence[str]) -> float:
        started = time.monotonic()
        container.exec(argv)
        return time.monotonic() - started

    def median_seconds(argv: t.Sequence[str]) -> float:
        return round(statistics.median([seconds(argv), seconds(argv), seconds(argv)]), 3)

    MEASURED[f"start step in the container, {flavour}"] = {
        "podman exec true (s)": median_seconds(["true"]),
        "podman exec start step (s)": median_seconds(FLAVOURS[flavour].start),
    }


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_agent_resumes_after_restart_and_redeploy(podman, image_set, flavour, layout, tmp_path):
    layout = LAYOUTS[layout]
    volume = layout.new_volume(podman, str(tmp_path / "volume"), f"agor-home-{flavour}")
    name = f"agor-{flavour}-{layout.name}"
    container = start(podman, image_set.user(flavour, release=1), name, layout.mounts(volume))
    image_entrypoint_runs(container)
    sessions = {agent: turn.session for agent, turn in first_turns(container).items()}
    user_id = claude_user_id(container)
    assert user_id

    restart(container)
    image_entrypoint_runs(container)
    assert not not_resumed(resumes(container, sessions)), "after restart"
    assert claude_user_id(container) == user_id
    if layout.name == "railway":
        measure_start_step(container, flavour)
    container.remove()

    redeployed = start(podman, image_set.user(flavour, release=2), f"{name}-redeployed", layout.mounts(volume))
    assert redeployed.exec(["cat", "/etc/agor-release"]).stdout == "release 2\n"
    image_entrypoint_runs(redeployed)
    failed = not_resumed(resumes(redeployed, sessions))
    assert not failed, "after redeploy:\n" + "\n".join(failed)
    assert claude_user_id(redeployed) == user_id
    redeployed.remove()


def test_control_without_the_snippet_loses_every_conversation(podman, image_set, tmp_path):
    layout = LAYOUTS["railway"]
    volume = layout.new_volume(podman, str(tmp_path / "volume"), "")
    container = start(podman, image_set.user(None, release=1), "agor-control", layout.mounts(volume))
    image_entrypoint_runs(container)
    sessions = {agent: turn.session for agent, turn in first_turns(container).items()}
    user_id = claude_user_id(container)
    assert user_id

    restart(container)  # the container's own layer survives a podman restart
    assert not not_resumed(resumes(container, sessions))
    container.remove()

    redeployed = start(podman, image_set.user(None, release=2), "agor-control-redeployed", layout.mounts(volume))
    turns = resumes(redeployed, sessions)
    assert len(not_resumed(turns)) == len(turns) and not any(turn.context_seen for turn in turns.values()), turns
    assert claude_user_id(redeployed) != user_id
    redeployed.remove()
