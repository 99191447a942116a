# SPDX-License-Identifier: GPL-3.0-or-later
"""Fixtures for tests that need root, mounts or processes of their own."""

from __future__ import annotations

import os
import subprocess

import pytest


def _in_private_mount_namespace() -> bool:
    if os.environ.get("AGOR_PERSISTENCE_IN_NAMESPACE"):  # set by scripts/test once it has unshared
        return True
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        return False


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("needs root, as CI runs the suite (scripts/test as root): changes owners and mounts filesystems")


@pytest.fixture
def mount(as_root):
    """mount(path) puts a fresh tmpfs on ``path``; mount(path, bind=True) bind-mounts it onto itself.

    Everything is unmounted at teardown.  Only inside a private mount namespace (scripts/test makes
    one), so that nothing reaches the host's mount table.
    """
    if not _in_private_mount_namespace():
        pytest.skip("mounts only in a private mount namespace: run the suite through scripts/test")
    mounted = []

    def do(path: str, bind: bool = False, size: str = "512m") -> str:
        if bind:
            command = ["mount", "--bind", path, path]
        else:
            command = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path]
        subprocess.run(command, check=True, capture_output=True)
        mounted.append(path)
        return path

    yield do
    for path in reversed(mounted):
        subprocess.run(["umount", path], check=False, capture_output=True)


@pytest.fixture
def tmpfs_tree(tree, mount):
    """The sandbox with its volume on a tmpfs of its own: the home is another filesystem, as in a container."""
    mount(tree.volume)
    assert os.stat(tree.volume).st_dev != os.stat(tree.home).st_dev
    return tree


@pytest.fixture(scope="session")
def agor_user():
    """The role's default account (agor, uid 1001 when free), created on the host if missing."""
    if os.geteuid() != 0:
        pytest.skip("needs root, as CI runs the suite (scripts/test as root): creates the agor account")
    from container import ensure_user

    return ensure_user("agor", uid=1001)
