# SPDX-License-Identifier: GPL-3.0-or-later
"""How to drive each of the five agent CLIs through one turn and a resumed turn against the fake
model API (field notes, "Driving the real agent CLIs offline").

Each agent's configuration is written before every command: a conversation then resumes only if
the CLI's own session state survived, which is what the tests check.
"""

from __future__ import annotations

import json
import typing as t
from dataclasses import dataclass, field

API_KEY = "fake-key"


def _json_value(stdout: str, key: str) -> str:
    """``key`` from the one JSON document, or from the first JSON line holding it (streamed events)."""
    try:
        documents = [json.loads(stdout)]
    except ValueError:
        documents = []
        for line in stdout.splitlines():
            try:
                documents.append(json.loads(line))
            except ValueError:
                continue
    for document in documents:
        if isinstance(document, dict) and document.get(key):
            return str(document[key])
    raise ValueError(f"no {key!r} in the CLI's output:\n{stdout[-2000:]}")


@dataclass(frozen=True)
class Agent:
    name: str
    argv: t.Callable[[str], t.List[str]]  # first turn, for a prompt
    resume_argv: t.Callable[[str, str], t.List[str]]  # for a session id and a prompt
    session_key: str  # the session id's key in the CLI's JSON output
    env: t.Callable[[str], t.Dict[str, str]] = lambda url: {}  # noqa: E731 (for the fake API's base URL)
    files: t.Callable[[str], t.Dict[str, str]] = lambda url: {}  # noqa: E731 (home-relative path: content)
    state: t.Tuple[str, ...] = field(default=())  # home-relative paths holding its conversations

    def session_id(self, stdout: str) -> str:
        return _json_value(stdout, self.session_key)


def _codex_config(url: str) -> str:
    return "\n".join([
        'model = "fake-model"',
        'model_provider = "fake"',
        "[model_providers.fake]",
        'name = "fake"',
        f'base_url = "{url}/v1"',
        'env_key = "FAKE_API_KEY"',
        'wire_api = "responses"',
        "request_max_retries = 0",
        "stream_max_retries = 0",
        "[features]",
        "plugins = false",
        "remote_plugin = false",
        "[analytics]",
        "enabled = false",
        "",
    ])


def _opencode_config(url: str) -> str:
    return json.dumps({
        "$schema": "https://opencode.ai/config.json",
        "autoupdate": False,
        "share": "disabled",
        "model": "fake/fake-model",
        "provider": {"fake": {"npm": "@ai-sdk/openai-compatible", "name": "fake",
                              "options": {"baseURL": f"{url}/v1", "apiKey": API_KEY},
                              "models": {"fake-model": {"name": "fake-model"}}}},
    })


AGENTS: t.Tuple[Agent, ...] = (
    Agent(
        name="claude",
        argv=lambda prompt: ["claude", "-p", prompt, "--output-format", "json"],
        resume_argv=lambda sid, prompt: ["claude", "-p", "--resume", sid, prompt, "--output-format", "json"],
        session_key="session_id",
        env=lambda url: {"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": API_KEY,
                         "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"},
        state=(".claude", ".claude.json"),
    ),
    Agent(
        name="codex",
        argv=lambda prompt: ["codex", "exec", "--skip-git-repo-check", "--json", prompt],
        resume_argv=lambda sid, prompt: ["codex", "exec", "--skip-git-repo-check", "--json", "resume", sid, prompt],
        session_key="thread_id",
        env=lambda url: {"FAKE_API_KEY": API_KEY},
        files=lambda url: {".codex/config.toml": _codex_config(url)},
        state=(".codex",),
    ),
    Agent(
        name="gemini",
        argv=lambda prompt: ["gemini", "-p", prompt, "-o", "json"],
        resume_argv=lambda sid, prompt: ["gemini", "--resume", sid, "-p", prompt, "-o", "json"],
        session_key="session_id",
        env=lambda url: {"GOOGLE_GEMINI_BASE_URL": url, "GEMINI_API_KEY": API_KEY, "GEMINI_CLI_TRUST_WORKSPACE": "true"},
        files=lambda url: {".gemini/settings.json": json.dumps({"security": {"auth": {"selectedType": "gemini-api-key"}}})},
        state=(".gemini",),
    ),
    Agent(
        name="opencode",
        argv=lambda prompt: ["opencode", "run", "--format", "json", prompt],
        resume_argv=lambda sid, prompt: ["opencode", "run", "--format", "json", "--session", sid, prompt],
        session_key="sessionID",
        env=lambda url: {"OPENCODE_DISABLE_AUTOUPDATE": "1", "OPENCODE_DISABLE_MODELS_FETCH": "1",
                         "OPENCODE_DISABLE_DEFAULT_PLUGINS": "1"},
        # With a package.json and node_modules/ in place it does not run npm install there.
        files=lambda url: {".config/opencode/opencode.json": _opencode_config(url),
                           ".config/opencode/package.json": "{}", ".config/opencode/node_modules/.keep": ""},
        state=(".local/share/opencode",),
    ),
    Agent(
        name="copilot",
        argv=lambda prompt: ["copilot", "-p", prompt, "--output-format", "json", "--allow-all-tools", "--no-auto-update"],
        resume_argv=lambda sid, prompt: ["copilot", "-p", prompt, "--output-format", "json", "--allow-all-tools",
                                         "--no-auto-update", "--resume", sid],
        session_key="sessionId",
        env=lambda url: {"COPILOT_OFFLINE": "true", "COPILOT_PROVIDER_BASE_URL": f"{url}/v1", "COPILOT_PROVIDER_TYPE": "openai",
                         "COPILOT_PROVIDER_API_KEY": API_KEY, "COPILOT_MODEL": "fake-model", "COPILOT_AUTO_UPDATE": "false"},
        state=(".copilot",),
    ),
)
