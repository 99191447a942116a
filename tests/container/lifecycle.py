# SPDX-License-Identifier: GPL-3.0-or-later
"""What the real-engine tests do to a container: the two volume layouts, the rendered flavours'
commands, and the agent CLIs' turns against the fake model API in the container's network
namespace."""

from __future__ import annotations

import concurrent.futures
import json
import os
import typing as t
from dataclasses import dataclass

from agents import AGENTS, Agent
from fake_model_api import FakeModelAPI
from podman_engine import Container, Podman

HOME = "/home/agor"
VOLUME = f"{HOME}/.agor"
# Agor runs the agents in worktrees kept in its volume: the same real path after every restart.
WORKTREE = f"{VOLUME}/worktrees/demo"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
API_PORT = 8761  # the first agent's fake model API; the others follow
READY = "agor daemon ready"  # printed by the Agor-like image's daemon once its entrypoint has run
# What the suite measured (image sizes, build and start seconds), printed at the end of the session.
MEASURED: t.Dict[str, t.Any] = {}


@dataclass(frozen=True)
class Flavour:
    """A rendered flavour: how a user runs its start step and audit by hand inside the container."""

    name: str
    start: t.Tuple[str, ...]
    audit: t.Tuple[str, ...]
    check_flag: str = "--check"


ANSIBLE_BIN = "/opt/agor-persistence/bin"
ANSIBLE_VARS = ("-e", "@/etc/agor-persistence/vars.yml")
ENGINE_PARAMS = ("--params", "/etc/agor-persistence/params.json")
FLAVOURS = {
    "ansible": Flavour("ansible", start=(f"{ANSIBLE_BIN}/ansible-playbook", "agor.persistence.start", *ANSIBLE_VARS),
                       audit=(f"{ANSIBLE_BIN}/ansible-playbook", "agor.persistence.audit", *ANSIBLE_VARS)),
    "engine": Flavour("engine", start=("agor-persistence", "start", *ENGINE_PARAMS),
                      audit=("agor-persistence", "audit", *ENGINE_PARAMS)),
}


@dataclass(frozen=True)
class Layout:
    """Where the persistent volume goes: Railway's (one volume at ~/.agor, mounted root-owned: a host
    directory owned by root) or docker-compose's (a named volume for the whole home)."""

    name: str

    def mounts(self, volume: str) -> t.List[str]:
        if self.name == "railway":
            return [f"{volume}:{VOLUME}"]
        return [f"{volume}:{HOME}"]

    def new_volume(self, podman: Podman, host_dir: str, name: str) -> str:
        if self.name == "railway":
            os.makedirs(host_dir, mode=0o755)
            assert os.stat(host_dir).st_uid == 0
            return host_dir
        return podman.volume(name)


LAYOUTS = {name: Layout(name) for name in ("railway", "compose")}


def start(podman: Podman, image: str, name: str, mounts: t.Sequence[str]) -> Container:
    """Run ``image`` with its own entrypoint and command; return once the Agor daemon is up."""
    container = podman.run(image, name, mounts=mounts)
    container.wait_for_log(READY)
    return container


def restart(container: Container) -> None:
    seen = container.logs().count(READY)
    container.restart()
    container.wait_for_log(READY, occurrences=seen + 1)


@dataclass
class Turn:
    agent: str
    returncode: int
    stdout: str
    stderr: str
    context_seen: bool  # a model request of this turn carried the first turn's user text
    session: str = ""


def marker(agent: Agent) -> str:
    """The first turn's user text for ``agent``: unique, so the resumed request can be searched for it."""
    return f"Remember the code word lantern-{agent.name}-7319."


def run_turn(container: Container, agent: Agent, argv: t.Sequence[str], port: int) -> Turn:
    """One CLI command as agor in the worktree, against a fake model API of its own on ``port`` in the
    container's network namespace (its configuration written first)."""
    url = f"http://127.0.0.1:{port}"
    for rel, content in agent.files(url).items():
        container.exec(["sh", "-c", 'mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"', "sh", f"{HOME}/{rel}", content],
                       user="agor")
    with FakeModelAPI(port, netns=container.netns) as api:
        proc = container.exec(["timeout", "180", *argv], user="agor", workdir=WORKTREE, check=False, timeout=240,
                              env={"HOME": HOME, "PATH": PATH, "NO_COLOR": "1", **agent.env(url)})
        seen = any(marker(agent) in request.body for request in api.requests if request.method == "POST")
    return Turn(agent.name, proc.returncode, proc.stdout, proc.stderr, seen)


def each_agent(container: Container, argv: t.Callable[[Agent], t.Sequence[str]]) -> t.Dict[str, Turn]:
    """``argv(agent)`` for the five CLIs at once (each mostly waits on its own start-up and files)."""
    with concurrent.futures.ThreadPoolExecutor(len(AGENTS)) as pool:
        futures = {agent.name: pool.submit(run_turn, container, agent, argv(agent), API_PORT + index)
                   for index, agent in enumerate(AGENTS)}
        return {name: future.result() for name, future in futures.items()}


def first_turns(container: Container) -> t.Dict[str, Turn]:
    """Each CLI's first turn; each must complete against the fake API, and its session id is kept."""
    container.exec(["mkdir", "-p", WORKTREE], user="agor")
    turns = each_agent(container, lambda agent: agent.argv(marker(agent)))
    for agent in AGENTS:
        turn = turns[agent.name]
        assert turn.returncode == 0 and turn.context_seen, f"{agent.name}: first turn failed:\n{turn.stdout[-2000:]}\n{turn.stderr[-2000:]}"
        turn.session = agent.session_id(turn.stdout)
    return turns


def resumes(container: Container, sessions: t.Mapping[str, str]) -> t.Dict[str, Turn]:
    """Each CLI resumes its session with a new question; ``context_seen`` when the request the fake API
    got carried the first turn's user text."""
    return each_agent(container, lambda agent: agent.resume_argv(sessions[agent.name], "Which code word?"))


def claude_user_id(container: Container) -> t.Optional[str]:
    proc = container.exec(["cat", f"{HOME}/.claude.json"], user="agor", check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout).get("userID")


def daemon_user(container: Container) -> str:
    """The user the image's own daemon (the Agor-like entrypoint's last step) runs as."""
    rows = container.podman("top", container.name, "user", "args").stdout.splitlines()[1:]
    users = {row.split()[0] for row in rows if "agor-daemon.js" in row}
    assert len(users) == 1, f"the Agor daemon is not running in {container.name}: {rows}"
    return users.pop()
