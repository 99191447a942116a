# SPDX-License-Identifier: GPL-3.0-or-later
"""Packaging: the collection as users get it, built into a tarball and installed into a fresh virtualenv.

``ansible-galaxy collection build``, then ``ansible-galaxy collection install`` of the tarball into a new
virtualenv's site-packages (nothing from this repository on any path), then ``ansible-doc`` renders the
module, the role and a filter, and the playbooks run by FQCN from the installed copy on a sandbox home.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import yaml
from ansible.release import __version__ as ANSIBLE_CORE_VERSION

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.slow


def run(argv, check=True, **kwargs):
    """Run argv, capturing its output; with check, fail the test with that output when it exits non-zero."""
    result = subprocess.run(argv, check=False, capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{argv} exited with {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtualenv with ansible-core and the built collection installed into its site-packages."""
    tmp = tmp_path_factory.mktemp("packaging")
    dist = tmp / "dist"
    galaxy = yaml.safe_load(open(os.path.join(REPO, "galaxy.yml")))
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(dist), REPO], cwd=str(tmp))
    tarball = dist / f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    assert tarball.is_file(), os.listdir(dist)
    members = run(["tar", "-tzf", str(tarball)]).stdout.split()
    for unwanted in (".git/", ".venv/", ".cache/", ".nox/", ".ansible/", ".pytest_cache/", ".hypothesis/", ".ruff_cache/",
                     "tests/output/", ".ci/", "demo/", "scripts/"):
        assert not [m for m in members if m.startswith(unwanted)], f"{unwanted} shipped in the tarball"
    for wanted in ("MANIFEST.json", "FILES.json", "plugins/modules/agent_state_link.py", "meta/runtime.yml", "README.md",
                   "LICENSE", "CHANGELOG.md", "changelogs/changelog.yaml", "roles/agor_persistence/files/build_engine_command.py"):
        assert wanted in members, f"{wanted} missing from the tarball"

    venv = tmp / "venv"
    home = tmp / "user-home"  # HOME for ansible itself: no ~/.ansible/collections from the host
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}  # conftest points at the repository
    env.update(
        HOME=str(home),
        PATH=str(venv / "bin") + os.pathsep + env.get("PATH", ""),
        ANSIBLE_COLLECTIONS_PATH=str(tmp / "no-collections"),  # only the virtualenv's site-packages remain
        ANSIBLE_LOCALHOST_WARNING="False",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
        ANSIBLE_NOCOLOR="True",
    )
    run([sys.executable, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"ansible-core=={ANSIBLE_CORE_VERSION}"])
    site = run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip()
    run([str(venv / "bin" / "ansible-galaxy"), "collection", "install", "--offline", str(tarball), "-p", site], env=env, cwd=str(tmp))
    assert os.path.isfile(os.path.join(site, "ansible_collections", "agor", "persistence", "MANIFEST.json"))

    work = tmp / "work"
    work.mkdir()
    return {"tmp": tmp, "venv": venv, "site": site, "env": env, "cwd": str(work)}


def ansible(installed, *argv, check=True):
    return run([str(installed["venv"] / "bin" / argv[0]), *argv[1:]], env=installed["env"], cwd=installed["cwd"], check=check)


def test_the_installed_copy_is_the_one_found(installed):
    listing = ansible(installed, "ansible-galaxy", "collection", "list", "agor.persistence", "--format", "json").stdout
    found = json.loads(listing)
    assert list(found) == [os.path.join(installed["site"], "ansible_collections")], found


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["agor.persistence.agent_state_link"], ["> MODULE agor.persistence.agent_state_link", "OPTIONS", "links", "require_mount",
                                                 "ATTRIBUTES", "EXAMPLES", "RETURN VALUES", "backup_dir"]),
        (["-t", "role", "agor.persistence.agor_persistence"], [f"ENTRY POINT: *{entry}*" for entry in ("build", "start", "audit", "render")]),
        (["-t", "filter", "agor.persistence.state_links"], ["> FILTER agor.persistence.state_links", "EXAMPLES", "RETURN VALUES"]),
    ],
    ids=["module", "role", "filter"],
)
def test_ansible_doc_renders_from_the_installed_copy(installed, argv, expected):
    text = ansible(installed, "ansible-doc", *argv).stdout
    for needle in expected:
        assert needle in text, f"{needle!r} not in ansible-doc {' '.join(argv)}:\n{text}"
    assert installed["site"] in ansible(installed, "ansible-doc", "--json", *argv).stdout


def test_playbooks_run_by_fqcn_from_the_installed_copy(installed):
    sandbox = installed["tmp"] / "sandbox"
    home, volume, seed = sandbox / "home", sandbox / "volume", sandbox / "seed"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"theme": "dark"}\n')
    volume.mkdir()
    variables = sandbox / "vars.json"
    variables.write_text(json.dumps({
        "agor_persistence_user": run(["id", "-un"]).stdout.strip(),
        "agor_persistence_group": run(["id", "-gn"]).stdout.strip(),
        "agor_persistence_home": str(home),
        "agor_persistence_volume": str(volume),
        "agor_persistence_seed_store": str(seed),
        "agor_persistence_require_mount": False,  # the sandbox volume is a plain directory
    }))

    def playbook(name, *extra, check=True):
        return ansible(installed, "ansible-playbook", f"agor.persistence.{name}", "-e", f"@{variables}", *extra, check=check)

    playbook("build")
    assert os.path.islink(home / ".claude")
    assert (seed / ".claude" / "settings.json").read_text() == '{"theme": "dark"}\n'

    playbook("start", "--diff")
    assert os.readlink(home / ".claude") == str(volume / ".claude")
    assert (volume / ".claude" / "settings.json").read_text() == '{"theme": "dark"}\n'
    assert (volume / ".claude.json").read_text() == "{}"
    again = playbook("start").stdout
    assert "changed=0" in again, again

    report = sandbox / "audit.json"
    audit = playbook("audit", "-e", f"agor_persistence_audit_report={report}", check=False)
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert report.is_file()

    with open(os.path.join(REPO, "roles", "agor_persistence", "vars", "main.yml"), encoding="utf-8") as handle:
        flavours = yaml.safe_load(handle)["__agor_persistence_render_flavours"]
    for flavour in flavours:
        dest = sandbox / f"render-{flavour}"
        playbook("render", "-e", f"agor_persistence_render_dir={dest}", "-e", f"agor_persistence_render_flavour={flavour}")
        assert os.access(dest / "agor-persistence-entrypoint", os.X_OK)
        assert (dest / "Dockerfile.agor-persistence").is_file()
    assert glob.glob(str(sandbox / "render-ansible" / "agor-persistence-vars.yml"))
    # The engine flavour's command, built from the installed collection's module_utils, audits the started sandbox.
    engine = sandbox / "render-engine"
    audit = run([sys.executable, "-I", "-S", str(engine / "agor-persistence"), "audit", "--params",
                 str(engine / "agor-persistence-params.json")])
    assert audit.stdout.endswith(" clean, 7 link(s)\n"), audit.stdout
