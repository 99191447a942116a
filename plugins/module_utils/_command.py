# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""The ``agor-persistence`` command: the engine's front end without Ansible.

Private to the agor.persistence collection.  The role's ``render`` entry point packs this file with
the rest of module_utils into a zipapp (see roles/agor_persistence/files/build_engine_command.py);
it needs nothing but Python's standard library.  Its result is agent_state_link's result.
"""

from __future__ import annotations

import argparse
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
    "build": ("prepared", False, "image build: link the paths (dangling until the volume is mounted), keep what "
                                 "the image holds there in the seed store"),
    "start": ("present", False, "container start, as root: link every path into the mounted volume, migrating "
                                "what stands there"),
    "audit": ("present", True, "compare every path with its link, changing nothing; one line per drifted path"),
    "rollback": ("absent", False, "make every linked path a real directory or file again, holding a copy of its "
                                  "target (the volume keeps its copy)"),
}

EPILOG = f"""\
The parameters file holds agent_state_link's parameters as JSON (the role's render writes it);
the subcommand sets their state.

output:
  stdout  one line per link that changed (with --check: would change), "<path>: <actions>",
          then a summary; audit prints one line per drifted path instead; --diff adds each
          changed link's before and after
  stderr  warnings, and the reason of a failure
  --json FILE  writes agent_state_link's result (on failure {{"failed": true, "msg": ...}})

exit codes:
  {EXIT_OK}  done (audit: nothing drifted)
  {EXIT_ERROR}  error: bad parameters or usage, no volume mounted, a refusal; nothing was lost
  {EXIT_DRIFT}  audit only: at least one path drifted
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> t.NoReturn:
        """Usage errors exit 1 like every other error: 2 means drift."""
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    root = _Parser(prog="agor-persistence", description="Keep AI coding agents' state paths linked into the persistent "
                   "volume (the agor.persistence engine).", epilog=EPILOG,
                   formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = root.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    for name, (state, _audit, help_text) in SUBCOMMANDS.items():
        command = commands.add_parser(name, help=help_text, description=f"{help_text} (state={state}).", epilog=EPILOG,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_argument("--params", metavar="FILE", default=DEFAULT_PARAMS,
                             help=f"agent_state_link's parameters as JSON (default {DEFAULT_PARAMS})")
        command.add_argument("--check", action="store_true", help="change nothing, report what would change")
        command.add_argument("--diff", action="store_true", help="print each changed link's before and after")
        command.add_argument("--json", metavar="FILE", help="write agent_state_link's result to FILE")
    return root


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


def diff_lines(diff: t.Sequence[t.Mapping[str, t.Any]]) -> t.List[str]:
    """The result's diff (path and target of each changed link, before and after) in unified style."""
    lines = []
    for entry in diff:
        lines += [f"--- {entry['before_header']}", f"+++ {entry['after_header']}"]
        for key in entry["after"]:
            before, after = entry["before"].get(key), entry["after"][key]
            lines += [f" {key}: {after}"] if before == after else [f"-{key}: {before}", f"+{key}: {after}"]
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
    args = parser().parse_args(argv)
    state, audit, _help = SUBCOMMANDS[args.command]
    check_mode = audit or args.check
    try:
        params = load_params(args.params, state)
        result = run(params, check_mode=check_mode)
    except AgentStateLinkError as exc:
        return _fail(args, str(exc))
    for warning in result["warnings"]:
        print(f"agor-persistence {args.command}: warning: {warning}", file=sys.stderr)
    lines = report_lines(args.command, result, params["volume"], check_mode)
    if args.diff:
        lines[-1:-1] = diff_lines(result["diff"])
    print("\n".join(lines))
    try:
        _write_json(args.json, result)
    except OSError as exc:
        return _fail(args, f"--json: cannot write {args.json}: {exc}")
    return EXIT_DRIFT if audit and result["changed"] else EXIT_OK


def _fail(args: argparse.Namespace, message: str) -> int:
    print(f"agor-persistence {args.command}: {message}", file=sys.stderr)
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
