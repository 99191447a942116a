# SPDX-License-Identifier: GPL-3.0-or-later
"""The container lifecycle end to end, in the simulated container engine (tests/support/container.py).

The image is built as the rendered Dockerfile (ansible flavour, start through ansible-pull) builds
it: an earlier step bakes config into the home, the rendered entrypoint and vars file are copied in,
then its ``RUN .../ansible-playbook agor.persistence.build`` runs with no volume.  The image holds
ansible-core in /opt/agor-persistence and this collection in /usr/share/ansible/collections (here:
bind mounts of this checkout's virtualenv and collection tree).  Each container is a new overlay of
the image with a throwaway upper layer, the volume is a host directory bind-mounted at
/home/agor/.agor (empty and root-owned on first use, as on Railway), and a restart discards
everything but the volume.  The start step runs as root, then the agents run as agor.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import subprocess
import typing as t

import pytest

from agent_tree import read, snapshot
from container import PATH, Engine

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS_ROOT = os.environ["ANSIBLE_COLLECTIONS_PATH"]  # set by tests/conftest.py

HOME = "/home/agor"
VOLUME = f"{HOME}/.agor"
SEED_STORE = "/usr/local/share/agor-persistence/seed"
WORKTREE = f"{VOLUME}/worktrees/demo"  # where Agor runs the agent: the same real path after every restart
PULL_REPO = "/srv/agor-persistence"  # where the containers find the git repository ansible-pull clones
CLAUDE_PREFIX = "/opt/claude-code"  # where the containers find the npm install of Claude Code
CONTEXT = "/build-context"  # where the image build finds the rendered files
VENV = "/opt/agor-persistence"  # where the rendered Dockerfile installs ansible-core
ENTRYPOINT = "/usr/local/bin/agor-persistence-entrypoint"

# The commands a user runs in the container, as root (the Dockerfile does not put the venv on PATH).
ENV = {"PATH": f"{VENV}/bin:{PATH}"}
START = ["ansible-playbook", "agor.persistence.start"]
PULL_START = ["ansible-pull", "-U", f"file://{PULL_REPO}", "playbooks/start.yml"]
AUDIT = ["ansible-playbook", "agor.persistence.audit"]

BAKED_SETTINGS = '{"theme": "dark"}\n'

CLAUDE_CODE = "@anthropic-ai/claude-code"
CLAUDE_CACHE = os.path.join(REPO, ".cache", "claude-code")
NOT_FOUND = "No conversation found"


# -- Fixtures: the engine, the image, the tools the image holds ----------------------------------


def working_tree_repository(dest: str) -> str:
    """A git clone of this repository whose HEAD also holds the working tree's uncommitted changes,
    so that ansible-pull runs the playbooks under test."""
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", REPO, dest], check=True)
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True, text=True).stdout
    for rel in filter(None, set(listed.split("\0"))):
        source, copy = os.path.join(REPO, rel), os.path.join(dest, rel)
        if os.path.lexists(copy) and not os.path.lexists(source):
            os.remove(copy)
        elif os.path.lexists(source) and not os.path.isdir(source):
            os.makedirs(os.path.dirname(copy), exist_ok=True)
            shutil.copy2(source, copy, follow_symlinks=False)
    git = ["git", "-C", dest, "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "--quiet", "--allow-empty", "-m", "working tree under test"], check=True)
    subprocess.run(git + ["checkout", "--quiet", "-B", "main"], check=True)  # the rendered entrypoint checks out main
    return dest


def render(dest: str) -> str:
    """The ansible flavour's Dockerfile snippet, entrypoint and vars file, starting through ansible-pull."""
    result = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "agor.persistence.render",
         "-e", f"agor_persistence_render_dir={dest}", "-e", f"agor_persistence_pull_url=file://{PULL_REPO}"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return dest


@pytest.fixture(scope="module")
def engine(agor_user, tmp_path_factory):
    os.makedirs(CLAUDE_CACHE, exist_ok=True)
    shared = {
        REPO: REPO,  # the virtualenv's interpreter, and the collection the tree below links to
        VENV: os.path.join(REPO, ".venv"),
        "/usr/share/ansible/collections": COLLECTIONS_ROOT,
        PULL_REPO: working_tree_repository(str(tmp_path_factory.mktemp("pull") / "agor-persistence")),
        CONTEXT: render(str(tmp_path_factory.mktemp("context"))),
        CLAUDE_PREFIX: CLAUDE_CACHE,
    }
    with Engine(shared=shared) as started:
        yield started


def bake(engine: Engine, settings: str):
    """The Dockerfile's steps before ours: the agent user's home, with Claude Code settings baked in."""
    script = 'mkdir -p "$1/.claude" && printf %s "$2" > "$1/.claude/settings.json" && chown -R agor:agor "$1"'
    return engine.build(["sh", "-c", script, "sh", HOME, settings])


@pytest.fixture(scope="module")
def base_image(engine):
    """The image without our build step: the seed's layout is lost at every restart."""
    return bake(engine, BAKED_SETTINGS)


def build(engine: Engine, base):
    """The rendered Dockerfile's steps: COPY the vars file and the entrypoint, then its RUN of the build step."""
    with open(os.path.join(engine.shared[CONTEXT], "Dockerfile.agor-persistence"), encoding="utf-8") as dockerfile:
        runs = [line[len("RUN "):].strip() for line in dockerfile if line.startswith("RUN ") and "agor.persistence.build" in line]
    assert len(runs) == 1, "the rendered Dockerfile runs the build step in one RUN line"
    copied = engine.build(["sh", "-c", f"install -D -m 0644 {CONTEXT}/agor-persistence-vars.yml /etc/agor-persistence/vars.yml"
                                       f" && install -D -m 0755 {CONTEXT}/agor-persistence-entrypoint {ENTRYPOINT}"], base=base)
    return engine.build(["sh", "-c", runs[0]], base=copied)


@pytest.fixture(scope="module")
def image(engine, base_image):
    return build(engine, base_image)


@pytest.fixture
def volume(tmp_path):
    """A new, empty volume, owned by root as Railway mounts it."""
    path = tmp_path / "volume"
    path.mkdir(mode=0o755)
    return str(path)


@pytest.fixture(scope="module")
def claude() -> str:
    """The real Claude Code CLI from npm (cached in .cache/claude-code), as the containers see it."""
    binary = _native_claude()
    if binary is None:
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed, so the real Claude Code CLI cannot be installed")
        result = subprocess.run([npm, "install", "--prefix", CLAUDE_CACHE, "--no-audit", "--no-fund", CLAUDE_CODE],
                                capture_output=True, text=True, timeout=900, check=False)
        output = result.stdout + result.stderr
        if result.returncode and any(code in output for code in ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET")):
            pytest.skip(f"npm cannot reach the registry to install {CLAUDE_CODE}: {output.strip().splitlines()[-1]}")
        assert result.returncode == 0, output
        binary = _native_claude()
        assert binary is not None, f"npm installed {CLAUDE_CODE} but no executable claude for this platform:\n{output}"
    return os.path.join(CLAUDE_PREFIX, os.path.relpath(binary, CLAUDE_CACHE))


def _native_claude() -> t.Optional[str]:
    """The installed claude executable: bin/claude.exe once npm's postinstall replaced the stub, else the
    platform package's binary."""
    modules = os.path.join(CLAUDE_CACHE, "node_modules", "@anthropic-ai")
    for candidate in [os.path.join(modules, "claude-code", "bin", "claude.exe"), *sorted(glob.glob(os.path.join(modules, "claude-code-*", "claude")))]:
        try:
            with open(candidate, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return candidate
        except OSError:
            continue
    return None


# -- Helpers -------------------------------------------------------------------------------------


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{shlex.join(result.args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def cat(container, path: str) -> str:
    """A file as the agent user reads it through the home (following the links, as the CLIs do)."""
    return ok(container.exec(["cat", path], user="agor")).stdout


def put(container, path: str, content: str) -> None:
    """Write a file as the agent user, through the home."""
    ok(container.exec(["sh", "-c", 'mkdir -p "$(dirname "$1")" && printf %s "$2" > "$1"', "sh", path, content], user="agor"))


def claude_run(container, claude: str, *args: str, seconds: int) -> subprocess.CompletedProcess:
    """Claude Code as Agor runs it: as agor, in the worktree, with an API key but no network."""
    return container.exec(["timeout", str(seconds), claude, "-p", *args], user="agor", cwd=WORKTREE,
                          env={"ANTHROPIC_API_KEY": "x"}, timeout=seconds + 60)


def prompts(transcript: str) -> t.List[str]:
    """The user prompts a Claude Code transcript (JSON lines) holds."""
    found = []
    for line in read(transcript).splitlines():
        entry = json.loads(line)
        if entry.get("type") == "user" and isinstance(entry.get("message", {}).get("content"), str):
            found.append(entry["message"]["content"])
    return found


# -- The lifecycle -------------------------------------------------------------------------------


def test_build_links_the_state_paths_and_keeps_baked_config_in_the_seed_store(engine, image):
    layer = engine.path(image.layers[-1])
    for rel in (".claude", ".claude.json", ".codex", ".gemini", ".local/share/opencode", ".config/opencode", ".copilot"):
        assert os.readlink(f"{layer}{HOME}/{rel}") == f"{VOLUME}/{rel}", rel
    assert read(f"{layer}{SEED_STORE}/.claude/settings.json") == BAKED_SETTINGS
    assert not os.path.lexists(f"{layer}{VOLUME}"), "the build wrote below the volume's mount path, which the mount hides"


def test_claude_code_conversation_resumes_after_a_restart(engine, image, base_image, claude, volume, agor_user):
    """The seed's Testing section with the real CLI: a conversation, a restart, then --resume."""
    container = engine.run(image, volumes={VOLUME: volume})
    # First boot: the rendered entrypoint runs the start step through ansible-pull as root, then the
    # container command as agor: Agor's daemon sending a first message to Claude Code in a worktree.
    command = f'mkdir -p {WORKTREE} && cd {WORKTREE} && exec timeout 20 {claude} -p hello'
    first = container.exec([ENTRYPOINT, "sh", "-c", command], env={"ANTHROPIC_API_KEY": "x"})
    assert os.stat(volume).st_uid == agor_user.pw_uid, "the root-owned volume was handed to the agents' user"
    transcripts = glob.glob(f"{volume}/.claude/projects/*/*.jsonl")
    assert len(transcripts) == 1, f"Claude Code wrote no transcript into the volume:\n{first.stdout}\n{first.stderr}"
    transcript, session = transcripts[0], os.path.basename(transcripts[0])[: -len(".jsonl")]
    assert os.stat(transcript).st_uid == agor_user.pw_uid, "the entrypoint dropped to agor before running the command"
    assert prompts(transcript) == ["hello"]
    account = read(f"{volume}/.claude.json")
    assert json.loads(account).get("userID"), "Claude Code wrote ~/.claude.json into the volume"
    codex = f"{HOME}/.codex/sessions/2026/01/15/rollout-2026-01-15T10-00-00-{session}.jsonl"
    gemini = f"{HOME}/.gemini/tmp/0f1e2d/chats/session-2026-01-15T10-00-{session[:8]}.json"
    put(container, codex, '{"type":"session_meta"}\n')
    put(container, gemini, '{"messages": []}\n')

    container.restart()
    ok(container.exec(PULL_START, env=ENV))  # the start step through ansible-pull, by hand this time
    assert cat(container, f"{HOME}/.claude.json") == account
    assert cat(container, codex) == '{"type":"session_meta"}\n'
    assert cat(container, gemini) == '{"messages": []}\n'

    # Without network a found session waits on the API until the timeout (exit 124); what proves it
    # was found is the prompt added to the same transcript.
    resumed = claude_run(container, claude, "--resume", session, "hi", seconds=15)
    assert NOT_FOUND not in resumed.stdout + resumed.stderr
    assert prompts(transcript) == ["hello", "hi"], f"the conversation did not go on:\n{resumed.stdout}\n{resumed.stderr}"
    container.stop()

    # Control: the same volume in a container whose home keeps the state in the throwaway layer.
    lost = engine.run(base_image, volumes={VOLUME: volume})
    result = claude_run(lost, claude, "--resume", session, "hi", seconds=15)
    assert f"{NOT_FOUND} with session ID: {session}" in result.stdout + result.stderr
    lost.stop()


def test_baked_config_seeds_an_empty_volume_and_never_overwrites_it(engine, image, volume):
    container = engine.run(image, volumes={VOLUME: volume})
    ok(container.exec(START, env=ENV))
    assert cat(container, f"{HOME}/.claude/settings.json") == BAKED_SETTINGS, "the mount hid it; start seeded it"
    put(container, f"{HOME}/.claude/settings.json", '{"theme": "light"}\n')  # the user's own change

    container.restart()
    ok(container.exec(START, env=ENV))
    assert cat(container, f"{HOME}/.claude/settings.json") == '{"theme": "light"}\n'
    container.stop()

    newer = build(engine, bake(engine, '{"theme": "dark", "newer": true}\n'))
    redeployed = engine.run(newer, volumes={VOLUME: volume})
    ok(redeployed.exec(START, env=ENV))
    assert cat(redeployed, f"{HOME}/.claude/settings.json") == '{"theme": "light"}\n', "the user's change wins over a newer image"
    redeployed.stop()


def test_drifted_link_is_found_by_the_audit_and_repaired_by_the_next_start(engine, image, volume):
    container = engine.run(image, volumes={VOLUME: volume})
    ok(container.exec(START, env=ENV))
    put(container, f"{HOME}/.codex/sessions/2026/01/15/rollout-1.jsonl", "earlier session\n")
    clean = ok(container.exec(AUDIT, env=ENV))
    assert "0 of 1 host(s) drifted" in clean.stdout

    # Something in the running container replaces the link by a real directory with state in it.
    ok(container.exec(["sh", "-c", 'rm "$1" && mkdir "$1" && echo "{}" > "$1/auth.json"', "sh", f"{HOME}/.codex"], user="agor"))
    home, before = container.path(HOME), snapshot(volume)
    home_before = snapshot(home)
    drifted = container.exec(AUDIT + ["-e", "agor_persistence_audit_report=/tmp/audit.json"], env=ENV)
    assert drifted.returncode == 2, drifted.stdout
    report = json.loads(read(container.path("/tmp/audit.json")))
    assert [line.split(": ")[0] for line in report["hosts"]["localhost"]] == [f"{HOME}/.codex"]
    assert f'"localhost: {HOME}/.codex: is directory' in drifted.stdout
    assert "1 of 1 host(s) drifted" in drifted.stdout
    assert (snapshot(volume), snapshot(home)) == (before, home_before), "the audit changed something"

    ok(container.exec(START, env=ENV))  # the next start, here in the running container
    assert os.readlink(container.path(f"{HOME}/.codex")) == f"{VOLUME}/.codex"
    assert read(f"{volume}/.codex/auth.json") == "{}\n", "migrated into the volume, not lost"
    assert read(f"{volume}/.codex/sessions/2026/01/15/rollout-1.jsonl") == "earlier session\n"
    ok(container.exec(AUDIT, env=ENV))

    container.restart()
    ok(container.exec(START, env=ENV))
    assert cat(container, f"{HOME}/.codex/auth.json") == "{}\n"
    container.stop()


def test_start_refuses_to_run_without_a_mounted_volume(engine, image):
    container = engine.run(image)  # the volume was forgotten
    home, seed = container.path(HOME), container.path(SEED_STORE)
    before = (snapshot(home), snapshot(seed))
    result = container.exec(START, env=ENV)
    assert result.returncode != 0
    assert "persistence would be lost" in result.stdout + result.stderr
    assert (snapshot(home), snapshot(seed)) == before, "nothing may change without the volume"

    booted = container.exec([ENTRYPOINT, "touch", "/tmp/agents-started"])
    assert booted.returncode != 0 and "persistence would be lost" in booted.stdout + booted.stderr
    assert not os.path.lexists(container.path("/tmp/agents-started")), "the entrypoint must not start the agents"
    assert (snapshot(home), snapshot(seed)) == before
    container.stop()
