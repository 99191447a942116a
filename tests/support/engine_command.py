# SPDX-License-Identifier: GPL-3.0-or-later
"""The engine's own command, agor-persistence, built as the role's render builds it, and run as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILDER = os.path.join(REPO, "roles", "agor_persistence", "files", "build_engine_command.py")
MODULE_UTILS = os.path.join(REPO, "plugins", "module_utils")
# Isolated and without site-packages: neither ansible nor PyYAML can be imported.
PYTHON = (sys.executable, "-I", "-S")


def build_command(dest_dir: str) -> str:
    """The zipapp, built from the collection's module_utils into ``dest_dir``; returns its path."""
    dest = os.path.join(dest_dir, "agor-persistence")
    subprocess.run([sys.executable, BUILDER, MODULE_UTILS, dest], check=True, capture_output=True)
    return dest


def run_command(command: str, *args: str, params: t.Optional[t.Mapping[str, t.Any]] = None,
                workdir: t.Optional[str] = None) -> t.Tuple[subprocess.CompletedProcess, t.Optional[t.Dict[str, t.Any]]]:
    """``python3 -I -S agor-persistence ARGS``, with ``params`` written to a file first and the --json result
    read back; returns (the completed process, the result or None)."""
    argv = [*PYTHON, command, *args]
    result_path = None
    if params is not None:
        assert workdir is not None
        params_path = os.path.join(workdir, "params.json")
        result_path = os.path.join(workdir, "result.json")
        with open(params_path, "w", encoding="utf-8") as handle:
            json.dump(params, handle)
        if os.path.exists(result_path):
            os.unlink(result_path)
        argv += ["--params", params_path, "--json", result_path]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    result = None
    if result_path and os.path.exists(result_path):
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    return proc, result
