# SPDX-License-Identifier: GPL-3.0-or-later
"""Real filesystems for fault tests: tmpfs volumes (small, full, read-only) and a home on an image
layer (overlayfs, where rename() of a lower directory fails with EXDEV as with docker's overlay2).

Needs root in a private mount namespace (scripts/test makes one): nothing reaches the host's mount table.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import typing as t

from agent_tree import Tree, reachable

# Like docker's overlay2 (and tests/support/container.py): no directory renames across layers.
OVERLAY_OPTIONS = "redirect_dir=off,index=off"


def in_private_mount_namespace() -> bool:
    """scripts/test sets AGOR_PERSISTENCE_IN_NAMESPACE once it has unshared the mount namespace."""
    return bool(os.environ.get("AGOR_PERSISTENCE_IN_NAMESPACE"))


def overlay_options(lower: str, upper: str, work: str) -> str:
    return f"lowerdir={lower},upperdir={upper},workdir={work},{OVERLAY_OPTIONS}"


class Mounts:
    """The mounts a test makes; close() unmounts whatever is still mounted, innermost first."""

    def __init__(self) -> None:
        self.points: t.List[str] = []

    def _mount(self, point: str, *argv: str) -> str:
        subprocess.run(["mount", *argv, point], check=True, capture_output=True, text=True)
        self.points.append(point)
        return point

    def tmpfs(self, point: str, size: str = "256m", mode: str = "0755", options: str = "") -> str:
        return self._mount(point, "-t", "tmpfs", "-o", ",".join(filter(None, (f"size={size},mode={mode}", options))), "tmpfs")

    def overlay(self, point: str, lower: str, upper: str, work: str) -> str:
        return self._mount(point, "-t", "overlay", "-o", overlay_options(lower, upper, work), "overlay")

    def private_copy(self, point: str, scratch: str) -> str:
        """A copy of the directory ``point`` in ``scratch``, bind-mounted over it: whatever a (buggy)
        run writes there lands in the copy, never on the host (e.g. /etc), and what other processes
        of the host change there meanwhile (a useradd) does not show."""
        copy = os.path.join(scratch, os.path.basename(point))
        subprocess.run(["cp", "-a", point, copy], check=True, capture_output=True, text=True)
        return self.bind(copy, point)

    def bind(self, source: str, point: str, recursive: bool = False) -> str:
        """A bind mount (with the mounts below ``source`` too when ``recursive``)."""
        return self._mount(point, "--rbind" if recursive else "--bind", source)

    def remount(self, point: str, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", point], check=True, capture_output=True, text=True)

    def umount(self, point: str) -> None:
        """Unmount the topmost mount at ``point`` and the mounts below it."""
        subprocess.run(["umount", "-R", point], check=True, capture_output=True, text=True)
        self.points.reverse()
        self.points.remove(point)  # the last one made there
        self.points.reverse()

    def close(self) -> None:
        for point in reversed(list(self.points)):
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        self.points.clear()


class ImageSandbox:
    """A Tree whose home is an overlay over an image layer and whose volume is a tmpfs inside it,
    as in a container: moving state out of the home is always a copy across filesystems.

    ``image`` (a Tree.build layout of home: references) is built once into the lower layer;
    ``volume`` (vol: references) is written onto each fresh volume; ``populate`` may grow the
    layer further.  reset() discards everything the last run changed, for the next trial.
    """

    def __init__(
        self, base: str, mounts: Mounts, image: t.Mapping[str, t.Any] = (), volume: t.Mapping[str, t.Any] = (),
        grow: t.Optional[t.Callable[[Tree], None]] = None, volume_size: str = "512m", owner: t.Optional[int] = None,
    ) -> None:
        self.base, self.mounts, self.volume_layout, self.volume_size = base, mounts, dict(volume), volume_size
        self.owner = owner
        reachable(base)
        layer = Tree(os.path.join(base, "image"))
        layer.build(dict(image))
        if grow is not None:
            grow(layer)
        if owner is not None:  # the image made the home and its content for the agents' account
            give_to(owner, layer.home)
        self.lower = layer.home
        self.tree = Tree(os.path.join(base, "live"))
        self.trial = 0
        self._start()

    def _start(self) -> None:
        self.mounts.overlay(self.tree.home, self.lower, *self._new_layers())
        self.mounts.tmpfs(self.tree.volume, size=self.volume_size)
        self._fill_volume()

    def _fill_volume(self) -> None:
        """The volume's layout; with an owner, the home and the volume are that account's, as in
        a container after a start."""
        self.tree.build(self.volume_layout)
        if self.owner is not None:
            os.chown(self.tree.home, self.owner, self.owner)
            give_to(self.owner, self.tree.volume)

    def _new_layers(self) -> t.Tuple[str, str]:
        self.trial += 1
        self._layers = (os.path.join(self.base, f"upper-{self.trial}"), os.path.join(self.base, f"work-{self.trial}"))
        for path in self._layers:
            os.makedirs(path)
        return self._layers

    def reset(self) -> Tree:
        """A fresh container of the same image, with a fresh volume holding ``volume`` again
        (one shell for the four mount commands: a sweep resets hundreds of times)."""
        old = self._layers
        upper, work = self._new_layers()
        home, volume = (shlex.quote(path) for path in (self.tree.home, self.tree.volume))
        script = " && ".join([
            f"umount {volume}", f"umount {home}",
            f"mount -t overlay overlay -o {shlex.quote(overlay_options(self.lower, upper, work))} {home}",
            f"mount -t tmpfs -o size={self.volume_size},mode=0755 tmpfs {volume}",
        ])
        subprocess.run(["sh", "-c", script], check=True, capture_output=True, text=True)
        for path in old:
            shutil.rmtree(path)
        self._fill_volume()
        return self.tree


def give_to(uid: int, *roots: str) -> None:
    """lchown every entry below each root to ``uid`` (gid the same), as that user's own files."""
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [dirpath] + [os.path.join(dirpath, entry) for entry in dirnames + filenames]:
                os.lchown(name, uid, uid)
