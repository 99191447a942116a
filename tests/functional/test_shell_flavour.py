# SPDX-License-Identifier: GPL-3.0-or-later
"""The rendered shell entrypoint reaches the same end state as the agent_state_link module.

One sandbox with fixed paths (the rendered script has them built in) is rebuilt for every run:
each starting state is laid out twice, once for the module (the engine's run(), with the
parameters tasks/link_state_paths.yml would give it) and once for the script (under dash, and
under busybox sh with only busybox's tools), and the two end states must be equal: the same
links, the same files with the same content, mode and owner in the home, the volume and the
backups (the backup directory's time stamp left out). The volume is a tmpfs mounted for each
run, so the mount check passes as in a container; tests run as root in a private mount
namespace (scripts/test).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
import typing as t
from dataclasses import dataclass, field

import pytest

from agent_tree import DIR, Link, Tree, contents, run_engine, snapshot
from rendering import module_params, registry, render

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not os.environ.get("AGOR_PERSISTENCE_IN_NAMESPACE"),
    reason="mounts a tmpfs as the volume: needs root in a private mount namespace (run scripts/test)",
)

META = ".agent-state-link"


# -- Shells ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shell:
    name: str
    argv: t.Tuple[str, ...]
    path: str  # PATH the script runs with

    def env(self, phase: str) -> t.Dict[str, str]:
        return {"PATH": self.path, "AGOR_PERSISTENCE_PHASE": phase, "LC_ALL": "C"}


def _shells(bin_dir: str) -> t.List[Shell]:
    """dash with Debian's tools; busybox sh with only busybox's applets (no flock: the directory lock)."""
    shells = []
    dash = shutil.which("dash")
    if dash:
        shells.append(Shell("dash", (dash,), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"))
    busybox = shutil.which("busybox")
    if busybox:
        os.makedirs(bin_dir, exist_ok=True)
        applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            # No flock (so the directory lock is tested); setpriv is util-linux's (busybox's lacks --reuid).
            if applet not in ("flock", "setpriv") and not os.path.lexists(os.path.join(bin_dir, applet)):
                os.symlink(busybox, os.path.join(bin_dir, applet))
        setpriv = shutil.which("setpriv")
        if setpriv and not os.path.lexists(os.path.join(bin_dir, "setpriv")):
            os.symlink(setpriv, os.path.join(bin_dir, "setpriv"))
        shells.append(Shell("busybox", (busybox, "sh"), bin_dir))
    return shells


# -- The sandbox -------------------------------------------------------------------------------------


class Sandbox:
    """Fixed paths below ``root`` (with a space and a quote in it, to test quoting), the role's
    variables for them, and the shell entrypoint rendered from those variables."""

    def __init__(self, root: str, variables: t.Mapping[str, t.Any] = None) -> None:
        self.root = root
        self.base = os.path.join(root, "it's a sandbox")
        home = os.path.join(self.base, "home", "agor")
        self.variables = {
            "agor_persistence_user": "nobody",
            "agor_persistence_group": "nogroup",
            "agor_persistence_home": home,
            "agor_persistence_volume": os.path.join(home, ".agor"),
            "agor_persistence_seed_store": os.path.join(self.base, "seed"),
            "agor_persistence_agents": list(registry()),
            "agor_persistence_users": [{"name": "daemon", "home": os.path.join(self.base, "home", "daemon"), "agents": ["claude"]}],
            "agor_persistence_extra_links": [{"path": ".netrc", "kind": "file", "target": "secrets/netrc"}],
            "agor_persistence_conflict": "backup",
            "agor_persistence_require_mount": True,
            "agor_persistence_manage_volume_root": True,
        }
        self.variables.update(variables or {})
        render_dir = os.path.join(root, "rendered")
        render(render_dir, "shell", self.variables)
        self.script = os.path.join(render_dir, "agor-persistence-entrypoint")
        self.backing = os.path.join(root, "volume")
        self.tree: t.Optional[Tree] = None

    def reset(self, layout: t.Any, mount: bool = True) -> Tree:
        """A fresh tree holding ``layout``; the volume is a new tmpfs, bind-mounted at its place
        unless ``mount`` is false (as during an image build: mounting it later shows its content)."""
        self.unmount()
        while os.path.ismount(self.backing):
            subprocess.run(["umount", self.backing], check=True)
        if os.path.lexists(self.base):
            shutil.rmtree(self.base)
        os.makedirs(self.backing, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "agor-test-volume", self.backing], check=True)
        tree = Tree(self.base)
        tree.roots["daemon"] = os.path.join(self.base, "home", "daemon")
        self.tree = tree
        self.mount()
        tree.build(layout(tree) if callable(layout) else layout)
        if not mount:
            self.unmount()
        return tree

    def mount(self) -> None:
        assert self.tree is not None
        if not os.path.ismount(self.tree.volume):
            subprocess.run(["mount", "--bind", self.backing, self.tree.volume], check=True)

    def unmount(self) -> None:
        while self.tree is not None and os.path.ismount(self.tree.volume):
            subprocess.run(["umount", self.tree.volume], check=True)

    def close(self) -> None:
        self.unmount()
        while os.path.ismount(self.backing):
            subprocess.run(["umount", self.backing], check=True)

    def params(self, phase: str) -> t.Dict[str, t.Any]:
        return module_params(self.variables, "prepared" if phase == "build" else "present")

    def run_module(self, phases: t.Sequence[str]) -> t.Dict[str, t.Any]:
        """Each phase as the role runs it; the volume is mounted for a start, as in a container."""
        result: t.Dict[str, t.Any] = {}
        for phase in phases:
            if phase == "start":
                self.mount()
            result = run_engine(self.params(phase))
        return result

    def run_shell(self, shell: Shell, phases: t.Sequence[str], command: t.Sequence[str] = ("true",),
                  check: bool = True, mount: bool = True) -> subprocess.CompletedProcess:
        proc = None
        for phase in phases:
            if phase == "start" and mount:
                self.mount()
            proc = subprocess.run([*shell.argv, self.script, *(command if phase == "start" else ())],
                                  env=shell.env(phase), capture_output=True, text=True, check=False)
            if check:
                assert proc.returncode == 0, f"{shell.name} {phase} failed:\n{proc.stderr}"
        assert proc is not None
        return proc


_BACKUP_STAMP = re.compile(r"(/\.agent-state-link/backups/)[^/]+")
_UNTRUSTED = re.compile(r"(/\.agent-state-link\.untrusted-)[^/]+")
# How each run locks (a lock file, or a directory where there is no flock) and whether it keeps
# an empty staging directory are its own business; everything else must match.
_INTERNAL = re.compile(r"/\.agent-state-link/(lock|lock\.d|staging)$")


def end_state(root: str) -> t.Dict[str, t.Tuple[t.Any, ...]]:
    """snapshot() without times, with backup stamps and aside-names made comparable."""
    state = {}
    for rel, entry in snapshot(root).items():
        rel = _UNTRUSTED.sub(r"\1*", _BACKUP_STAMP.sub(r"\1*", "/" + rel))
        if _INTERNAL.search(rel):
            continue
        kind = entry[0]
        state[rel] = (kind, entry[1], *entry[-3:]) if kind in ("link", "file") else (kind, *entry[-3:])
    return state


def assert_same(found: t.Mapping[str, t.Any], expected: t.Mapping[str, t.Any], what: str) -> None:
    differences = [f"only {what}: {key} {found[key]}" for key in sorted(set(found) - set(expected))]
    differences += [f"only module: {key} {expected[key]}" for key in sorted(set(expected) - set(found))]
    differences += [f"differs: {key} {what} {found[key]} module {expected[key]}"
                    for key in sorted(set(found) & set(expected)) if found[key] != expected[key]]
    assert not differences, "\n".join(differences)


def staging_is_empty(tree: Tree) -> bool:
    staging = os.path.join(tree.meta, "staging")
    return not os.path.isdir(staging) or not os.listdir(staging)


# -- Starting states ---------------------------------------------------------------------------------

PENDING = "20250101T000000.000000Z"


@dataclass
class Case:
    id: str
    layout: t.Any  # a layout (see agent_tree.Tree.build), or a function of the tree returning one
    phases: t.List[str] = field(default_factory=lambda: ["start"])


def _interrupted(tree: Tree) -> t.Dict[str, t.Any]:
    """A run killed after backing up settings.json but before removing the home copy."""
    backup = f"vol:{META}/backups/{PENDING}{tree.home}/.claude/settings.json"
    return {f"vol:{META}/pending-backup": PENDING, backup: "home", "home:.claude/settings.json": "home",
            "vol:.claude/settings.json": "volume", f"vol:{META}/staging/12345-1/partial": "P",
            "home:..claude.agent-state-link.tmp": Link("vol:.claude")}


CASES = [
    Case("nothing anywhere", {}),
    Case("right links already", {"vol:.claude/s.jsonl": "S", "home:.claude": Link("vol:.claude"), "home:.codex": Link("vol:.codex"),
                                 "vol:.claude.json": '{"k": 1}', "home:.claude.json": Link("vol:.claude.json")}),
    Case("links elsewhere", {"out:dir/keep": "K", "home:.claude": Link("out:dir"), "out:f": "F", "home:.claude.json": Link("out:f")}),
    Case("dangling links", {"home:.gemini": Link("/nonexistent/.gemini"), "home:.claude.json": Link("/nonexistent/.claude.json")}),
    Case("relative link to the right target", {"vol:.claude/s": "S", "home:.claude": Link(".agor/.claude")}),
    Case("real directories into missing targets",
         {"home:.claude/projects/-work/s.jsonl": "S", "home:.claude/settings.json": "{}", "home:.claude/.hidden": "H",
          "home:.claude/latest": Link("projects"), "home:.local/share/opencode/opencode.db": "DB", "daemon:.claude/d.jsonl": "D"}),
    Case("real directory merged into an existing target",
         {"home:.claude/new": "n", "home:.claude/same": "s", "vol:.claude/same": "s",
          "home:.claude/settings.json": "home", "vol:.claude/settings.json": "volume",
          "home:.claude/projects/a.jsonl": "A", "vol:.claude/projects/b.jsonl": "B",
          "home:.claude/todos": "a file", "vol:.claude/todos/t.json": "T", "home:.claude/link": Link("x"), "vol:.claude/link": Link("x")}),
    Case("real file into a missing target", {"home:.claude.json": '{"a": 1}', "home:.netrc": "machine m"}),
    Case("identical and conflicting files", {"home:.claude.json": "same", "vol:.claude.json": "same",
                                             "home:.netrc": "home", "vol:secrets/netrc": "volume"}),
    Case("~/.claude.json missing, the volume has one", {"vol:.claude.json": '{"user": 1}'}),
    Case("wrong kinds in the home", {"home:.claude": "oops", "home:.claude.json/x": "X"}),
    Case("symlinks planted in the volume",
         {"out:dir/keep": "K", "vol:.claude": Link("out:dir"), "home:.claude/s": "S", "out:secret": "secret",
          "vol:.claude.json": Link("out:secret"), "vol:users": Link("out:dir"), "vol:.codex": Link("out:dir"),
          "home:.codex": Link("vol:.codex"), "vol:secrets": Link("out:dir")}),
    Case("wrong kinds in the volume", {"vol:.claude": "stray", "home:.claude/s": "S", "vol:.claude.json/x": "X",
                                       "vol:.local": "a file where a parent goes"}),
    Case("seed fills empty targets", {"vol:.claude": DIR, "seed:.claude/settings.json": "seeded", "seed:.claude/agents/a.md": "A",
                                      "seed:.codex/config.toml": "c", "seed:.claude.json": '{"seed": 1}'}),
    Case("seed never overwrites content", {"vol:.claude/settings.json": "user", "seed:.claude/settings.json": "seeded",
                                           "seed:.claude/other": "o", "vol:.claude.json": "user", "seed:.claude.json": "seeded"}),
    Case("seed not used when the home brings content", {"home:.claude/s": "S", "seed:.claude/settings.json": "seeded"}),
    Case("interrupted earlier run", _interrupted),
    Case("untrusted bookkeeping directory", {"out:dir/keep": "K", f"vol:{META}": Link("out:dir"), "home:.claude/s": "S",
                                             "home:.claude/c": "home", "vol:.claude/c": "volume"}),
    Case("image build, then first start",
         {"home:.claude/settings.json": "baked", "home:.claude.json": '{"baked": 1}', "home:.codex": Link("out:dir"),
          "home:.gemini/settings.json": "g"}, phases=["build", "start"]),
    Case("image build with nothing baked, then a start on a volume in use",
         {"vol:.claude/s.jsonl": "S", "vol:.claude.json": '{"user": 1}'}, phases=["build", "start"]),
]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sandbox = Sandbox(str(tmp_path_factory.mktemp("shell-flavour")))
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def shells(tmp_path_factory):
    found = _shells(str(tmp_path_factory.mktemp("busybox-bin")))
    if not found:
        pytest.skip("neither dash nor busybox is installed")
    return {shell.name: shell for shell in found}


def _shell(shells: t.Mapping[str, Shell], name: str) -> Shell:
    if name not in shells:
        pytest.skip(f"{name} is not installed")
    return shells[name]


# -- Same end state ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shell_name", ["dash", "busybox"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_same_end_state_as_the_module(sandbox, shells, shell_name, case):
    shell = _shell(shells, shell_name)

    tree = sandbox.reset(case.layout, mount=case.phases[0] == "start")
    sandbox.run_module(case.phases)
    expected = end_state(sandbox.base)
    assert not sandbox.run_module(["start"])["changed"], "the module's second start still changes something"
    assert end_state(sandbox.base) == expected

    tree = sandbox.reset(case.layout, mount=case.phases[0] == "start")
    # The bookkeeping directory's own files (an interrupted run's staging, its pending-backup record) may go.
    outside, before = snapshot(tree.outside), contents(sandbox.base) - contents(tree.meta)
    sandbox.run_shell(shell, case.phases)
    assert_same(end_state(sandbox.base), expected, shell.name)
    assert staging_is_empty(tree)
    assert snapshot(tree.outside) == outside, "something outside the home and the volume was touched"
    assert set(before) <= set(contents(sandbox.base)), "some content was lost"

    again = snapshot(sandbox.base)
    second = sandbox.run_shell(shell, ["start"])
    assert second.stderr.endswith(", 0 changed\n"), second.stderr
    meta = os.path.relpath(tree.meta, sandbox.base)
    unchanged = {rel: entry for rel, entry in snapshot(sandbox.base).items() if not rel.startswith(meta)}
    assert unchanged == {rel: entry for rel, entry in again.items() if not rel.startswith(meta)}, "the second start changed something"


def test_links_are_single_hop_and_absolute(sandbox, shells):
    shell = next(iter(shells.values()))
    sandbox.reset({"home:.claude/s": "S"})
    sandbox.run_shell(shell, ["start"])
    for link in sandbox.params("start")["links"]:
        assert os.readlink(link["path"]) == link["target"]
    assert open(os.path.join(sandbox.variables["agor_persistence_volume"], ".claude.json"), encoding="utf-8").read() == "{}"


# -- Privileges ----------------------------------------------------------------------------------------


def test_start_then_runs_the_command_as_the_user(sandbox, shells):
    shell = next(iter(shells.values()))
    tree = sandbox.reset({})
    proc = sandbox.run_shell(shell, ["start"], command=["sh", "-c", 'id -u; id -g; echo "$HOME|$USER|$LOGNAME"'])
    assert proc.stdout.splitlines() == ["65534", "65534", f"{tree.home}|nobody|nobody"], proc.stderr


def test_build_phase_runs_no_command(sandbox, shells):
    shell = next(iter(shells.values()))
    tree = sandbox.reset({}, mount=False)
    marker = os.path.join(tree.outside, "ran")
    proc = subprocess.run([*shell.argv, sandbox.script, "touch", marker], env=shell.env("build"), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(marker)
    assert os.readlink(os.path.join(tree.home, ".claude")) == os.path.join(tree.volume, ".claude")


# -- Refusals: nothing changes, the command does not run -------------------------------------------------


def _refused(sandbox: Sandbox, shell: Shell, layout: t.Any, mount: bool = True) -> t.Tuple[str, str]:
    """Both refuse; nothing changes but the bookkeeping directory; return (module's message, script's)."""
    from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

    sandbox.reset(layout, mount=mount)
    before = {rel: entry for rel, entry in end_state(sandbox.base).items() if f"/{META}" not in rel}
    with pytest.raises(AgentStateLinkError) as refusal:
        run_engine(sandbox.params("start"))
    after_module = {rel: entry for rel, entry in end_state(sandbox.base).items() if f"/{META}" not in rel}
    assert after_module == before

    tree = sandbox.reset(layout, mount=mount)
    marker = os.path.join(tree.outside, "ran")
    proc = sandbox.run_shell(shell, ["start"], command=["touch", marker], check=False, mount=mount)
    assert proc.returncode != 0
    assert not os.path.exists(marker), "the container command ran after a refusal"
    assert {rel: entry for rel, entry in end_state(sandbox.base).items() if f"/{META}" not in rel} == before
    return str(refusal.value), proc.stderr


@pytest.mark.parametrize("shell_name", ["dash", "busybox"])
def test_refuses_without_a_mounted_volume(sandbox, shells, shell_name):
    module, script = _refused(sandbox, _shell(shells, shell_name), {"home:.claude/s": "S"}, mount=False)
    assert "persistence would be lost" in module
    assert "persistence would be lost" in script, script


@pytest.mark.parametrize("shell_name", ["dash", "busybox"])
def test_refuses_a_fifo_before_changing_anything(sandbox, shells, shell_name):
    def layout(tree):
        os.mkfifo(tree("home:.codex"))
        return {"home:.claude/s": "S"}

    module, script = _refused(sandbox, _shell(shells, shell_name), layout)
    assert "FIFO" in module and "FIFO" in script, script


def test_conflict_fail_refuses_before_changing_anything(tmp_path, shells):
    strict = Sandbox(str(tmp_path), {"agor_persistence_conflict": "fail"})
    try:
        layout = {"home:.claude/a": "home", "vol:.claude/a": "volume", "home:.gemini/new": "N", "vol:.codex": Link("out:dir")}
        module, script = _refused(strict, next(iter(shells.values())), layout)
    finally:
        strict.close()
    assert "conflict=fail: 2 conflict(s), nothing changed" in module
    assert "conflict=fail: 2 conflict(s), nothing changed" in script, script


# -- Concurrency and kills ---------------------------------------------------------------------------------

MERGE = next(case for case in CASES if case.id == "real directory merged into an existing target")


@pytest.mark.parametrize("shell_name", ["dash", "busybox"])
def test_concurrent_starts_serialize(sandbox, shells, shell_name):
    shell = _shell(shells, shell_name)
    sandbox.reset(MERGE.layout)
    sandbox.run_module(["start"])
    expected = end_state(sandbox.base)

    sandbox.reset(MERGE.layout)
    runs = [subprocess.Popen([*shell.argv, sandbox.script, "true"], env=shell.env("start"), stderr=subprocess.PIPE, text=True)
            for dummy in range(3)]
    errors = [run.communicate()[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], errors
    assert sum(error.endswith(", 0 changed\n") for error in errors) == 2, f"exactly one run should find work: {errors}"
    assert_same(end_state(sandbox.base), expected, shell.name)


def _big_home(tree: Tree) -> t.Dict[str, t.Any]:
    layout: t.Dict[str, t.Any] = {"home:.local/share": DIR, "home:.config": DIR, "home:.claude.json": '{"a": 1}',
                                  "home:.claude/settings.json": "home", "vol:.claude/settings.json": "volume",
                                  "home:.gemini/same": "s", "vol:.gemini/same": "s"}
    for project in range(8):
        for session in range(25):
            layout[f"home:.claude/projects/p{project}/s{session}.jsonl"] = f"{project}/{session}" * 200
    return layout


def test_a_killed_start_loses_nothing_and_the_rerun_finishes(sandbox, shells):
    """Killed at spread-out instants (dash; flock releases with the process), the rerun reaches
    the module's end state and no content is ever lost."""
    shell = _shell(shells, "dash")
    sandbox.reset(_big_home)
    sandbox.run_module(["start"])
    expected = end_state(sandbox.base)

    sandbox.reset(_big_home)
    began = time.monotonic()
    sandbox.run_shell(shell, ["start"])
    duration = time.monotonic() - began

    for step in range(1, 8):
        tree = sandbox.reset(_big_home)
        before = contents(sandbox.base)
        run = subprocess.Popen([*shell.argv, sandbox.script, "true"], env=shell.env("start"), stderr=subprocess.DEVNULL,
                               start_new_session=True)
        time.sleep(duration * step / 8)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
        assert set(before) <= set(contents(sandbox.base)), f"content lost by a kill after {duration * step / 8:.3f} s"
        sandbox.run_shell(shell, ["start"])
        assert_same(end_state(sandbox.base), expected, f"{shell.name} killed after {duration * step / 8:.3f} s, rerun")
        assert staging_is_empty(tree)
