# SPDX-License-Identifier: GPL-3.0-or-later
"""Machinery of the benchmark suite: side-by-side timing, sandboxes, mounts, Ansible runs.

Every ratio is measured side by side: the subject and its baseline run alternately in the same
process, round after round (the order reversed every other round, so that a drift of the
machine's speed weighs on both alike), and each gets the median of its rounds.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
import typing as t
from dataclasses import dataclass, field

import yaml

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(BENCH))
ROLE = os.path.join(REPO, "roles", "agor_persistence")
VENV_BIN = os.path.dirname(sys.executable)  # run.py runs under .venv/bin/python
IS_ROOT = os.geteuid() == 0
MiB = 1024 * 1024
GiB = 1024 * MiB


class BenchError(Exception):
    """A measurement could not be taken (a command failed, a precondition is missing)."""


def run(argv: t.Sequence[str], env: t.Optional[t.Mapping[str, str]] = None, cwd: t.Optional[str] = None,
        timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command with its output captured; raise BenchError with the output's tail when it fails."""
    proc = subprocess.run(list(argv), env=None if env is None else dict(env), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise BenchError(f"{' '.join(argv[:4])} ... exited {proc.returncode}:\n{tail}")
    return proc


# -- Side-by-side timing ---------------------------------------------------------------------------


@dataclass
class Variant:
    """One thing to time: ``action`` is timed, ``setup`` (untimed) runs before each timing."""

    name: str
    action: t.Callable[[], None]
    setup: t.Optional[t.Callable[[], None]] = None


@dataclass(frozen=True)
class Timing:
    """Medians of one variant: wall-clock seconds, and CPU seconds (user + system, of this process
    and of the children it waited for). The CPU figure hardly moves when other work competes for
    the processors; the wall figure is what a container start waits for."""

    wall: float
    cpu: float


def cpu_seconds() -> float:
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def side_by_side(variants: t.Sequence[Variant], runs: int, warmup: bool) -> t.Dict[str, Timing]:
    """Time each variant ``runs`` times, interleaved round by round; return each one's medians."""
    walls: t.Dict[str, t.List[float]] = {variant.name: [] for variant in variants}
    cpus: t.Dict[str, t.List[float]] = {variant.name: [] for variant in variants}
    if warmup:
        for variant in variants:
            if variant.setup:
                variant.setup()
            variant.action()
    for round_no in range(runs):
        for variant in variants if round_no % 2 == 0 else list(reversed(variants)):
            if variant.setup:
                variant.setup()
            cpu = cpu_seconds()
            start = time.perf_counter()
            variant.action()
            walls[variant.name].append(time.perf_counter() - start)
            cpus[variant.name].append(cpu_seconds() - cpu)
    return {name: Timing(statistics.median(walls[name]), statistics.median(cpus[name])) for name in walls}


def command(argv: t.Sequence[str], env: t.Optional[t.Mapping[str, str]] = None, cwd: t.Optional[str] = None) -> t.Callable[[], None]:
    return lambda: run(argv, env=env, cwd=cwd) and None


# -- Results ---------------------------------------------------------------------------------------

PASS, GAP, INFO, SKIP, ERROR = "PASS", "GAP", "info", "n/a", "ERROR"


@dataclass
class Row:
    """One line of the table.  ``ratio`` is subject / baseline (wall clock); ``check`` turns it, or
    the subject's own time when there is no baseline, into PASS/GAP."""

    id: str
    figure: str
    subject: t.Optional[Timing] = None
    baseline_name: str = "-"
    baseline: t.Optional[Timing] = None
    target: str = "report"
    check: t.Optional[t.Callable[[float], bool]] = None
    note: str = ""
    status: t.Optional[str] = None             # forced status (n/a, ERROR), else derived

    @property
    def ratio(self) -> t.Optional[float]:
        if self.subject is None or self.baseline is None or not self.baseline.wall:
            return None
        return self.subject.wall / self.baseline.wall

    @property
    def cpu_ratio(self) -> t.Optional[float]:
        if self.subject is None or self.baseline is None or not self.baseline.cpu:
            return None
        return self.subject.cpu / self.baseline.cpu

    @property
    def result(self) -> str:
        if self.status:
            return self.status
        if self.check is None:
            return INFO
        value = self.ratio if self.baseline is not None else (self.subject.wall if self.subject else None)
        if value is None:
            return ERROR
        return PASS if self.check(value) else GAP

    def as_dict(self) -> t.Dict[str, t.Any]:
        def timing(value: t.Optional[Timing]) -> t.Optional[t.Dict[str, float]]:
            return None if value is None else {"wall_s": value.wall, "cpu_s": value.cpu}

        return {"id": self.id, "figure": self.figure, "subject": timing(self.subject), "baseline": self.baseline_name,
                "baseline_median": timing(self.baseline), "ratio": self.ratio, "cpu_ratio": self.cpu_ratio,
                "target": self.target, "result": self.result, "note": self.note}


def fmt_time(seconds: t.Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio: t.Optional[float]) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def table(rows: t.Sequence[Row]) -> str:
    lines = [
        "| id | figure | median | baseline (same run) | baseline median | ratio | target | result | CPU ratio |",
        "|---|---|---:|---|---:|---:|---|---|---:|",
    ]
    for row in rows:
        figure = row.figure + (f" ({row.note})" if row.note else "")
        lines.append(f"| {row.id} | {figure} | {fmt_time(row.subject and row.subject.wall)} | {row.baseline_name} | "
                     f"{fmt_time(row.baseline and row.baseline.wall)} | {fmt_ratio(row.ratio)} | {row.target} | "
                     f"{row.result} | {fmt_ratio(row.cpu_ratio)} |")
    return "\n".join(lines)


@dataclass
class Check:
    id: str
    claim: str
    ok: bool
    detail: str


def checks_table(checks: t.Sequence[Check]) -> str:
    lines = ["| id | verified | result | evidence |", "|---|---|---|---|"]
    for check in checks:
        lines.append(f"| {check.id} | {check.claim} | {'PASS' if check.ok else 'FAIL'} | {check.detail} |")
    return "\n".join(lines)


# -- Mounts ----------------------------------------------------------------------------------------


class Mounts:
    """tmpfs mounts of this run (root only, inside the private mount namespace run.py enters)."""

    def __init__(self) -> None:
        self.points: t.List[str] = []

    def tmpfs(self, point: str, size: str) -> bool:
        """Mount a fresh tmpfs on ``point``; False (nothing mounted) when not root."""
        if not IS_ROOT:
            return False
        os.makedirs(point, exist_ok=True)
        run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", point])
        self.points.append(point)
        return True

    def umount(self, point: str) -> None:
        if point in self.points:
            # lazily: a process of ours (a container's) may still hold it
            subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)
            self.points.remove(point)

    def close(self) -> None:
        for point in reversed(list(self.points)):
            self.umount(point)


def same_filesystem(a: str, b: str) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def mem_available() -> int:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


# -- The agents' account ---------------------------------------------------------------------------


def agents_account() -> t.Tuple[str, str]:
    """Who owns the agents' state: nobody:nogroup as root (so ownership really changes), else oneself."""
    import grp
    import pwd

    if IS_ROOT:
        try:
            pwd.getpwnam("nobody")
            grp.getgrnam("nogroup")
            return "nobody", "nogroup"
        except KeyError:
            pass
    return pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name


# -- Ansible ---------------------------------------------------------------------------------------


class Ansible:
    """ansible-playbook with the repository installed as agor.persistence, and private temp dirs."""

    def __init__(self, base: str) -> None:
        self.collections = os.path.join(base, "collections")
        link = os.path.join(self.collections, "ansible_collections", "agor", "persistence")
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(REPO, link)
        home = os.path.join(base, "ansible")
        for sub in ("local", "remote", "home"):
            os.makedirs(os.path.join(home, sub), exist_ok=True)
        self.cwd = base  # no ansible.cfg there
        self.env = dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=self.collections,
            ANSIBLE_LOCAL_TEMP=os.path.join(home, "local"),
            ANSIBLE_REMOTE_TMP=os.path.join(home, "remote"),
            ANSIBLE_HOME=os.path.join(home, "home"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_LOCALHOST_WARNING="False",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        )
        self.env.pop("ANSIBLE_CONFIG", None)

    def bin(self, name: str) -> str:
        return os.path.join(VENV_BIN, name)

    def playbook(self, playbook: str, *args: str) -> t.List[str]:
        return [self.bin("ansible-playbook"), playbook, *args]

    def action(self, argv: t.Sequence[str], env: t.Optional[t.Mapping[str, str]] = None) -> t.Callable[[], None]:
        return command(argv, env=dict(self.env, **(env or {})), cwd=self.cwd)

    def run(self, argv: t.Sequence[str], env: t.Optional[t.Mapping[str, str]] = None) -> subprocess.CompletedProcess:
        return run(argv, env=dict(self.env, **(env or {})), cwd=self.cwd)

    def engine_env(self) -> t.Dict[str, str]:
        return dict(self.env, PYTHONPATH=self.collections)


# -- Sandboxes ----------------------------------------------------------------------------------------


def registry() -> t.Dict[str, t.Any]:
    with open(os.path.join(ROLE, "vars", "main.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)["agor_persistence_registry"]


@dataclass
class Sandbox:
    """A home with the volume at <home>/.agor (a tmpfs of its own when root, as on Railway) and the
    role's variables for them in vars.json, so that every start step sees the same paths."""

    root: str
    agents: t.Optional[t.List[str]] = None      # None: the role's default, every registered agent
    extra_links: t.List[t.Dict[str, t.Any]] = field(default_factory=list)
    volume_size: str = "256m"
    account: t.Optional[t.Tuple[str, str]] = None  # (user, group); None: agents_account()

    def __post_init__(self) -> None:
        self.home = os.path.join(self.root, "home", "agor")
        self.volume = os.path.join(self.home, ".agor")
        self.seed_store = os.path.join(self.root, "seed")
        self.user, self.group = self.account or agents_account()
        os.makedirs(self.volume)
        shutil.chown(self.home, self.user, self.group)  # as in an image: the agents' account owns its home
        # The image's defaults, as agor.persistence.build keeps them: copied into empty targets once.
        os.makedirs(os.path.join(self.seed_store, ".claude"))
        with open(os.path.join(self.seed_store, ".claude", "settings.json"), "w", encoding="utf-8") as handle:
            handle.write('{"theme": "dark"}\n')
        self.vars: t.Dict[str, t.Any] = {
            "agor_persistence_user": self.user,
            "agor_persistence_group": self.group,
            "agor_persistence_home": self.home,
            "agor_persistence_volume": self.volume,
            "agor_persistence_require_mount": IS_ROOT,
            "agor_persistence_seed_store": self.seed_store,
            "agor_persistence_extra_links": self.extra_links,
        }
        if self.agents is not None:
            self.vars["agor_persistence_agents"] = self.agents
        self.vars_file = os.path.join(self.root, "vars.json")
        with open(self.vars_file, "w", encoding="utf-8") as handle:
            json.dump(self.vars, handle)

    def mount(self, mounts: Mounts) -> "Sandbox":
        mounts.tmpfs(self.volume, self.volume_size)
        return self

    def links(self) -> t.List[t.Dict[str, t.Any]]:
        """agor_persistence_links, as the role derives it (the same filter)."""
        from ansible_collections.agor.persistence.plugins.filter.persistence import state_links

        reg = registry()
        agents = list(reg) if self.agents is None else self.agents
        return state_links(reg, agents, self.user, self.group, self.home, self.volume, extra_links=self.extra_links)

    def params(self) -> t.Dict[str, t.Any]:
        """The parameters tasks/link_state_paths.yml gives agent_state_link at start."""
        return {
            "links": self.links(), "volume": self.volume, "state": "present", "require_mount": IS_ROOT,
            "owner": self.user, "group": self.group, "conflict": "backup", "seed_store": self.seed_store,
            "manage_volume_root": True,
        }

    def start_argv(self, ansible: Ansible) -> t.List[str]:
        return ansible.playbook("agor.persistence.start", "-e", "@" + self.vars_file)


def extra_links(count: int) -> t.List[t.Dict[str, t.Any]]:
    """``count`` site-specific directory links (.bench/link-NNNN), for the start-at-N-links rows."""
    return [{"path": f".bench/link-{index:04d}"} for index in range(count)]


# -- Trees ------------------------------------------------------------------------------------------


def make_files(root: str, count: int, size: int = 100, per_dir: int = 100) -> None:
    """``count`` small files below ``root``, ``per_dir`` to a directory (like a worktree's sources)."""
    data = (b"x" * 63 + b"\n") * (size // 64 + 1)
    for index in range(count):
        directory = os.path.join(root, f"d{index // per_dir:05d}")
        if index % per_dir == 0:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(os.path.join(directory, f"f{index:06d}.txt"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data[:size])
        finally:
            os.close(fd)


def populate_volume(volume: str, count: int) -> None:
    """Agor's volume after some use: three quarters of the files in worktrees, the rest transcripts."""
    worktrees = count * 3 // 4
    make_files(os.path.join(volume, "worktrees"), worktrees)
    make_files(os.path.join(volume, ".claude", "projects"), count - worktrees, size=400)


def make_sessions(root: str, files: int, total_bytes: int, per_dir: int = 200) -> None:
    """A Claude Code state directory: ``files`` transcripts of varied sizes summing to ``total_bytes``.

    projects/<project>/<session>.jsonl, sizes cycling from 1/8 to 15/8 of the mean; content that
    does not compress or deduplicate.
    """
    mean = total_bytes // files
    pattern = [mean * (1 + 2 * k) // 8 for k in range(8)]  # mean/8 .. 15*mean/8, averaging the mean
    sizes = [pattern[index % len(pattern)] for index in range(files)]
    sizes[-1] += total_bytes - sum(sizes)
    if min(sizes) <= 0:
        raise BenchError(f"cannot spread {total_bytes} bytes over {files} files")
    block = os.urandom(4 * MiB)
    offset = 0
    for index, size in enumerate(sizes):
        directory = os.path.join(root, "projects", f"-work-project-{index // per_dir:03d}")
        if index % per_dir == 0:
            os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"session-{index:05d}.jsonl"), "wb") as handle:
            remaining = size
            while remaining:
                start = offset % (len(block) - 1)
                chunk = block[start:start + min(remaining, len(block) - start)]
                handle.write(chunk)
                remaining -= len(chunk)
                offset += len(chunk) + 4093  # a prime stride: no two files alike
    with open(os.path.join(root, "settings.json"), "w", encoding="utf-8") as handle:
        handle.write("{}\n")


def tree_stats(root: str) -> t.Tuple[int, int]:
    """(regular files, bytes) below ``root``, not following links."""
    files = size = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if not os.path.islink(os.path.join(dirpath, name)):
                files += 1
                size += st.st_size
    return files, size


def clear_dir(path: str) -> None:
    """Empty a directory (keeping it, e.g. a mount point)."""
    for name in os.listdir(path):
        child = os.path.join(path, name)
        if os.path.isdir(child) and not os.path.islink(child):
            shutil.rmtree(child)
        else:
            os.unlink(child)
