# /// script
# dependencies = ["nox>=2025.02.09", "antsibull-nox"]
# ///
"""Test sessions for the agor.persistence collection (antsibull-nox, as community.* collections use).

antsibull-nox.toml configures the standard sessions: ``lint`` (ruff and yamllint, including the YAML in
plugin docs), ``docs-check``, ``extra-checks``, ``build-import-check`` and ``ansible-lint``. This file adds:

* ``shellcheck`` and ``changelog`` (``scripts/lint``);
* ``sanity-X.Y``, ``units-X.Y`` and ``ansible-integration-X.Y`` (tests/integration/targets, ``--local``) for
  ansible-core 2.17, 2.19 and 2.21 (``scripts/ansible-test``): they run
  ansible-test locally in a copy of the collection under ``ansible_collections/agor/persistence`` instead of
  antsibull-nox's container-based ansible-test sessions, which need docker images and GitHub, neither of
  which this kind of machine reaches;
* ``integration``: pytest of tests/functional, tests/reliability and tests/adversarial (playbook runs, real filesystems, crashes,
  as root in a private mount namespace, through ``scripts/test``), ``packaging`` (build, install, run by FQCN);
* ``ee-create``: ``ansible-builder create`` accepts execution-environment.yml;
* ``matrix``: everything above, every ansible-core version. ``nox`` alone runs the fast default set
  (everything but the ansible-core 2.17 and 2.21 sessions, ``integration`` and ``packaging``, which
  ``scripts/test`` runs as part of its pytest run).

Run ``scripts/matrix`` (installs nox and antsibull-nox first), or ``nox -s <session>`` from that virtualenv.
"""

from __future__ import annotations

import os
import shutil
import sys

import nox
import yaml

try:
    import antsibull_nox
except ImportError:
    print("You need to install antsibull-nox in the same Python environment as nox (scripts/matrix does).")
    sys.exit(1)

antsibull_nox.load_antsibull_nox_toml()

DEFAULT_CORE = "2.19"
CORES = ("2.17", "2.19", "2.21")
# The controller Python scripts/ansible-test picks for each: one the release supports and pyenv has here.
CONTROLLER_PYTHON = {"2.17": "3.10", "2.19": "3.11", "2.21": "3.12"}

nox.options.reuse_existing_virtualenvs = True
nox.options.default_venv_backend = "venv"


def _script(session: nox.Session, *args: str) -> None:
    session.run(os.path.join("scripts", args[0]), *args[1:], external=True)


@nox.session(python=False, default=True)
def shellcheck(session: nox.Session) -> None:
    """ShellCheck every shell script, and the entrypoints the role renders (both flavours)."""
    _script(session, "lint", "shellcheck")


@nox.session(python=False, default=True)
def changelog(session: nox.Session) -> None:
    """antsibull-changelog lint, and CHANGELOG.md / CHANGELOG.rst up to date."""
    _script(session, "lint", "changelog")


@nox.session(name="no-sanity-ignores", python=False, default=True)
def no_sanity_ignores(session: nox.Session) -> None:
    """tests/sanity/ holds no ignore-*.txt or skip-*.txt: ansible-test sanity passes as is."""
    _script(session, "lint", "no-sanity-ignores")


def _sanity(core: str):
    def sanity(session: nox.Session) -> None:
        _script(session, "ansible-test", "--core", core, "sanity", "--color", "no", *session.posargs)

    sanity.__doc__ = f"ansible-test sanity from ansible-core {core}, on every target Python this machine has."
    return sanity


def _units(core: str):
    def units(session: nox.Session) -> None:
        _script(
            session, "ansible-test", "--core", core, "units", "--color", "no", "--requirements",
            "--python", CONTROLLER_PYTHON[core], *session.posargs,
        )

    units.__doc__ = f"ansible-test units from ansible-core {core} (Python {CONTROLLER_PYTHON[core]})."
    return units


def _ansible_integration(core: str):
    def ansible_integration(session: nox.Session) -> None:
        # --local: the targets run on this machine, in the ansible-core virtualenv scripts/ansible-test keeps.
        _script(session, "ansible-test", "--core", core, "integration", "--local", "--color", "no", *session.posargs)

    ansible_integration.__doc__ = f"ansible-test integration (tests/integration/targets) from ansible-core {core}, locally."
    return ansible_integration


for _core in CORES:
    nox.session(name=f"sanity-{_core}", python=False, default=False)(_sanity(_core))
    nox.session(name=f"units-{_core}", python=False, default=False)(_units(_core))
    nox.session(name=f"ansible-integration-{_core}", python=False, default=False)(_ansible_integration(_core))


@nox.session(python=False, default=True, requires=[f"sanity-{DEFAULT_CORE}"])
def sanity(session: nox.Session) -> None:
    """ansible-test sanity on the default ansible-core."""


@nox.session(python=False, default=True, requires=[f"units-{DEFAULT_CORE}"])
def units(session: nox.Session) -> None:
    """ansible-test units on the default ansible-core."""


@nox.session(name="ansible-integration", python=False, default=True, requires=[f"ansible-integration-{DEFAULT_CORE}"])
def ansible_integration(session: nox.Session) -> None:
    """ansible-test integration on the default ansible-core."""


@nox.session(name="ee-create", default=True)
def ee_create(session: nox.Session) -> None:
    """ansible-builder create accepts execution-environment.yml, and its build context installs this collection."""
    session.install("ansible-builder==3.2.0")
    context = os.path.join(session.create_tmp(), "ee-context")
    shutil.rmtree(context, ignore_errors=True)
    session.run("ansible-builder", "create", "--file", "execution-environment.yml", "--context", context)
    with open("galaxy.yml", encoding="utf-8") as galaxy:
        repository = yaml.safe_load(galaxy)["repository"]
    with open(os.path.join(context, "_build", "requirements.yml"), encoding="utf-8") as requirements:
        collections = yaml.safe_load(requirements)["collections"]
    if f"{repository}.git" not in [collection["name"] for collection in collections]:
        session.error(f"the execution environment does not install {repository}.git: {collections}")
    with open(os.path.join(context, "Containerfile"), encoding="utf-8") as containerfile:
        if "ansible-runner" not in containerfile.read():
            session.error("the execution environment lacks ansible-runner, which AWX runs every job with")


@nox.session(python=False, default=False)
def integration(session: nox.Session) -> None:
    """pytest of tests/functional, tests/reliability and tests/adversarial: real trees, playbook runs, crashes, attacks,
    as root in a mount namespace."""
    # tests/unit runs in the units-X.Y sessions, test_packaging.py in the packaging session.
    paths = [path for path in ("tests/functional", "tests/reliability", "tests/adversarial") if os.path.isdir(path)]
    _script(session, "test", *paths, "--ignore=tests/functional/test_packaging.py", *session.posargs)


@nox.session(python=False, default=False)
def packaging(session: nox.Session) -> None:
    """ansible-galaxy collection build and install into a fresh virtualenv, ansible-doc and the playbooks by FQCN."""
    _script(session, "test", "tests/functional/test_packaging.py", *session.posargs)


@nox.session(
    python=False,
    default=False,
    requires=[
        "lint",
        "ansible-lint",
        "shellcheck",
        "changelog",
        "no-sanity-ignores",
        "extra-checks",
        "docs-check",
        "build-import-check",
        *(f"sanity-{core}" for core in CORES),
        *(f"units-{core}" for core in CORES),
        *(f"ansible-integration-{core}" for core in CORES),
        "ee-create",
        "integration",
        "packaging",
    ],
)
def matrix(session: nox.Session) -> None:
    """Every check on every ansible-core version (2.17, 2.19, 2.21)."""


if __name__ == "__main__":
    nox.main()
