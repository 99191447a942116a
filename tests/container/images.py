# SPDX-License-Identifier: GPL-3.0-or-later
"""The images of the real-engine suite, built with podman from the cached artifacts.

- ``localhost/bookworm-minbase``: the debootstrap tarball, imported;
- ``localhost/agor-like``: made like Agor's production image (images/agor/Dockerfile);
- the user's image, as the README tells a user to make it: ``FROM`` the Agor-like image, then the
  snippet ``ansible-playbook agor.persistence.render`` wrote, with the rendered files and the
  collection tarball (``ansible-galaxy collection build``) in the build context;
- the control: the same image without the snippet;
- the execution environment (ee/bookworm): its base from that Containerfile on the bookworm image,
  then ``ansible-builder create`` of that definition with this checkout's collection tarball, and
  ``podman build`` of the context.

Every user image starts with a release line written before the snippet: a redeploy rebuilds the
image with the next release, so the snippet's layers are rebuilt on a changed image below them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import typing as t
from dataclasses import dataclass

import yaml

import artifacts
from podman_engine import Podman

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BASE = "localhost/bookworm-minbase:latest"
AGOR = "localhost/agor-like:latest"
HOST_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# What the Agor-like image runs: its own entrypoint, with no CMD (images/agor/Dockerfile).
AGOR_ENTRYPOINT = "docker-entrypoint-agor.sh"
EE_DIR = os.path.join(REPO, "ee", "bookworm")
# Package downloads pass a TLS-intercepting proxy here: the host's CA bundle goes into the EE's base
# (a build volume at /mnt/ca), for pip during the EE build. Appended here only, not a user's step.
TRUST_HOST_CA = ("RUN cp /mnt/ca/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt"
                 " && printf '[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n' > /etc/pip.conf\n")


@dataclass(frozen=True)
class Built:
    tag: str
    seconds: float
    size: int  # bytes, as podman reports the image


def build_base(podman: Podman) -> Built:
    started = time.monotonic()
    podman.import_tarball(artifacts.bookworm_tarball(), BASE)
    return Built(BASE, time.monotonic() - started, podman.image_size(BASE))


def build_agor(podman: Podman, workdir: str) -> Built:
    context = os.path.join(workdir, "agor-context")
    shutil.copytree(os.path.join(HERE, "images", "agor"), context)
    node_dir = os.path.join(workdir, "node")
    os.makedirs(node_dir)
    shutil.copy2(artifacts.node_binary(), os.path.join(node_dir, "node"))
    seconds = podman.build(context, AGOR, volumes={
        node_dir: "/mnt/node",
        artifacts.agent_clis(): "/mnt/agent-clis",
        os.path.dirname(HOST_CA_BUNDLE): "/mnt/ca",
    })
    return Built(AGOR, seconds, podman.image_size(AGOR))


def collection_tarball(dest: str) -> str:
    """``ansible-galaxy collection build`` of this checkout into ``dest``; the tarball's path."""
    galaxy = os.path.join(os.path.dirname(sys.executable), "ansible-galaxy")
    subprocess.run([galaxy, "collection", "build", "--force", "--output-path", dest, REPO],
                   check=True, capture_output=True, text=True)
    (tarball,) = [name for name in os.listdir(dest) if name.endswith(".tar.gz")]
    return os.path.join(dest, tarball)


def render_context(dest: str, flavour: str) -> str:
    """A build context as the README makes it: the rendered files (told the Agor-like image's own
    entrypoint, which the rendered one runs after the start step), plus the collection tarball the
    ansible flavour installs."""
    from rendering import render

    render(dest, flavour, {"agor_persistence_image_entrypoint": [AGOR_ENTRYPOINT]}, read=False)
    if flavour == "ansible":
        collection_tarball(dest)
    return dest


def user_dockerfile(snippet: t.Optional[str], release: int) -> str:
    """The user's Dockerfile: the Agor-like image, a release line, then the snippet (none: the control)."""
    lines = [f"FROM {AGOR}", "USER root", f'RUN echo "release {release}" > /etc/agor-release']
    lines.append("USER agor" if snippet is None else snippet.rstrip("\n"))
    return "\n".join(lines) + "\n"


def build_user(podman: Podman, context: str, tag: str, snippet: t.Optional[str], release: int) -> Built:
    dockerfile = f"Dockerfile.release-{release}"
    with open(os.path.join(context, dockerfile), "w", encoding="utf-8") as handle:
        handle.write(user_dockerfile(snippet, release))
    seconds = podman.build(context, tag, dockerfile=dockerfile)
    return Built(tag, seconds, podman.image_size(tag))


def ee_definition() -> t.Dict[str, t.Any]:
    with open(os.path.join(EE_DIR, "execution-environment.yml"), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def build_ee_base(podman: Podman, workdir: str) -> Built:
    """ee/bookworm/Containerfile on the bookworm image, tagged as the definition's base image."""
    context = os.path.join(workdir, "ee-base")
    os.makedirs(context)
    with open(os.path.join(EE_DIR, "Containerfile"), encoding="utf-8") as handle:
        containerfile = handle.read()
    with open(os.path.join(context, "Containerfile"), "w", encoding="utf-8") as handle:
        handle.write(containerfile + TRUST_HOST_CA)
    tag = ee_definition()["images"]["base_image"]["name"]
    seconds = podman.build(context, tag, dockerfile="Containerfile", build_args={"DEBIAN_IMAGE": BASE},
                           volumes={os.path.dirname(HOST_CA_BUNDLE): "/mnt/ca"})
    return Built(tag, seconds, podman.image_size(tag))


def ee_context(workdir: str) -> t.Tuple[str, float]:
    """As a user does in ee/bookworm (here in a copy of it): the collection tarball beside the definition,
    then ``ansible-builder create``. Returns the build context and the seconds ``create`` took."""
    definition_dir = os.path.join(workdir, "ee")
    shutil.copytree(EE_DIR, definition_dir, ignore=shutil.ignore_patterns("context", "*.tar.gz"))
    tarball = os.path.basename(collection_tarball(definition_dir))
    wanted = [entry["src"] for entry in ee_definition()["additional_build_files"]]
    assert wanted == [tarball], f"ee/bookworm/execution-environment.yml names {wanted}, galaxy.yml builds {tarball}"
    context = os.path.join(definition_dir, "context")
    started = time.monotonic()
    created = subprocess.run([artifacts.ansible_builder(), "-m", "ansible_builder", "create", "--file",
                              os.path.join(definition_dir, "execution-environment.yml"), "--context", context],
                             check=False, capture_output=True, text=True)
    assert created.returncode == 0, f"ansible-builder create failed:\n{created.stdout}{created.stderr}"
    return context, time.monotonic() - started


def build_ee(podman: Podman, context: str, tag: str) -> Built:
    seconds = podman.build(context, tag, dockerfile="Containerfile")
    return Built(tag, seconds, podman.image_size(tag))
