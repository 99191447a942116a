# SPDX-License-Identifier: GPL-3.0-or-later
"""What the real-engine images are made of, built once and cached under .cache/container/ in the checkout.

- a Debian bookworm root filesystem (debootstrap minbase from the mirror apt uses here), as a tarball
  that ``podman import`` turns into the base image (no image registry is reachable);
- the five agent CLIs, installed from the npm registry into a prefix of their own, which the image
  build copies in through a read-only build volume;
- node 20: the host's binary (bookworm's nodejs is 18);
- the containers.podman collection, for the fleet audit;
- ansible-builder, in a virtualenv of its own, for the execution environment.

Run as a script to fill the cache ahead of the tests: ``python3 tests/container/artifacts.py``.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.path.join(REPO, ".cache", "container")

# The versions the fake model API speaks to (field notes, "Driving the real agent CLIs offline").
AGENT_CLIS = {
    "@anthropic-ai/claude-code": "2.1.197",
    "@openai/codex": "0.171.0",
    "@google/gemini-cli": "0.61.0",
    "opencode-ai": "1.18.33",
    "@github/copilot": "1.0.102",
}
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The containers.podman collection (podman connection and inventory plugins) comes out of PyPI's
# ``ansible`` package, which pairs with ansible-core 2.19; Galaxy is not reachable here.
ANSIBLE_PACKAGE = "ansible==12.3.0"
PODMAN_COLLECTION = "ansible_collections/containers/podman/"
# The version noxfile.py's ee-create session pins.
ANSIBLE_BUILDER = "ansible-builder==3.2.0"


def _publish(build, dest: str) -> str:
    """Run ``build(tmp)`` into a temporary name beside ``dest`` and rename it into place: a cache entry
    is either complete or absent, even after an interrupted run."""
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(dest) + ".", suffix=".partial", dir=os.path.dirname(dest))
    try:
        result = build(tmp)
        os.rename(result, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (deb822 sources first, then sources.list)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
    try:
        with open("/etc/apt/sources.list", encoding="utf-8") as handle:
            for line in handle:
                words = line.split()
                if words[:1] == ["deb"] and "security" not in line:
                    return next(word for word in words[1:] if "://" in word)
    except OSError:
        pass
    return DEFAULT_MIRROR


def bookworm_tarball() -> str:
    """A minbase bookworm root filesystem as a tar file (about 40 s to make, then cached)."""

    def build(tmp: str) -> str:
        root = os.path.join(tmp, "root")
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", root, debian_mirror()],
                       check=True, capture_output=True)
        tarball = os.path.join(tmp, "bookworm.tar")
        subprocess.run(["tar", "-C", root, "--numeric-owner", "-cf", tarball, "."], check=True)
        return tarball

    return _publish(build, os.path.join(CACHE, "bookworm-minbase.tar"))


def agent_clis() -> str:
    """An npm prefix (bin/, lib/node_modules/) holding the five agent CLIs at the pinned versions."""
    key = hashlib.sha256(repr(sorted(AGENT_CLIS.items())).encode()).hexdigest()[:12]

    def build(tmp: str) -> str:
        prefix = os.path.join(tmp, "prefix")
        packages = [f"{name}@{version}" for name, version in AGENT_CLIS.items()]
        subprocess.run(["npm", "install", "--global", "--prefix", prefix, "--no-fund", "--no-audit", *packages],
                       check=True, capture_output=True)
        return prefix

    return _publish(build, os.path.join(CACHE, f"agent-clis-{key}"))


def podman_collection() -> str:
    """A collections path holding containers.podman, taken out of the ``ansible`` wheel."""

    def build(tmp: str) -> str:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, ANSIBLE_PACKAGE],
                       check=True, capture_output=True)
        (wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
        root = os.path.join(tmp, "collections")
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root, [name for name in archive.namelist() if name.startswith(PODMAN_COLLECTION)])
        return root

    return _publish(build, os.path.join(CACHE, "collections-" + ANSIBLE_PACKAGE.replace("==", "-")))


def ansible_builder() -> str:
    """The Python of a virtualenv holding ansible-builder: run it as ``python -m ansible_builder`` (the
    virtualenv is made under a temporary name, so its scripts' shebangs do not point at it)."""

    def build(tmp: str) -> str:
        venv = os.path.join(tmp, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True)
        subprocess.run([os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", ANSIBLE_BUILDER],
                       check=True, capture_output=True)
        return venv

    venv = _publish(build, os.path.join(CACHE, ANSIBLE_BUILDER.replace("==", "-")))
    return os.path.join(venv, "bin", "python")


def node_binary() -> str:
    """The host's node 20 (the real file behind ``node`` on PATH)."""
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node is not installed on this machine (scripts/setup installs it)")
    return os.path.realpath(node)


if __name__ == "__main__":
    print(bookworm_tarball(), agent_clis(), podman_collection(), ansible_builder(), sep="\n")
