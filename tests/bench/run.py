# SPDX-License-Identifier: GPL-3.0-or-later
"""The benchmark suite of issue 4: what a container start costs, measured against the alternatives.

    scripts/bench [--quick] [--runs N] [--only SECTION,...] [--json FILE]

Prints a table of medians and ratios, each ratio against a baseline measured side by side in the
same run, with its target and PASS/GAP; then where the start step's time goes; then the checks
(imports, no facts, pinned interpreter, one module run).  As root it runs in a private mount
namespace of its own, so the tmpfs volumes it mounts never reach the host.  Sections: start,
naive, engine, volume, migrate, command, pull, checks.  --quick: smaller trees and fewer links, no
warm-up rounds (a smoke run); the full run takes about ten to twenty minutes.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import glob
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import typing as t
from dataclasses import dataclass

import yaml

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)
sys.path.insert(0, os.path.join(os.path.dirname(BENCH), "support"))

from benchlib import (  # noqa: E402
    ERROR, GiB, IS_ROOT, MiB, REPO, SKIP, VENV_BIN, Ansible, BenchError, Check, Mounts, Row, Sandbox, Timing,
    Variant, agents_account, checks_table, clear_dir, command, extra_links, make_sessions, mem_available,
    populate_volume, run, side_by_side, table, tree_stats,
)
from rendering import MODULE_PROCESS  # noqa: E402

FLOOR = os.path.join(BENCH, "playbooks", "floor.yml")
MODULE_ONLY = os.path.join(BENCH, "playbooks", "module_only.yml")
START_VALIDATED = os.path.join(BENCH, "playbooks", "start_validated.yml")
NAIVE = os.path.join(BENCH, "baseline", "naive.yml")
ENGINE_ONCE = os.path.join(BENCH, "engine_once.py")
PULL_WITHOUT_STALL = os.path.join(BENCH, "pull_without_stall.py")
SHELL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
# The interpreter of the zipapp's shebang (Debian's, as in the image), else this one.
COMMAND_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
FLOOR_NAME = "floor: one ansible.builtin.stat task"
SECTIONS = ("start", "naive", "engine", "volume", "migrate", "command", "pull", "checks")

# Every row each section prints, in order (the smoke test checks that all of them appear).
ROW_IDS = {
    "start": ["start-default", "start-5", "start-50", "start-500"],
    "naive": ["naive-4", "naive-many"],
    "engine": ["engine-1000", "engine-fork"],
    "volume": ["volume-files", "chown-curve-1", "chown-curve-2", "chown-curve-3"],
    "migrate": ["migrate-xfs", "migrate-samefs", "migrate-samefs-entries"],
    "command": ["command-vs-python", "command-vs-seed", "command-flat", "seed-volume-files"],
    "pull": ["pull", "pull-no-stall", "git-plus-playbook"],
}
EXPLAIN_IDS = ["explain-argspec-task", "explain-module-task", "explain-module-process-task", "explain-module-process", "explain-links-module-process",
               "explain-links-engine"]
CHECK_IDS = ["module-imports", "command-imports", "start-no-facts", "start-pinned-interpreter", "start-in-process"]


@dataclass(frozen=True)
class Sizes:
    start_links: t.Tuple[int, ...]
    naive_links: t.Tuple[int, int]
    engine_links: int
    volume_files: int
    chown_curve: t.Tuple[int, int, int]
    migrate: t.Tuple[int, int]                         # files, bytes (across filesystems)
    samefs: t.Tuple[t.Tuple[int, int], t.Tuple[int, int]]  # (files, small bytes), (10x the files, 10x the bytes)


FULL = Sizes((5, 50, 500), (4, 50), 1000, 200_000, (20_000, 50_000, 200_000), (20_000, GiB),
             ((2_000, 100 * MiB), (20_000, GiB)))
QUICK = Sizes((5, 50, 500), (4, 10), 1000, 2_000, (500, 1_000, 2_000), (640, 32 * MiB),
              ((64, 4 * MiB), (640, 40 * MiB)))


def human_bytes(size: int) -> str:
    return f"{size / GiB:g} GiB" if size >= GiB else f"{size / MiB:g} MiB"


def count(number: int) -> str:
    return f"{number:,}"


class Bench:
    def __init__(self, base: str, sizes: Sizes, runs: int, quick: bool) -> None:
        self.base = base
        self.sizes = sizes
        self.quick = quick
        self.runs = runs
        self.warmup = not quick
        # Ratios with tight targets get more rounds; so do the fast figures (milliseconds).
        self.runs_tight = runs if quick else max(runs, 11)
        self.runs_fast = runs if quick else max(runs, 21)
        self.mounts = Mounts()
        self.ansible = Ansible(base)
        self.sandboxes: t.Dict[str, Sandbox] = {}
        if self.ansible.collections not in sys.path:
            sys.path.insert(0, self.ansible.collections)

    # -- helpers ---------------------------------------------------------------------------------

    def sandbox(self, name: str, **kwargs: t.Any) -> Sandbox:
        """A sandbox with its volume mounted, converged by one start run (so that every timed start is
        a container start after the first: links in place, targets there), checked to be steady."""
        if name in self.sandboxes:
            return self.sandboxes[name]
        sandbox = Sandbox(os.path.join(self.base, name), **kwargs).mount(self.mounts)
        self.ansible.run(sandbox.start_argv(self.ansible))
        self.assert_steady(sandbox)
        self.sandboxes[name] = sandbox
        return sandbox

    def assert_steady(self, sandbox: Sandbox) -> None:
        out = self.ansible.run(sandbox.start_argv(self.ansible)).stdout
        if not re.search(r"localhost\s*:\s*ok=\d+\s+changed=0\b", out):
            raise BenchError(f"{sandbox.root}: the start step still changes something on its second run:\n{out[-2000:]}")

    def start(self, sandbox: Sandbox) -> t.Callable[[], None]:
        return self.ansible.action(sandbox.start_argv(self.ansible))

    def floor(self, sandbox: Sandbox) -> t.Callable[[], None]:
        return self.ansible.action(self.ansible.playbook(FLOOR, "-e", "@" + sandbox.vars_file))

    def engine_process(self, params_file: str) -> t.Callable[[], None]:
        return command([sys.executable, ENGINE_ONCE, params_file], env=self.ansible.engine_env())

    def write_json(self, path: str, data: t.Any) -> str:
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        return path

    # -- start vs floor, and where the difference goes -----------------------------------------------

    def section_start(self) -> t.Tuple[t.List[Row], t.List[Row]]:
        ansible = self.ansible
        default = self.sandbox("default")
        params = self.write_json(os.path.join(default.root, "params.json"), {"bench_params": default.params()})
        measured = side_by_side([
            Variant("floor", self.floor(default)),
            Variant("start", self.start(default)),
            Variant("validated", ansible.action(ansible.playbook(START_VALIDATED, "-e", "@" + default.vars_file))),
            Variant("module", ansible.action(ansible.playbook(MODULE_ONLY, "-e", "@" + params))),
            Variant("process", ansible.action([*default.start_argv(ansible), *MODULE_PROCESS])),
        ], self.runs_tight, self.warmup)
        links = len(default.links())
        rows = [Row("start-default", f"start playbook, all default agents ({links} links)", measured["start"],
                    FLOOR_NAME, measured["floor"], "<= 1.10x", lambda r: r <= 1.10)]
        explain = [
            Row("explain-argspec-task", "start playbook plus the role's implicit argument validation task (rolespec_validate: true)",
                measured["validated"], FLOOR_NAME, measured["floor"]),
            Row("explain-module-task", "the agent_state_link task alone, same parameters (no role)",
                measured["module"], FLOOR_NAME, measured["floor"]),
            Row("explain-module-process-task", "start playbook with the module in a process of its own (become, as over a connection that is not local)",
                measured["process"], FLOOR_NAME, measured["floor"]),
        ]
        for number in self.sizes.start_links:
            sandbox = self.sandbox(f"links-{number}", agents=[], extra_links=extra_links(number))
            measured = side_by_side([Variant("floor", self.floor(sandbox)), Variant("start", self.start(sandbox))],
                                    self.runs_tight, self.warmup)
            rows.append(Row(f"start-{number}", f"start playbook, {number} links", measured["start"], FLOOR_NAME,
                            measured["floor"], "<= 1.30x (flat)", lambda r: r <= 1.30))
        explain.append(self.module_process_row(default, params))
        numbers = self.sizes.start_links
        explain += self.many_links_rows(self.sandboxes[f"links-{min(numbers)}"], self.sandboxes[f"links-{max(numbers)}"])
        return rows, explain

    def payload(self, argv: t.Sequence[str], name: str) -> str:
        """Run a playbook keeping its AnsiballZ payload (ANSIBLE_KEEP_REMOTE_FILES); return the payload's path."""
        remote = self.ansible.env["ANSIBLE_REMOTE_TMP"]
        before = set(glob.glob(os.path.join(remote, "ansible-tmp-*")))
        self.ansible.run(argv, env={"ANSIBLE_KEEP_REMOTE_FILES": "1"})
        kept = [path for path in glob.glob(os.path.join(remote, "ansible-tmp-*", f"AnsiballZ_{name}.py"))
                if os.path.dirname(path) not in before]
        if len(kept) != 1:
            raise BenchError(f"expected one kept AnsiballZ_{name}.py, found {kept}")
        return kept[0]

    def module_payload(self, sandbox: Sandbox) -> str:
        params = self.write_json(os.path.join(sandbox.root, "params.json"), {"bench_params": sandbox.params()})
        return self.payload(self.ansible.playbook(MODULE_ONLY, "-e", "@" + params, *MODULE_PROCESS), "agent_state_link")

    def module_process_row(self, sandbox: Sandbox, params: str) -> Row:
        """The two modules' AnsiballZ payloads, run directly: the module process alone."""
        payloads = {"stat": self.payload(self.ansible.playbook(FLOOR, "-e", "@" + sandbox.vars_file), "stat"),
                    "agent_state_link": self.module_payload(sandbox)}
        python = os.path.join(VENV_BIN, "python")
        measured = side_by_side([Variant(name, command([python, path], env=self.ansible.env)) for name, path in payloads.items()],
                                self.runs_fast, self.warmup)
        return Row("explain-module-process", "agent_state_link's AnsiballZ payload run directly (module process only)",
                   measured["agent_state_link"], "stat's AnsiballZ payload", measured["stat"])

    def many_links_rows(self, few: Sandbox, many: Sandbox) -> t.List[Row]:
        """Where the extra time of many links goes: the module process, and within it the engine."""
        from ansible_collections.agor.persistence.plugins.module_utils._engine import run as engine_run

        python = os.path.join(VENV_BIN, "python")
        measured = side_by_side([Variant(name, command([python, self.module_payload(box)], env=self.ansible.env))
                                 for name, box in (("few", few), ("many", many))], self.runs_fast, self.warmup)

        def engine_action(params: t.Dict[str, t.Any]) -> t.Callable[[], None]:
            return lambda: engine_run(params) and None

        engine = side_by_side([Variant(name, engine_action(box.params())) for name, box in (("few", few), ("many", many))],
                              self.runs_fast, self.warmup)
        n_few, n_many = len(few.links()), len(many.links())
        return [
            Row("explain-links-module-process", f"agent_state_link's AnsiballZ payload run directly, {n_many} links",
                measured["many"], f"same, {n_few} links", measured["few"],
                note=f"+{(measured['many'].wall - measured['few'].wall) * 1000:.0f} ms: argument validation, engine, result scrubbing and JSON"),
            Row("explain-links-engine", f"the engine alone (run(), in process), {n_many} links", engine["many"],
                f"same, {n_few} links", engine["few"], note=f"+{(engine['many'].wall - engine['few'].wall) * 1000:.0f} ms"),
        ]

    # -- naive file loops ---------------------------------------------------------------------------

    def section_naive(self) -> t.List[Row]:
        rows = []
        for number, row_id, wanted in ((self.sizes.naive_links[0], "naive-4", 2.0), (self.sizes.naive_links[1], "naive-many", 10.0)):
            module_box = self.sandbox(f"links-{number}", agents=[], extra_links=extra_links(number))
            naive_box = Sandbox(os.path.join(self.base, f"naive-{number}"), agents=[], extra_links=extra_links(number)).mount(self.mounts)
            naive_vars = self.write_json(os.path.join(naive_box.root, "naive.json"), {
                "naive_links": [{"path": link["path"], "target": link["target"]} for link in naive_box.links()],
                "naive_volume": naive_box.volume, "naive_user": naive_box.user, "naive_group": naive_box.group,
            })
            naive = self.ansible.action(self.ansible.playbook(NAIVE, "-e", "@" + naive_vars))
            naive()  # converge, so that both are timed at a container start after the first
            target = f">= {wanted:g}x slower"
            if number != {"naive-4": 4, "naive-many": 50}[row_id]:
                target += " (target set for 50 links)"
            # Both have just run (converged): no warm-up round, the naive one at 50 links takes ~20 s.
            measured = side_by_side([Variant("start", self.start(module_box)), Variant("naive", naive)], self.runs, False)
            rows.append(Row(row_id, f"naive role (ansible.builtin.file loops), {number} links: BASELINE", measured["naive"],
                            f"start playbook, same {number} links", measured["start"], target,
                            lambda r, wanted=wanted: r >= wanted))
        return rows

    # -- the engine alone ------------------------------------------------------------------------------

    def section_engine(self) -> t.List[Row]:
        from ansible_collections.agor.persistence.plugins.module_utils._engine import run as engine_run

        number = self.sizes.engine_links
        sandbox = self.sandbox(f"links-{number}", agents=[], extra_links=extra_links(number))
        params = sandbox.params()
        walls, cpus = [], []
        for index in range(self.runs_fast + (1 if self.warmup else 0)):
            cpu = time.process_time()
            start = time.perf_counter()
            result = engine_run(params)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            if result["changed"]:
                raise BenchError("the engine changed something on a converged sandbox")
            if index or not self.warmup:
                walls.append(elapsed)
                cpus.append(cpu)
        rows = [Row("engine-1000", f"module engine alone (run(), no Ansible), {number} links already correct",
                    Timing(statistics.median(walls), statistics.median(cpus)), target="<= 50 ms", check=lambda s: s <= 0.050,
                    note=f"CPU {statistics.median(cpus) * 1000:.1f} ms")]
        return rows + [self.engine_fork()]

    def engine_fork(self) -> Row:
        """What privilege separation costs a start: the engine, in a process of its own, over the
        default links owned by the agents' account (one child process that drops to it) against the
        same links owned by root (no child process)."""
        if not IS_ROOT:
            return Row("engine-fork", "engine process, default links, owned by the agents' account", status=SKIP,
                       note="needs root (the owner must differ from the running user)")
        account = self.sandbox("default")
        as_root = self.sandbox("default-root", account=("root", "root"))
        variants = [Variant(name, self.engine_process(self.write_json(os.path.join(self.base, f"{name}.json"), sandbox.params())))
                    for name, sandbox in (("account", account), ("root", as_root))]
        measured = side_by_side(variants, self.runs_fast, self.warmup)
        links = len(account.links())
        return Row("engine-fork", f"engine process, {links} links in place, owned by the agents' account (one child drops to it)",
                   measured["account"], "same, owned by root (no child process)", measured["root"], "report")

    # -- a full volume ---------------------------------------------------------------------------------

    def section_volume(self) -> t.List[Row]:
        number = self.sizes.volume_files
        empty = self.sandbox("volume-empty")
        full = self.sandbox("volume-files", volume_size=f"{max(256, number * 5 // 1000)}m")
        populate_volume(full.volume, number)
        self.assert_steady(full)
        measured = side_by_side([Variant("empty", self.start(empty)), Variant("full", self.start(full))],
                                self.runs_tight, self.warmup)
        rows = [Row("volume-files", f"start playbook, {count(number)} files in the volume", measured["full"],
                    "start playbook, empty volume", measured["empty"], "<= 1.05x", lambda r: r <= 1.05)]
        # The seed's `chown -R agor:agor <volume>` at every start, over growing volumes.
        curve_root = os.path.join(self.base, "chown-curve")
        self.mounts.tmpfs(curve_root, f"{max(256, sum(self.sizes.chown_curve) * 5 // 1000)}m")
        owner = f"{empty.user}:{empty.group}"
        dirs = {0: empty.volume}
        for size in self.sizes.chown_curve:
            dirs[size] = os.path.join(curve_root, str(size))
            populate_volume(dirs[size], size)
            run(["chown", "-R", owner, dirs[size]])
        measured = side_by_side([Variant(str(size), command(["chown", "-R", owner, path])) for size, path in dirs.items()],
                                self.runs, self.warmup)
        base = measured["0"]
        for index, size in enumerate(self.sizes.chown_curve, 1):
            per_file = (measured[str(size)].wall - base.wall) / size * 1e6
            rows.append(Row(f"chown-curve-{index}", f"the seed's chown -R of the volume, {count(size)} files "
                            f"({per_file:.1f} us per file)", measured[str(size)], "same, empty volume", base,
                            "report: grows linearly"))
        return rows

    # -- migrations ---------------------------------------------------------------------------------------

    def section_migrate(self) -> t.List[Row]:
        return [self.migrate_across(), *self.migrate_within()]

    def migrate_across(self) -> Row:
        files, size = self.sizes.migrate
        figure = f"migration of {human_bytes(size)} in {count(files)} files across filesystems, durable before the source goes"
        baseline_name = "cp -a, then sync, then rm -rf, same tree"
        need = int(size * 3.5) + 512 * MiB
        if mem_available() < need:
            return Row("migrate-xfs", figure, baseline_name=baseline_name, target="<= 1.20x", status=SKIP,
                       note=f"needs {need / GiB:.1f} GiB of free RAM")
        if not IS_ROOT:
            return Row("migrate-xfs", figure, baseline_name=baseline_name, target="<= 1.20x", status=SKIP,
                       note="needs root: a tmpfs volume")
        root = os.path.join(self.base, "migrate-xfs")
        template = os.path.join(root, "template")
        self.mounts.tmpfs(template, f"{size // MiB + 256}m")
        make_sessions(os.path.join(template, ".claude"), files, size)
        stats = tree_stats(template)
        volume = os.path.join(root, "volume")
        self.mounts.tmpfs(volume, f"{size * 5 // 4 // MiB + 256}m")
        user, group = agents_account()
        run(["chown", "-R", f"{user}:{group}", os.path.join(template, ".claude")])  # the account's state, as in an image
        try:
            from container import Engine
        except ImportError:
            Engine = None
        if Engine is not None:
            row = self._migrate_in_container(Engine, root, template, volume, stats, size, user, group)
        else:
            row = self._migrate_on_tmpfs(root, template, volume, stats, size, user, group)
        row.id, row.figure, row.baseline_name, row.target = "migrate-xfs", figure, baseline_name, "<= 1.20x"
        row.check = lambda r: r <= 1.20
        self.mounts.umount(volume)
        self.mounts.umount(template)
        return row

    def _migrate_in_container(self, Engine: t.Any, root: str, template: str, volume: str, stats: t.Tuple[int, int],
                              size: int, user: str, group: str) -> Row:
        """Home on an image layer (overlayfs, as docker's overlay2), volume bind-mounted from a tmpfs."""
        io = os.path.join(root, "io")
        os.makedirs(io)
        self.write_json(os.path.join(io, "params.json"), {
            "links": [{"path": "/home/agor/.claude", "target": "/home/agor/.agor/.claude"}],
            "volume": "/home/agor/.agor", "require_mount": True, "owner": user, "group": group, "manage_volume_root": True,
        })
        shared = {"/opt/agor-bench/template": template, "/opt/agor-bench/collections": self.ansible.collections,
                  "/opt/agor-bench/io": io}
        engine = Engine(shared=shared, size=f"{size * 3 // 2 // MiB + 512}m")
        try:
            image = engine.build(["sh", "-c", f"mkdir -p /home/agor && chown {user}:{group} /home/agor && "
                                  "cp -a /opt/agor-bench/template/.claude /home/agor/.claude"])
            container = engine.run(image, volumes={"/home/agor/.agor": volume})

            def cexec(argv: t.Sequence[str], env: t.Optional[t.Dict[str, str]] = None) -> None:
                proc = container.exec(argv, env=env, timeout=900)
                if proc.returncode:
                    raise BenchError(f"{' '.join(argv)} in the container exited {proc.returncode}: {proc.stderr[-2000:]}")

            def fresh() -> None:
                container.restart()
                clear_dir(volume)
                subprocess.run(["sync"], check=True)

            def module() -> None:
                cexec([sys.executable, ENGINE_ONCE, "/opt/agor-bench/io/params.json"], env={"PYTHONPATH": "/opt/agor-bench/collections"})

            def baseline() -> None:
                cexec(["sh", "-c", "cp -a /home/agor/.claude /home/agor/.agor/.claude && sync && rm -rf /home/agor/.claude"])

            fresh()
            module()
            self._verify_migrated(os.path.join(volume, ".claude"), stats, os.path.islink(container.path("/home/agor/.claude")))
            measured = side_by_side([Variant("module", module, fresh), Variant("baseline", baseline, fresh)], self.runs, False)
        finally:
            engine.close()
        return Row("", "", measured["module"], "", measured["baseline"],
                   note="home on an overlayfs image layer (tests/support/container.py), volume on a tmpfs")

    def _migrate_on_tmpfs(self, root: str, template: str, volume: str, stats: t.Tuple[int, int], size: int,
                          user: str, group: str) -> Row:
        home_fs = os.path.join(root, "home")
        self.mounts.tmpfs(home_fs, f"{size * 5 // 4 // MiB + 256}m")
        home = os.path.join(home_fs, "agor")
        vol = os.path.join(home, ".agor")
        os.makedirs(vol)
        run(["chown", f"{user}:{group}", home])
        run(["mount", "--bind", volume, vol])
        self.mounts.points.append(vol)
        params = self.write_json(os.path.join(root, "params.json"), {
            "links": [{"path": f"{home}/.claude", "target": f"{vol}/.claude"}],
            "volume": vol, "require_mount": True, "owner": user, "group": group, "manage_volume_root": True,
        })

        def fresh() -> None:
            clear_dir(vol)
            if os.path.lexists(f"{home}/.claude"):
                run(["rm", "-rf", f"{home}/.claude"])
            run(["cp", "-a", os.path.join(template, ".claude"), f"{home}/.claude"])
            subprocess.run(["sync"], check=True)

        module = self.engine_process(params)
        baseline = command(["sh", "-c", 'cp -a "$1" "$2" && sync && rm -rf "$1"', "sh", f"{home}/.claude", f"{vol}/.claude"])
        fresh()
        module()
        self._verify_migrated(f"{vol}/.claude", stats, os.path.islink(f"{home}/.claude"))
        measured = side_by_side([Variant("module", module, fresh), Variant("baseline", baseline, fresh)], self.runs, False)
        self.mounts.umount(vol)
        self.mounts.umount(home_fs)
        return Row("", "", measured["module"], "", measured["baseline"], note="home and volume on two tmpfs")

    @staticmethod
    def _verify_migrated(target: str, stats: t.Tuple[int, int], linked: bool) -> None:
        found = tree_stats(target)
        if found != stats or not linked:
            raise BenchError(f"migration incomplete: {found} in {target} (expected {stats}), path linked: {linked}")

    def migrate_within(self) -> t.List[Row]:
        """Within one filesystem a migration is a rename: the same time for ten times the bytes.  Ten
        times the entries (at the same bytes) shows the one part that grows: the scan that refuses,
        before any change, a tree holding a socket, FIFO or device (it lists every directory)."""
        (files, small), (many, large) = self.sizes.samefs
        variants = {"small": (files, small), "bytes": (files, large), "entries": (many, large)}
        name = {key: f"{human_bytes(size)} in {count(number)} files" for key, (number, size) in variants.items()}
        figure = f"migration within one filesystem (whole-home volume), {name['bytes']}"
        figure_entries = f"same, {name['entries']} (10x the entries)"
        need = int(large * 4.5) + 512 * MiB
        if mem_available() < need or not IS_ROOT:
            note = "needs root and {:.1f} GiB of free RAM".format(need / GiB)
            return [Row("migrate-samefs", figure, baseline_name=f"same, {name['small']}", target="<= 1.10x", status=SKIP, note=note),
                    Row("migrate-samefs-entries", figure_entries, baseline_name=f"same, {name['bytes']}", status=SKIP, note=note)]
        root = os.path.join(self.base, "migrate-samefs")
        home = os.path.join(root, "home", "agor")  # the mount: docker-compose's agor-home:/home/agor
        self.mounts.tmpfs(home, f"{(small + 4 * large) // MiB + 256}m")
        volume = os.path.join(home, ".agor")
        os.makedirs(volume)
        templates = os.path.join(home, ".bench-templates")
        for key, (number, size) in variants.items():
            make_sessions(os.path.join(templates, key), number, size)
        user, group = agents_account()
        run(["chown", "-R", f"{user}:{group}", home])  # the account's home and state, as in an image
        params = self.write_json(os.path.join(root, "params.json"), {
            "links": [{"path": f"{home}/.claude", "target": f"{volume}/.claude"}],
            "volume": volume, "require_mount": True, "owner": user, "group": group, "manage_volume_root": True,
        })

        def fresh(which: str) -> t.Callable[[], None]:
            def do() -> None:
                clear_dir(volume)
                if os.path.lexists(f"{home}/.claude"):
                    run(["rm", "-rf", f"{home}/.claude"])
                run(["cp", "-a", os.path.join(templates, which), f"{home}/.claude"])
            return do

        module = self.engine_process(params)
        fresh("entries")()
        probe = os.path.join("projects", "-work-project-000", "session-00000.jsonl")
        inode = os.lstat(os.path.join(home, ".claude", probe)).st_ino
        module()
        moved = os.path.join(volume, ".claude", probe)
        if not os.path.islink(f"{home}/.claude") or os.lstat(moved).st_ino != inode:
            raise BenchError("within one filesystem the migration did not rename (the file's inode changed)")
        measured = side_by_side([Variant(key, module, fresh(key)) for key in variants], self.runs_tight, False)
        self.mounts.umount(home)
        return [
            Row("migrate-samefs", figure, measured["bytes"], f"same, {name['small']}", measured["small"],
                "<= 1.10x (rename: independent of size)", lambda r: r <= 1.10, note="verified: same inode after the move"),
            Row("migrate-samefs-entries", figure_entries, measured["entries"], f"same, {name['bytes']}", measured["bytes"],
                "report: the pre-move scan for sockets/FIFOs lists every directory"),
        ]

    # -- the engine's own command (engine flavour) ----------------------------------------------------------

    def section_command(self) -> t.List[Row]:
        number = self.sizes.volume_files
        empty = self.sandbox("volume-empty")
        full = self.sandbox("volume-files", volume_size=f"{max(256, number * 5 // 1000)}m")
        if not os.path.exists(os.path.join(full.volume, "worktrees")):
            populate_volume(full.volume, number)
        starts = {name: self.command_start(sandbox) for name, sandbox in (("empty", empty), ("full", full))}
        seed_empty = Sandbox(os.path.join(self.base, "seed-empty")).mount(self.mounts)
        seed_full = Sandbox(os.path.join(self.base, "seed-files"), volume_size=f"{max(256, number * 5 // 1000)}m").mount(self.mounts)
        populate_volume(seed_full.volume, number)
        variants = [Variant(name, command(argv)) for name, argv in starts.items()]
        variants.append(Variant("python", command([COMMAND_PYTHON, "-I", "-c", "pass"])))
        for name, sandbox in (("seed-empty", seed_empty), ("seed-full", seed_full)):
            action = command(["/bin/sh", seed_script(sandbox)], env=SHELL_ENV)
            action()  # converge
            variants.append(Variant(name, action))
        links = len(empty.links())
        for name, argv in starts.items():
            out = run(argv).stdout
            if not out.endswith(f" 0 of {links} link(s) changed\n"):
                raise BenchError(f"agor-persistence start ({name}) does not find its {links} links in place:\n{out[-1500:]}")
        measured = side_by_side(variants, self.runs_fast, self.warmup)
        figure = f"agor-persistence start (engine flavour), {links} links in place"
        return [
            Row("command-vs-python", figure, measured["empty"], "python3 -I -c pass", measured["python"], "<= 2.5x",
                lambda r: r <= 2.5),
            Row("command-vs-seed", figure, measured["empty"], "the seed's shell script, same links", measured["seed-empty"],
                "report"),
            Row("command-flat", f"agor-persistence start, {count(number)} files in the volume", measured["full"],
                "same, empty volume", measured["empty"], "<= 1.05x (flat)", lambda r: r <= 1.05),
            Row("seed-volume-files", f"the seed's shell script, {count(number)} files in the volume", measured["seed-full"],
                "same, empty volume", measured["seed-empty"], "report: grows (chown -R)"),
        ]

    def command_start(self, sandbox: Sandbox) -> t.List[str]:
        """argv of the rendered engine flavour's start step for ``sandbox``: render, then the command as the
        rendered entrypoint runs it (by its shebang's interpreter, isolated)."""
        render_dir = os.path.join(sandbox.root, "render-engine")
        self.ansible.run(self.ansible.playbook("agor.persistence.render", "-e", "@" + sandbox.vars_file,
                                               "-e", "agor_persistence_render_flavour=engine",
                                               "-e", f"agor_persistence_render_dir={render_dir}"))
        return [COMMAND_PYTHON, "-I", os.path.join(render_dir, "agor-persistence"), "start",
                "--params", os.path.join(render_dir, "agor-persistence-params.json")]

    # -- ansible-pull ---------------------------------------------------------------------------------------

    def section_pull(self) -> t.List[Row]:
        ansible = self.ansible
        sandbox = self.sandbox("pull")
        root = os.path.join(self.base, "pull")
        repo, checkout = os.path.join(root, "repo"), os.path.join(root, "checkout")
        snapshot_repository(repo)
        # No --inventory: then ansible-pull pins the git step's interpreter to its own (given an
        # inventory it does not, and interpreter discovery runs, and may pick a broken python3.x shim).
        pull_args = ["--url", repo, "--checkout", "main", "--directory", checkout,
                     "--extra-vars", "@" + sandbox.vars_file, "playbooks/start.yml"]
        pull = [ansible.bin("ansible-pull"), *pull_args]
        out = ansible.run(pull).stdout  # the first pull clones
        out = ansible.run(pull).stdout
        if not re.search(r"changed=0\b", out.split("PLAY RECAP")[-1]):
            raise BenchError(f"ansible-pull's start step is not steady:\n{out[-1500:]}")
        git_then_playbook = ["sh", "-c", 'git -C "$1" fetch --quiet --depth=1 origin main && git -C "$1" reset --quiet --hard FETCH_HEAD '
                             '&& exec "$2" "$1/playbooks/start.yml" --extra-vars "@$3"', "sh", checkout,
                             ansible.bin("ansible-playbook"), sandbox.vars_file]
        measured = side_by_side([
            Variant("playbook", self.start(sandbox)),
            Variant("pull", ansible.action(pull)),
            Variant("nostall", ansible.action([sys.executable, PULL_WITHOUT_STALL, *pull_args])),
            Variant("git", ansible.action(git_then_playbook)),
        ], self.runs, self.warmup)
        name = "start via ansible-playbook"
        return [
            Row("pull", "start via ansible-pull from a local repository", measured["pull"], name, measured["playbook"],
                "report; avoidable part removed or documented"),
            Row("pull-no-stall", "same, ansible-pull's select() stall and 10-byte reads patched out (tests/bench/pull_without_stall.py)",
                measured["nostall"], name, measured["playbook"]),
            Row("git-plus-playbook", "git fetch + reset, then ansible-playbook of the checkout (what ansible-pull does, without it)",
                measured["git"], name, measured["playbook"]),
        ]

    # -- checks ------------------------------------------------------------------------------------------------

    def section_checks(self) -> t.List[Check]:
        checks = [self.check_imports(), self.check_command_imports()]
        sandbox = self.sandbox("default")
        out = self.ansible.run(sandbox.start_argv(self.ansible) + ["-vvv"]).stdout
        tasks = re.findall(r"^TASK \[(.*?)\]", out, re.M)
        execs = re.findall(r"EXEC /bin/sh -c '(\S+) (\S*AnsiballZ_\w+\.py)", out)
        python = os.path.join(VENV_BIN, "python3")
        with open(os.path.join(REPO, "playbooks", "start.yml"), encoding="utf-8") as handle:
            play = yaml.safe_load(handle)[0]
        pinned = play.get("vars", {}).get("ansible_python_interpreter")
        checks.append(Check("start-no-facts", "the start play gathers no facts",
                            play.get("gather_facts") is False and "Gathering Facts" not in tasks and "setup" not in " ".join(e[1] for e in execs),
                            f"start.yml: gather_facts: {play.get('gather_facts')}; tasks run: {tasks}"))
        checks.append(Check("start-pinned-interpreter", "the start play pins the interpreter (no discovery)",
                            bool(pinned) and "discovered_interpreter" not in out and all(e[0] in (python, os.path.join(VENV_BIN, "python")) for e in execs),
                            f"ansible_python_interpreter: {pinned!r}; module processes ran with {sorted(set(e[0] for e in execs))}"))
        checks.append(Check("start-in-process", "start runs one task and no module process (local connection: the engine runs in the task's worker)",
                            not execs and len(tasks) == 1 and tasks[0].endswith("Link agent state paths into the volume"),
                            f"{len(execs)} module process(es): {[os.path.basename(e[1]) for e in execs]}; tasks: {tasks}"))
        return checks

    def check_imports(self) -> Check:
        """What importing the module adds to what ansible.module_utils.basic (every module's base) imports."""
        snippet = (
            "import sys, json\n"
            "import ansible.module_utils.basic\n"
            "before = set(sys.modules)\n"
            "import ansible_collections.agor.persistence.plugins.modules.agent_state_link\n"
            "print(json.dumps(sorted(set(sys.modules) - before)))\n"
        )
        env = dict(self.ansible.engine_env(), PYTHONDONTWRITEBYTECODE="1")
        added = json.loads(run([sys.executable, "-c", snippet], env=env).stdout)
        ours = [name for name in added if name.startswith("ansible_collections")]
        others = [name for name in added if not name.startswith("ansible_collections")]
        named = imported_names()
        extra = [name for name in others if name.split(".")[0] not in named]
        imptime = run([sys.executable, "-X", "importtime", "-c",
                       "import ansible.module_utils.basic\nimport ansible_collections.agor.persistence.plugins.modules.agent_state_link"],
                      env=env).stderr
        own_us = sum(int(line.split("|")[0].split(":")[1]) for line in imptime.splitlines()
                     if "ansible_collections.agor" in line and line.startswith("import time:"))
        return Check("module-imports", "the module imports only what it needs",
                     not extra,
                     f"beyond ansible.module_utils.basic: {len(ours)} modules of this collection and "
                     f"{others or 'no other module'}; own import time from source {own_us / 1000:.1f} ms"
                     + (f"; UNEXPECTED: {extra}" if extra else ""))

    def check_command_imports(self) -> Check:
        """What agor-persistence imports beyond a bare interpreter (python3 -I -c pass): no Ansible, no PyYAML."""
        from engine_command import build_command

        sandbox = self.sandbox("default")
        zipapp = build_command(sandbox.root)
        params = self.write_json(os.path.join(sandbox.root, "command-params.json"), sandbox.params())

        def imported(argv: t.Sequence[str]) -> t.Dict[str, int]:
            lines = subprocess.run([COMMAND_PYTHON, "-I", "-X", "importtime", *argv], capture_output=True, text=True,
                                   check=False).stderr.splitlines()
            return {line.split("|")[2].strip(): int(line.split("|")[0].split(":")[1]) for line in lines
                    if line.startswith("import time:") and line.split("|")[0].split(":")[1].strip().isdigit()}

        bare = imported(["-c", "pass"])
        added = {name: us for name, us in imported([zipapp, "audit", "--params", params]).items() if name not in bare}
        ours = {name: us for name, us in added.items() if name.startswith("ansible_collections")}
        others = sorted({name.split(".")[0] for name in added if not name.startswith("ansible_collections")})
        # Neither Ansible nor PyYAML, and none of the heavy modules the engine does not use (dataclasses
        # and traceback cost it 12 ms a start, with inspect, ast, dis and tokenize behind them).
        forbidden = [name for name in others if name in ("ansible", "yaml", "dataclasses", "inspect", "traceback")]
        return Check("command-imports", "agor-persistence imports no Ansible, no PyYAML, no dataclasses, inspect or traceback "
                     "(python3 -X importtime)",
                     not forbidden,
                     f"beyond python3 -I -c pass: {len(ours)} modules of this collection ({sum(ours.values()) / 1000:.1f} ms "
                     f"own import time, bytecode from the zipapp) and the standard library's {', '.join(others)}"
                     + (f"; UNEXPECTED: {forbidden}" if forbidden else ""))


def imported_names() -> t.Set[str]:
    """Top-level names the module and its module_utils import themselves."""
    names: t.Set[str] = set()
    for path in glob.glob(os.path.join(REPO, "plugins", "module_utils", "*.py")) + [os.path.join(REPO, "plugins", "modules", "agent_state_link.py")]:
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def seed_script(sandbox: Sandbox) -> str:
    """BASELINE ONLY: the seed's entrypoint section (docker-entrypoint-prod.sh, quoted in the issue's
    seed) for this sandbox's links: mkdir -p of the target directories, chown -R of the whole volume,
    then per path `[ ! -L path ] && rm -rf path && ln -s target path`, and chown -h of the links.
    Missing parents of nested paths (.local/share/opencode) get mkdir -p, which the seed's three
    top-level links did not need; file targets are not created (the seed had none)."""
    links = sandbox.links()
    owner = f"{sandbox.user}:{sandbox.group}"
    q = shlex.quote
    lines = ["#!/bin/sh", "# BASELINE ONLY (tests/bench): the seed's entrypoint section, same links.", "set -e",
             'echo "Setting up agent session storage..."',
             "mkdir -p " + " ".join(q(link["target"]) for link in links if link["kind"] == "directory"),
             f"chown -R {q(owner)} {q(sandbox.volume)}"]
    parents = sorted({os.path.dirname(link["path"]) for link in links} - {sandbox.home})
    if parents:
        lines.append("mkdir -p " + " ".join(q(parent) for parent in parents))
    for link in links:
        lines += [f"if [ ! -L {q(link['path'])} ]; then", f"  rm -rf {q(link['path'])}",
                  f"  ln -s {q(link['target'])} {q(link['path'])}", "fi"]
    lines.append(f"chown -h {q(owner)} " + " ".join(q(link["path"]) for link in links))
    lines.append('echo "Agent session directories configured (symlinked to persistent volume)"')
    path = os.path.join(sandbox.root, "seed-entrypoint.sh")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path


def snapshot_repository(repo: str) -> None:
    """A git repository (branch main, one commit) holding the working tree's files, for ansible-pull."""
    files = run(["git", "-C", REPO, "ls-files", "-z", "-co", "--exclude-standard"]).stdout.split("\0")
    os.makedirs(repo)
    for rel in files:
        source = os.path.join(REPO, rel)
        if rel and os.path.isfile(source) and not os.path.islink(source):
            os.makedirs(os.path.dirname(os.path.join(repo, rel)), exist_ok=True)
            shutil.copy2(source, os.path.join(repo, rel))
    git = ["git", "-C", repo, "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    run(git + ["init", "--quiet", "--initial-branch=main"])
    run(git + ["add", "--all"])
    run(git + ["commit", "--quiet", "--message", "snapshot for the ansible-pull benchmark"])


def describe_machine() -> str:
    import ansible

    with open("/proc/meminfo", encoding="ascii") as meminfo:
        total = int(meminfo.readline().split()[1]) // 1024 // 1024
    return (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {total} GiB RAM, "
            f"Linux {platform.release()}, Python {platform.python_version()}, ansible-core {ansible.__version__}, "
            f"load average {os.getloadavg()[0]:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="small trees, no warm-up: a smoke run")
    parser.add_argument("--runs", type=int, help="rounds per measurement (default 7; 3 with --quick)")
    parser.add_argument("--only", help=f"comma-separated sections: {','.join(SECTIONS)}")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes' directory")
    args = parser.parse_args()
    if IS_ROOT and not os.environ.get("AGOR_BENCH_NAMESPACE"):
        # Our own private mount namespace: every tmpfs we mount goes away with us, whatever happens.
        os.environ["AGOR_BENCH_NAMESPACE"] = "1"
        os.execvp("unshare", ["unshare", "--mount", "--propagation", "private", "--", sys.executable, *sys.argv])
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    runs = args.runs or (3 if args.quick else 7)
    sizes = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally below) when killed
    base = tempfile.mkdtemp(prefix="agor-bench-")
    os.chmod(base, 0o755)  # the agents' account (nobody) must reach the sandboxes' homes
    bench = Bench(base, sizes, runs, args.quick)
    print(f"# agor.persistence benchmarks ({'quick' if args.quick else 'full'}, {runs} runs, medians)", flush=True)
    print(describe_machine(), flush=True)
    rows: t.List[Row] = []
    explain: t.List[Row] = []
    checks: t.List[Check] = []
    started = time.monotonic()
    failed = False
    try:
        for section in SECTIONS:
            if section not in sections:
                continue
            began = time.monotonic()
            print(f"... {section}", file=sys.stderr, flush=True)
            try:
                result = getattr(bench, f"section_{section}")()
                if section == "start":
                    rows += result[0]
                    explain += result[1]
                elif section == "checks":
                    checks += result
                else:
                    rows += result
            except Exception as exc:  # noqa: BLE001 - report the section as failed, go on with the others
                failed = True
                traceback.print_exc()
                message = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                if section == "checks":
                    checks += [Check(check_id, "-", False, f"ERROR: {message}") for check_id in CHECK_IDS]
                else:
                    rows += [Row(row_id, section, status=ERROR, note=message) for row_id in ROW_IDS[section]]
                    if section == "start":
                        explain += [Row(row_id, section, status=ERROR, note=message) for row_id in EXPLAIN_IDS]
            print(f"    {section}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
    finally:
        bench.mounts.close()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print()
    print(table(rows))
    if explain:
        print()
        print("Where the start step's time goes (each against the floor, measured side by side in the same rounds):")
        print()
        print(table(explain))
    if checks:
        print()
        print(checks_table(checks))
    print()
    print(f"Total {time.monotonic() - started:.0f} s. Ratios are subject / baseline medians, interleaved round by round; "
          "absolute times are for information only.")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": describe_machine(), "runs": runs, "quick": args.quick,
                       "rows": [row.as_dict() for row in rows + explain],
                       "checks": [check.__dict__ for check in checks]}, handle, indent=2)
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
