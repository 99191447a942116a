# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The ``agor-persistence`` command: the engine's front end without Ansible.

Private to the agor.persistence collection.  The role's ``render`` entry point packs this file with
the rest of module_utils into a zipapp (see roles/agor_persistence/files/build_engine_command.py);
it needs nothing but Python's standard library.  Its result is agent_state_link's result.
"""

from __future__ import annotations

import json
import sys
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils._drift import drift_lines
from ansible_collections.agor.persistence.plugins.module_utils._engine import run
from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_DRIFT = 2

# Where the rendered Dockerfile installs the parameters file (the role's agor_persistence_params_path).
DEFAULT_PARAMS = "/etc/agor-persistence/params.json"

# Each subcommand: the module's state, whether it only looks (check mode), and its help line.
SUBCOMMANDS = {
    "build": ("prepared", False, "image build: paths become links, what the image holds there goes to the seed store"),
    "start": ("present", False, "container start, as root: link every path into the volume, migrating what is there"),
    "audit": ("present", True, "check mode: change nothing, print one line per drifted path"),
    "rollback": ("absent", False, "make each linked path a real directory or file again, holding a copy of its target"),
}

COMMANDS_HELP = "\n".join(f"  {name:<9} ({state}) {text}" for name, (state, _audit, text) in SUBCOMMANDS.items())
USAGE = "usage: agor-persistence {build,start,audit,rollback} [--params FILE] [--check] [--diff] [--json FILE]"

HELP = f"""\
{USAGE}

Keep AI coding agents' state paths linked into the persistent volume (the agor.persistence engine).

commands:
{COMMANDS_HELP}

options:
  --params FILE  agent_state_link's parameters as JSON, as the role's render writes them
                 (default {DEFAULT_PARAMS}); the command sets their state
  --check        change nothing, report what would change (audit always does)
  --diff         also print each changed link's before and after
  --json FILE    write agent_state_link's result to FILE (on failure {{"failed": true, "msg": ...}})
  -h, --help     show this help

output:
  stdout  one line per link that changed (with --check: would change), "<path>: <actions>",
          then a summary; audit prints one line per drifted path instead
  stderr  warnings, and the reason of a failure

exit codes:
  {EXIT_OK}  done (audit: nothing drifted)
  {EXIT_ERROR}  error: bad parameters or usage, no volume mounted, a refusal; nothing was lost
  {EXIT_DRIFT}  audit only: at least one path drifted
"""


class UsageError(Exception):
    pass


class Options(t.NamedTuple):
    command: str
    params: str
    check: bool
    diff: bool
    json: t.Optional[str]


def parse(argv: t.Sequence[str]) -> t.Optional[Options]:
    """The command line, or None for --help.  By hand: argparse (with gettext) took a quarter of a start's CPU time."""
    args = list(argv)
    found: t.Dict[str, t.Any] = {"command": None, "params": DEFAULT_PARAMS, "check": False, "diff": False, "json": None}
    while args:
        arg = args.pop(0)
        name, equals, value = arg[2:].partition("=")
        if arg in ("-h", "--help"):
            return None
        if arg in ("--check", "--diff"):
            found[name] = True
        elif name in ("params", "json") and arg.startswith("--"):
            if not equals:
                if not args:
                    raise UsageError(f"{arg} needs a FILE")
                value = args.pop(0)
            found[name] = value
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg}")
        elif found["command"] is not None:
            raise UsageError(f"unexpected argument {arg!r}")
        elif arg not in SUBCOMMANDS:
            raise UsageError(f"unknown command {arg!r} (choose from {', '.join(SUBCOMMANDS)})")
        else:
            found["command"] = arg
    if found["command"] is None:
        raise UsageError(f"give a command: {', '.join(SUBCOMMANDS)}")
    return Options(**found)


def load_params(path: str, state: str) -> t.Dict[str, t.Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            params = json.load(handle)
    except (OSError, ValueError) as exc:
        raise AgentStateLinkError(f"--params: cannot read {path}: {exc}") from exc
    if not isinstance(params, dict):
        raise AgentStateLinkError(f"--params: {path} must hold a JSON object of agent_state_link's parameters")
    if params.get("state", state) != state:
        raise AgentStateLinkError(f"--params: {path} sets state={params['state']!r}; the subcommand sets the state")
    return dict(params, state=state)


def diff_lines(diff: t.Sequence[t.Mapping[str, str]]) -> t.List[str]:
    """The result's diff, as ansible-playbook --diff shows it: per changed link, its before and
    after text line by line in unified style, then one line per entry moved, backed up, dropped or
    created."""
    lines = []
    for entry in diff:
        lines += [f"--- {entry['before_header']}", f"+++ {entry['after_header']}"]
        before, after = entry["before"].splitlines(), entry["after"].splitlines()
        for old, new in zip(before, after):  # the same fields, in the same order
            lines += [f" {new}"] if old == new else [f"-{old}", f"+{new}"]
        lines += entry.get("prepared", "").splitlines()
    return lines


def report_lines(command: str, result: t.Mapping[str, t.Any], volume: str, check_mode: bool) -> t.List[str]:
    """What a run prints: a line per changed (or drifted) link, then a summary."""
    links = result["links"]
    if SUBCOMMANDS[command][1]:
        drift = drift_lines(result)
        return drift + [f"agor-persistence {command}: {len(drift)} drifted path(s), {len(links)} link(s)" if drift
                        else f"agor-persistence {command}: clean, {len(links)} link(s)"]
    lines = [f"{link['path']}: {', '.join(link['actions'])}" for link in links if link["changed"]]
    if result["volume_owner_changed"]:
        lines.append(f"{volume}: set_owner (the volume root)")
    verb = "would change" if check_mode else "changed"
    return lines + [f"agor-persistence {command}: {sum(link['changed'] for link in links)} of {len(links)} link(s) {verb}"]


def main(argv: t.Optional[t.Sequence[str]] = None) -> int:
    """Run the command line (``sys.argv[1:]`` by default); return the exit code."""
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"{USAGE}\nagor-persistence: error: {exc}\n")
        return EXIT_ERROR
    if args is None:
        sys.stdout.write(HELP)
        return EXIT_OK
    state, audit, _help = SUBCOMMANDS[args.command]
    check_mode = audit or args.check
    try:
        params = load_params(args.params, state)
        result = run(params, check_mode=check_mode)
    except AgentStateLinkError as exc:
        return _fail(args, str(exc))
    for warning in result["warnings"]:
        sys.stderr.write(f"agor-persistence {args.command}: warning: {warning}\n")
    lines = report_lines(args.command, result, params["volume"], check_mode)
    if args.diff:
        lines[-1:-1] = diff_lines(result["diff"])
    sys.stdout.write("\n".join(lines) + "\n")
    try:
        _write_json(args.json, result)
    except OSError as exc:
        return _fail(args, f"--json: cannot write {args.json}: {exc}")
    return EXIT_DRIFT if audit and result["changed"] else EXIT_OK


def _fail(args: Options, message: str) -> int:
    sys.stderr.write(f"agor-persistence {args.command}: {message}\n")
    try:
        _write_json(args.json, {"failed": True, "msg": message})
    except OSError:
        pass  # the message above is the failure the caller needs
    return EXIT_ERROR


def _write_json(path: t.Optional[str], data: t.Mapping[str, t.Any]) -> None:
    if path:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
