# SPDX-License-Identifier: GPL-3.0-or-later
"""Rootful podman (Debian's 4.3, with runc) with all of its state in one directory of the suite's own.

``Podman(state_dir)`` writes a containers.conf and a storage.conf there and passes them to every
podman call (``CONTAINERS_CONF``, ``CONTAINERS_STORAGE_CONF``); the host's /var/lib/containers and
/etc/containers are never used.  What this kind of machine needs (field notes, "Real container
engines"): runc (crun refuses the hybrid cgroup layout), container ulimits no higher than root's
hard limits here, cgroupfs and a file event log (no systemd).

Containers run with ``--network none`` (their own network namespace holding only a loopback: the
agent CLIs reach the fake model API there and nothing else); image builds use the host's network,
which reaches the package archives.  ``close()`` removes every container, volume and image, resets
the store and removes the state directory; ``leftovers()`` lists what would still be on the host.
"""

from __future__ import annotations

import glob
import os
import resource
import shutil
import subprocess
import time
import typing as t

PODMAN = "podman"
# What podman writes outside its configured state even so (field notes), deepest first. Every podman
# on the host shares these: they are removed at close (and reported if left) when they did not exist
# before the suite started and no other podman is running.
HOST_DIRS = ("/var/lib/containers/cache", "/var/lib/containers", "/run/containers/networks", "/run/containers", "/run/netns")
ENGINE_COMMANDS = ("podman", "conmon", "buildah", "netavark", "aardvark-dns")


class PodmanError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout:\n{(self.stdout or '')[-4000:]}\nstderr:\n{(self.stderr or '')[-4000:]}"


def _firewall_chains() -> t.Set[str]:
    """The iptables/nftables chains whose names netavark or CNI use, as ``table chain`` strings."""
    chains = set()
    for command in (["iptables-save"], ["ip6tables-save"]):
        if shutil.which(command[0]) is None:
            continue
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        table = ""
        for line in proc.stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":") and any(key in line for key in ("NETAVARK", "CNI-", "PODMAN")):
                chains.add(f"{command[0]} {table} {line[1:].split()[0]}")
    return chains


def _netns_entries() -> t.Set[str]:
    return set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()


class Podman:
    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        os.makedirs(state_dir, exist_ok=True)
        self._host_dirs_before = {path for path in HOST_DIRS if os.path.exists(path)}
        self._netns_before = _netns_entries()
        self._chains_before = _firewall_chains()
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nofile = hard if hard != resource.RLIM_INFINITY else 1048576
        containers_conf = os.path.join(state_dir, "containers.conf")
        storage_conf = os.path.join(state_dir, "storage.conf")
        with open(containers_conf, "w", encoding="utf-8") as handle:
            handle.write(
                "[containers]\n"
                f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=32768:32768"]\n'
                "[engine]\n"
                'runtime = "runc"\n'
                'cgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
                f'tmp_dir = "{state_dir}/tmp"\n'
                f'volume_path = "{state_dir}/storage/volumes"\n'
                f'static_dir = "{state_dir}/storage/libpod"\n'
                "[network]\n"
                f'network_config_dir = "{state_dir}/networks"\n'
            )
        with open(storage_conf, "w", encoding="utf-8") as handle:
            handle.write(f'[storage]\ndriver = "overlay"\ngraphroot = "{state_dir}/storage"\nrunroot = "{state_dir}/run"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=containers_conf, CONTAINERS_STORAGE_CONF=storage_conf)

    def __call__(self, *args: str, check: bool = True, timeout: t.Optional[float] = 600, **kwargs: t.Any) -> subprocess.CompletedProcess:
        proc = subprocess.run([PODMAN, *args], env=self.env, capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, timeout=timeout, **kwargs)
        if check and proc.returncode != 0:
            raise PodmanError(proc.returncode, [PODMAN, *args], proc.stdout, proc.stderr)
        return proc

    # -- images --------------------------------------------------------------------------------

    def import_tarball(self, tarball: str, tag: str) -> None:
        self("import", tarball, tag)

    def build(self, context: str, tag: str, dockerfile: str = "Dockerfile",
              volumes: t.Mapping[str, str] = (), build_args: t.Mapping[str, str] = (), **kwargs: t.Any) -> float:
        """``podman build`` with the host's network, read-only build volumes (host path: image path) and
        ``--build-arg``s; returns the seconds it took."""
        argv = ["build", "--network", "host", "--layers", "-f", os.path.join(context, dockerfile), "-t", tag]
        for host, inside in dict(volumes).items():
            argv += ["-v", f"{host}:{inside}:ro"]
        for key, value in dict(build_args).items():
            argv += ["--build-arg", f"{key}={value}"]
        started = time.monotonic()
        self(*argv, context, timeout=1800, **kwargs)
        return time.monotonic() - started

    def image_size(self, tag: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())

    # -- containers ----------------------------------------------------------------------------

    def run(self, image: str, name: str, mounts: t.Sequence[str] = (), env: t.Mapping[str, str] = (),
            options: t.Sequence[str] = (), command: t.Sequence[str] = ()) -> "Container":
        """``podman run -d`` of ``image`` (its own entrypoint; its own command unless ``command``), with ``-v``
        specs ``mounts`` and further ``podman run`` options."""
        argv = ["run", "-d", "--name", name, "--network", "none", *options]
        for spec in mounts:
            argv += ["-v", spec]
        for key, value in dict(env).items():
            argv += ["-e", f"{key}={value}"]
        self(*argv, image, *command)
        return Container(self, name)

    def volume(self, name: str) -> str:
        self("volume", "create", name)
        return name

    # -- cleanup -------------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every container, volume and image, reset the store, remove the state directory and
        whatever podman created on the host outside it."""
        self("rm", "--all", "--force", "--time", "0", check=False)
        self("volume", "rm", "--all", "--force", check=False)
        self("system", "reset", "--force", check=False)
        if os.path.isdir(self.state_dir):
            for line in reversed(open("/proc/self/mountinfo", encoding="utf-8").read().splitlines()):
                mount_point = line.split()[4]
                if mount_point.startswith(self.state_dir.rstrip("/") + "/"):
                    subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        if _other_engine_running(self.state_dir):
            return
        for path in HOST_DIRS:
            if path in self._host_dirs_before or not os.path.isdir(path):
                continue
            if path.endswith("/cache"):  # image metadata only (blob-info-cache)
                shutil.rmtree(path, ignore_errors=True)
            elif not os.listdir(path):
                subprocess.run(["umount", path], check=False, capture_output=True)  # /run/netns is a bind mount
                os.rmdir(path)

    def leftovers(self) -> t.List[str]:
        """Everything of the suite's that is still on the host after ``close()``: empty when clean."""
        found = []
        if os.path.exists(self.state_dir):
            found.append(f"state directory {self.state_dir}")
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            found += [f"mount {line.split()[4]}" for line in handle if self.state_dir in line.split()[4]]
        found += [f"network namespace /run/netns/{name}" for name in sorted(_netns_entries() - self._netns_before)]
        found += [f"firewall chain {chain}" for chain in sorted(_firewall_chains() - self._chains_before)]
        if not _other_engine_running(self.state_dir):
            found += [f"host directory {path}" for path in HOST_DIRS if path not in self._host_dirs_before and os.path.exists(path)]
        found += [f"process {pid}" for pid in _processes_using(self.state_dir)]
        return found


def _other_engine_running(state_dir: str) -> bool:
    """Whether a podman (or its helpers) not of this state directory runs on the host."""
    for comm in glob.glob("/proc/[0-9]*/comm"):
        try:
            with open(comm, encoding="utf-8") as handle:
                name = handle.read().strip()
            if name in ENGINE_COMMANDS:
                with open(comm[:-len("comm")] + "cmdline", "rb") as handle:
                    if state_dir.encode() not in handle.read():
                        return True
        except OSError:
            continue
    return False


def _processes_using(state_dir: str) -> t.List[str]:
    """conmon and container processes whose command line names the state directory."""
    found = []
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as handle:
                argv = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        if state_dir in argv:
            found.append(f"{cmdline.split('/')[2]} {argv.replace(chr(0), ' ')[:200]}")
    return found


class Container:
    def __init__(self, podman: Podman, name: str) -> None:
        self.podman = podman
        self.name = name

    def exec(self, argv: t.Sequence[str], user: t.Optional[str] = None, env: t.Mapping[str, str] = (),
             workdir: t.Optional[str] = None, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        """``podman exec`` (stdin is /dev/null); as ``user`` when given, else as root."""
        args = ["exec"]
        if user:
            args += ["--user", user]
        if workdir:
            args += ["--workdir", workdir]
        for key, value in dict(env).items():
            args += ["--env", f"{key}={value}"]
        return self.podman(*args, self.name, *argv, check=check, timeout=timeout)

    def sh(self, script: str, user: t.Optional[str] = None, check: bool = True) -> str:
        return self.exec(["sh", "-c", script], user=user, check=check).stdout

    def inspect(self, template: str) -> str:
        return self.podman("inspect", "--format", template, self.name).stdout.strip()

    @property
    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    @property
    def pid(self) -> int:
        return int(self.inspect("{{.State.Pid}}"))

    @property
    def netns(self) -> str:
        """The container's network namespace, as a path the test process can open."""
        return f"/proc/{self.pid}/ns/net"

    def logs(self) -> str:
        proc = self.podman("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def wait_for_log(self, text: str, occurrences: int = 1, timeout: float = 120) -> None:
        """Until the container's output shows ``text`` (that many times: once more per restart); fails
        early when the container exits."""
        deadline = time.monotonic() + timeout
        while True:
            logs = self.logs()
            if logs.count(text) >= occurrences:
                return
            if not self.running:
                raise AssertionError(f"container {self.name} exited before printing {text!r}:\n{logs[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"container {self.name} did not print {text!r} within {timeout} s:\n{logs[-4000:]}")
            time.sleep(0.2)

    def wait_exited(self, timeout: float = 120) -> int:
        return int(self.podman("wait", self.name, timeout=timeout).stdout.strip().splitlines()[-1])

    def restart(self) -> None:
        self.podman("restart", "--time", "10", self.name)

    def remove(self) -> None:
        self.podman("rm", "--force", "--time", "10", self.name)
