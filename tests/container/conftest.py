# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures of the real-engine suite: one rootful podman for the session, the images built once.

The suite needs root, podman (Debian's, with runc) and debootstrap, which ``scripts/setup``
installs as root, and a private mount namespace (``scripts/test`` makes one). Where any of that is
missing it is skipped, so the rest of the suite still runs, unless
``AGOR_PERSISTENCE_REQUIRE_CONTAINERS=1`` (set by CI's ``.ci/run``): then it fails instead.

At the end of the session every container, volume and image is removed and the store is reset;
the teardown fails when anything the suite made is still on the host (``Podman.leftovers``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import typing as t

import pytest

import artifacts
import images
from lifecycle import FLAVOURS, MEASURED
from podman_engine import Podman

REQUIRED = os.environ.get("AGOR_PERSISTENCE_REQUIRE_CONTAINERS") == "1"


def _unavailable(reason: str) -> t.NoReturn:
    if REQUIRED:
        pytest.fail(f"the real-engine suite cannot run (AGOR_PERSISTENCE_REQUIRE_CONTAINERS=1): {reason}")
    pytest.skip(reason)


def _in_private_mount_namespace() -> bool:
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return bool(os.environ.get("AGOR_PERSISTENCE_IN_NAMESPACE"))


@pytest.fixture(scope="session")
def podman() -> t.Iterator[Podman]:
    if os.geteuid() != 0:
        _unavailable("needs root: rootful podman (run scripts/test as root, as CI does)")
    missing = [tool for tool in ("podman", "runc", "debootstrap", "node", "npm") if shutil.which(tool) is None]
    if missing:
        _unavailable(f"not installed: {', '.join(missing)} (scripts/setup installs them as root)")
    if not _in_private_mount_namespace():
        _unavailable("podman's mounts only in a private mount namespace: run the suite through scripts/test")
    engine = Podman(tempfile.mkdtemp(prefix="agor-persistence-podman-"))
    try:
        MEASURED["base image"] = images.build_base(engine)
        engine("run", "--rm", "--network", "none", images.BASE, "true")
    except Exception as exc:  # any reason podman cannot run here: reported, the rest of the suite runs
        engine.close()
        _unavailable(f"podman cannot run a container here: {exc}")
    yield engine
    engine.close()
    leftovers = engine.leftovers()
    assert not leftovers, "the real-engine suite left these behind:\n" + "\n".join(leftovers)


class ImageSet:
    """The images, each built on first use: the Agor-like image, and per flavour (or the control,
    flavour None) the user's image at a release."""

    def __init__(self, podman: Podman, workdir: str) -> None:
        self.podman = podman
        self.workdir = workdir
        self._built: t.Dict[t.Tuple[t.Optional[str], int], images.Built] = {}
        self._contexts: t.Dict[str, str] = {}

    def agor(self) -> images.Built:
        if "agor" not in self._contexts:
            MEASURED["agor-like image"] = images.build_agor(self.podman, self.workdir)
            self._contexts["agor"] = images.AGOR
        return MEASURED["agor-like image"]

    def context(self, flavour: str) -> str:
        if flavour not in self._contexts:
            self._contexts[flavour] = images.render_context(os.path.join(self.workdir, f"context-{flavour}"), flavour)
        return self._contexts[flavour]

    def user(self, flavour: t.Optional[str], release: int = 1) -> str:
        """The user's image tag; the control (no snippet) is built first, so that a flavour's build time
        and size are the snippet's own."""
        key = (flavour, release)
        if key not in self._built:
            self.agor()
            if flavour is None:
                context = os.path.join(self.workdir, "context-control")
                os.makedirs(context, exist_ok=True)
                built = images.build_user(self.podman, context, f"localhost/agor-control:release-{release}", None, release)
            else:
                self.user(None, release)
                context = self.context(flavour)
                with open(os.path.join(context, "Dockerfile.agor-persistence"), encoding="utf-8") as handle:
                    snippet = handle.read()
                built = images.build_user(self.podman, context, f"localhost/agor-{flavour}:release-{release}", snippet, release)
            self._built[key] = built
            MEASURED[f"user image, {flavour or 'control'}, release {release}"] = built
        return self._built[key].tag


@pytest.fixture(scope="session")
def image_set(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> ImageSet:
    return ImageSet(podman, str(tmp_path_factory.mktemp("images")))


@pytest.fixture(params=sorted(FLAVOURS))
def flavour(request: pytest.FixtureRequest) -> str:
    return request.param


def pytest_terminal_summary(terminalreporter: t.Any) -> None:
    """Print what the suite measured (image sizes, build and start times) and keep it in
    .cache/container/measurements.json."""
    if not MEASURED:
        return
    rows = {}
    for name, value in MEASURED.items():
        rows[name] = value.__dict__ if hasattr(value, "__dict__") else value
    terminalreporter.write_sep("-", "real-engine measurements")
    for name, value in rows.items():
        terminalreporter.write_line(f"{name}: {json.dumps(value)}")
    os.makedirs(artifacts.CACHE, exist_ok=True)
    with open(os.path.join(artifacts.CACHE, "measurements.json"), "w", encoding="utf-8") as handle:
        json.dump(rows, handle, indent=2)
