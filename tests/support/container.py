# SPDX-License-Identifier: GPL-3.0-or-later
"""A container engine stand-in made of Linux mount namespaces and overlayfs (needs root).

No container engine runs where the tests run, so this simulates the parts of one that decide
whether agent state persists:

- An image is a stack of overlayfs layers over the host's root filesystem (the lowest layer, so
  the host's programs, Python and users are there, read-only).  ``Engine.build`` is a Dockerfile
  ``RUN``: the command runs as root in a container of the image, with no volume, and that
  container's upper directory becomes the image's next layer.
- ``Engine.run`` starts a container: a NEW overlay of the image's layers with an empty, throwaway
  upper directory, mounted as the root of a private mount namespace.  As with docker's overlay2,
  ``rename()`` of a directory that lives in an image layer fails with EXDEV.  Volumes are host
  directories bind-mounted at their paths (the only thing that outlives the container); /tmp is a
  fresh tmpfs; /proc, /dev and /sys are the host's.
- ``Container.restart`` stops every process in the container, discards the upper directory and
  starts again from the image with the same volumes.  ``Container.exec`` is ``docker exec``:
  the command runs in the container's mount namespace and root, as root or as a user.

Layers and upper directories live on a tmpfs that only the engine's own mount namespace sees;
nothing is mounted in the caller's namespace, so the host's mount table and paths never change.
Everything is unmounted when the engine is closed (or when the process using it dies).

    with Engine(shared={"/opt/tool": "/path/on/host"}) as engine:
        image = engine.build(["sh", "-c", "mkdir -p /home/agor && chown agor: /home/agor"])
        image = engine.build(["ansible-playbook", "agor.persistence.build"], base=image)
        container = engine.run(image, volumes={"/home/agor/.agor": "/tmp/volume"})
        container.exec(["ansible-playbook", "agor.persistence.start"])
        container.exec(["sh", "-c", "echo hi > ~/.codex/note"], user="agor")
        container.restart()
"""

from __future__ import annotations

import ctypes
import itertools
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import typing as t
from dataclasses import dataclass

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Like docker's overlay2: no directory renames across layers (EXDEV), no inode index.
OVERLAY_OPTIONS = "redirect_dir=off,index=off"
_PR_SET_PDEATHSIG = 1
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def host_paths_hidden_by_tmp() -> t.Dict[str, str]:
    """The checkout and the running interpreter's environment, when they lie below /tmp.

    The host's root filesystem is every container's lowest layer, so containers run the tests'
    own Python and scripts from there; but a container's /tmp is a fresh tmpfs, which hides a
    checkout (and its .venv) living below the host's /tmp.  These are mounted back at their paths."""
    paths = sorted({os.path.realpath(path) for path in (CHECKOUT, sys.prefix)})
    below_tmp = [path for path in paths if path.startswith("/tmp/")]
    outermost = [path for path in below_tmp if not any(path.startswith(other + "/") for other in below_tmp)]
    return {path: path for path in outermost}


def _die_with_parent() -> None:
    """preexec_fn: the engine's and containers' processes get SIGKILL when the test process dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _spawn_until_ready(argv: t.Sequence[str]) -> subprocess.Popen:
    """Start a process whose script prints "ready" once its mounts are in place, then waits forever."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_die_with_parent)
    assert proc.stdout is not None and proc.stderr is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{argv[0]} failed to start: {proc.stderr.read().strip()}")
    proc.stdout.close()
    proc.stderr.close()
    return proc


def ensure_user(name: str = "agor", uid: int = 1001) -> pwd.struct_passwd:
    """The account, created on the host (uid ``uid`` when free, own group, no home) if it does not exist.

    The containers see the host's /etc/passwd through the lowest layer; the home comes from the image.
    """
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    argv = ["useradd", "--user-group", "--no-create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/sh", name]
    try:
        pwd.getpwuid(uid)
    except KeyError:
        argv[1:1] = ["--uid", str(uid)]
    subprocess.run(argv, check=True, capture_output=True)
    return pwd.getpwnam(name)


class ExecError(subprocess.CalledProcessError):
    """A command in a container failed; the message carries the end of its output."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{(self.stdout or '')[-3000:]}\n{(self.stderr or '')[-3000:]}"


@dataclass(frozen=True)
class Image:
    """Layer directories in the engine's storage, lowest first (the host's root filesystem lies below)."""

    layers: t.Tuple[str, ...] = ()


class Engine:
    """Owns a private mount namespace with a tmpfs holding every layer and upper directory.

    ``shared`` maps container paths to host paths bind-mounted read-only into every container
    (tools and checkouts the image would contain); the checkout and the tests' interpreter
    environment are always visible at their own paths, even below /tmp.  Host paths (shared ones
    and volumes) are looked up in the engine's namespace, a copy of the caller's when the engine
    starts: mount a tmpfs meant as a volume before creating the engine.
    """

    def __init__(self, shared: t.Optional[t.Mapping[str, str]] = None, size: str = "2g") -> None:
        if os.geteuid() != 0:
            raise PermissionError("the container simulator needs root (mount namespaces, overlayfs)")
        self.shared = {**host_paths_hidden_by_tmp(), **(shared or {})}
        self._dir = tempfile.mkdtemp(prefix="agor-container-engine-")
        self.storage = os.path.join(self._dir, "storage")  # a tmpfs, in the engine's namespace only
        os.mkdir(self.storage)
        self._ids = itertools.count()
        self._containers: t.List[Container] = []
        script = f"mount -t tmpfs -o size={size},mode=0700 agor-container-engine {shlex.quote(self.storage)} && echo ready && exec sleep infinity"
        self._proc = _spawn_until_ready(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script])

    def path(self, path: str) -> str:
        """Where the test process reaches ``path`` of the engine's namespace (a layer, an upper directory)."""
        return f"/proc/{self._proc.pid}/root{path}"

    def new_dir(self, kind: str) -> str:
        """A new, empty, root-owned 0755 directory in the storage (0755: an upper's root is the container's /)."""
        path = os.path.join(self.storage, f"{kind}-{next(self._ids)}")
        os.mkdir(self.path(path), 0o755)
        return path

    def discard(self, path: str) -> None:
        shutil.rmtree(self.path(path), ignore_errors=True)

    def run(self, image: Image, volumes: t.Optional[t.Mapping[str, str]] = None) -> "Container":
        """Start a container of ``image`` with ``volumes`` (container path to host directory) mounted."""
        container = Container(self, image, dict(volumes or {}))
        self._containers.append(container)
        return container

    def build(self, command: t.Sequence[str], base: Image = Image(), env: t.Optional[t.Mapping[str, str]] = None) -> Image:
        """A Dockerfile RUN: ``command`` as root in a container of ``base`` with no volume; its changes
        become a new layer.  Raises ExecError (with the output) when the command fails."""
        container = self.run(base)
        try:
            container.exec(command, env=env, check=True)
        finally:
            container.stop()
        layer = container.upper
        container.upper = None  # the layer now belongs to the image
        return Image(base.layers + (layer,))

    def close(self) -> None:
        for container in self._containers:
            container.stop()
        self._proc.kill()
        self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)  # the tmpfs went with the namespace: an empty mount point

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc_info: t.Any) -> None:
        self.close()


class Container:
    """A running container; see ``Engine.run``."""

    def __init__(self, engine: Engine, image: Image, volumes: t.Mapping[str, str]) -> None:
        self.engine, self.image, self.volumes = engine, image, volumes
        self.upper: t.Optional[str] = None
        self._init: t.Optional[subprocess.Popen] = None
        self.start()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Mount a new overlay of the image with an empty upper directory, the volumes and the shared paths."""
        assert self._init is None, "already running"
        engine = self.engine
        self.upper, work, root = engine.new_dir("upper"), engine.new_dir("work"), engine.new_dir("root")
        lower = ":".join([*reversed(self.image.layers), "/"])
        q = shlex.quote
        lines = [
            "set -e",
            f"mount -t overlay overlay -o lowerdir={lower},upperdir={self.upper},workdir={work},{OVERLAY_OPTIONS} {q(root)}",
            f"mount -t proc proc {q(root)}/proc",
            f"mount --rbind /dev {q(root)}/dev",
            f"mount --rbind /sys {q(root)}/sys",
            f"mount -t tmpfs -o mode=1777 tmpfs {q(root)}/tmp",
        ]
        for point, source in sorted(engine.shared.items()):
            lines += [f"mkdir -p {q(root + point)}", f"mount --bind -o ro {q(source)} {q(root + point)}"]
        for point, source in sorted(self.volumes.items()):  # docker creates missing mount points in the container layer
            lines += [f"mkdir -p {q(root + point)}", f"mount --bind {q(source)} {q(root + point)}"]
        # "ready" once chrooted: from then on /proc/<pid>/root is the container's root.
        lines.append(f"exec chroot {q(root)} sh -c 'echo ready; exec sleep infinity </dev/null >/dev/null 2>&1'")
        argv = ["nsenter", f"--target={engine._proc.pid}", "--mount", "--",
                "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(lines)]
        self._init = _spawn_until_ready(argv)
        self._work = work
        self._root = root

    def stop(self) -> None:
        """Kill every process in the container (its mount namespace dies with the last one). Keeps the upper."""
        if self._init is None:
            return
        namespace = os.readlink(f"/proc/{self._init.pid}/ns/mnt")
        for pid in (int(name) for name in os.listdir("/proc") if name.isdigit()):
            try:
                if pid != self._init.pid and os.readlink(f"/proc/{pid}/ns/mnt") == namespace:
                    os.kill(pid, signal.SIGKILL)
            except OSError:  # gone meanwhile, or not ours to inspect
                pass
        self._init.kill()
        self._init.wait()
        self._init = None
        for path in (self._work, self._root):
            self.engine.discard(path)

    def restart(self) -> None:
        """docker restart of a container created with --rm semantics: everything but the volumes is reset."""
        self.stop()
        if self.upper is not None:
            self.engine.discard(self.upper)
        self.start()

    # -- inside ----------------------------------------------------------------------------------

    def path(self, path: str) -> str:
        """Where the test process reaches ``path`` as the container sees it (through the volumes too).

        Absolute symlinks met on the way resolve against the TEST's root, not the container's: read
        through the agents' links with ``exec`` (``cat``), or look at the links with lstat/readlink."""
        assert self._init is not None, "not running"
        return f"/proc/{self._init.pid}/root{path}"

    def exec(
        self,
        command: t.Sequence[str],
        user: t.Optional[str] = None,
        cwd: t.Optional[str] = None,
        env: t.Optional[t.Mapping[str, str]] = None,
        timeout: float = 300,
        check: bool = False,
    ) -> subprocess.CompletedProcess:
        """docker exec: run ``command`` in the container, as root or as ``user`` (with its groups), in
        ``cwd`` (default: its home), with a clean environment plus ``env``.  Output is captured as text."""
        assert self._init is not None, "not running"
        account = self._passwd(user or "root")
        environ = {"PATH": PATH, "HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name,
                   "SHELL": account.pw_shell, "LANG": "C.UTF-8"}
        environ.update(env or {})
        argv = ["nsenter", f"--target={self._init.pid}", "--mount", "--root", "--"]
        if user:
            argv += ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--init-groups", "--"]
        argv += ["env", "-i", f"--chdir={cwd or account.pw_dir}", *(f"{k}={v}" for k, v in environ.items()), *command]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=_die_with_parent, check=False)
        if check and result.returncode:
            raise ExecError(result.returncode, list(command), result.stdout, result.stderr)
        return result

    def _passwd(self, name: str) -> pwd.struct_passwd:
        """The account as the container's /etc/passwd describes it."""
        with open(self.path("/etc/passwd"), encoding="utf-8") as passwd:
            for line in passwd:
                fields = line.rstrip("\n").split(":")
                if fields[0] == name:
                    return pwd.struct_passwd((fields[0], fields[1], int(fields[2]), int(fields[3]), *fields[4:7]))
        raise KeyError(f"no user {name!r} in the container")
