# SPDX-License-Identifier: GPL-3.0-or-later
"""``ansible-playbook agor.persistence.render`` writes what a user needs, in both flavours (ansible, engine),
and every shell script the repository ships or renders passes shellcheck."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import stat
import subprocess
import sys
import typing as t

import pytest
import yaml

from rendering import REPO, module_params, playbook, render

ENTRYPOINT = "/usr/local/sbin/agor-entrypoint"
VARS = "/etc/agor/persistence.yml"
COMMAND = "/opt/agor/bin/agor-persistence"
PARAMS = "/etc/agor/params.json"
# Every public variable the image needs, none at its default, so that each is seen to arrive.
VARIABLES = {
    "agor_persistence_user": "agent",
    "agor_persistence_group": "agents",
    "agor_persistence_home": "/srv/agent",
    "agor_persistence_volume": "/data/agent-state",
    "agor_persistence_require_mount": False,
    "agor_persistence_agents": ["claude", "codex"],
    "agor_persistence_extra_links": [{"path": ".netrc", "kind": "file", "target": "secrets/netrc"}],
    "agor_persistence_users": [{"name": "agor_executor", "agents": ["claude"]}],
    "agor_persistence_conflict": "fail",
    "agor_persistence_seed_store": "/opt/agent-seed",
    "agor_persistence_manage_volume_root": False,
}
RENDER_ONLY = {"agor_persistence_entrypoint_path": ENTRYPOINT, "agor_persistence_vars_path": VARS,
               "agor_persistence_command_path": COMMAND, "agor_persistence_params_path": PARAMS}


def _instructions(dockerfile: str) -> t.List[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = dockerfile.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _index(lines: t.Sequence[str], fragment: str) -> int:
    found = [index for index, line in enumerate(lines) if fragment in line]
    assert found, f"no line contains {fragment!r}:\n" + "\n".join(lines)
    return found[0]


def _lines(path: t.Any) -> t.List[str]:
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()


def _executable(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IXUSR)


def test_ansible_flavour(tmp_path):
    files = render(str(tmp_path), "ansible", {**VARIABLES, **RENDER_ONLY})
    assert set(files) == {"Dockerfile.agor-persistence", "agor-persistence-entrypoint", "agor-persistence-vars.yml"}

    docker = _instructions(files["Dockerfile.agor-persistence"])
    assert docker[0] == "USER root"
    assert "'ansible-core==2.19.*'" in docker[_index(docker, "pip install")]
    install = _index(docker, "ansible-galaxy collection install")
    assert _index(docker, "COPY agor-persistence-0.1.0.tar.gz") < install
    copy_vars = _index(docker, f"COPY agor-persistence-vars.yml {VARS}")
    _index(docker, f"COPY agor-persistence-entrypoint {ENTRYPOINT}")
    build = _index(docker, "ansible-playbook agor.persistence.build")
    assert docker[build].startswith("RUN ") and f"-e @{VARS}" in docker[build]
    assert install < build and copy_vars < build, "the build step needs the collection and the variables"
    assert docker[-1] == f'ENTRYPOINT ["{ENTRYPOINT}"]'

    entry = files["agor-persistence-entrypoint"].splitlines()
    assert entry[0] == "#!/bin/sh" and "set -eu" in entry
    start = _index(entry, "ansible-playbook agor.persistence.start")
    assert f"--extra-vars @{VARS}" in entry[start]
    drop = _index(entry, "exec setpriv")
    assert entry[drop].split() == ["exec", "setpriv", "--reuid=agent", "--regid=agents", "--init-groups", "--", '"$@"']
    assert start < _index(entry, "export HOME=/srv/agent USER=agent LOGNAME=agent") < drop
    assert _executable(tmp_path / "agor-persistence-entrypoint")

    assert yaml.safe_load(files["agor-persistence-vars.yml"]) == VARIABLES, "the variables file must round-trip"


def test_ansible_flavour_through_ansible_pull(tmp_path):
    files = render(str(tmp_path), "ansible", {"agor_persistence_pull_url": "https://git.example/agor.persistence.git",
                                              "agor_persistence_pull_version": "v1.2"})
    docker = _instructions(files["Dockerfile.agor-persistence"])
    assert " git" in docker[_index(docker, "apt-get install")], "ansible-pull needs git in the image"
    entry = files["agor-persistence-entrypoint"]
    pull = shlex.split(entry[entry.index("/opt/agor-persistence/bin/ansible-pull"):].split("\n\n")[0].replace("\\\n", " "))
    assert pull[-1] == "playbooks/start.yml"
    assert ["--url", "https://git.example/agor.persistence.git"] == pull[pull.index("--url"):pull.index("--url") + 2]
    assert ["--checkout", "v1.2"] == pull[pull.index("--checkout"):pull.index("--checkout") + 2]
    assert "ansible-playbook" not in entry


def test_engine_flavour(tmp_path):
    files = set(render(str(tmp_path), "engine", {**VARIABLES, **RENDER_ONLY}, read=False))
    assert files == {"Dockerfile.agor-persistence", "agor-persistence-entrypoint", "agor-persistence-params.json",
                     "agor-persistence"}, "no variables file, no collection: the command and its parameters"
    with open(tmp_path / "Dockerfile.agor-persistence", encoding="utf-8") as handle:
        docker = _instructions(handle.read())
    assert docker[0] == "USER root"
    assert not any("pip" in line or "ansible" in line for line in docker), "the engine flavour needs no Ansible"
    install = _index(docker, "apt-get install")
    assert docker[install].split("--no-install-recommends ")[1].split("&&")[0].split() == ["python3-minimal", "libpython3.11-stdlib"]
    assert "rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin" in docker[install], "apt's caches go in the same layer"
    copies = [_index(docker, f"COPY agor-persistence {COMMAND}"), _index(docker, f"COPY agor-persistence-params.json {PARAMS}"),
              _index(docker, f"COPY agor-persistence-entrypoint {ENTRYPOINT}")]
    build = _index(docker, f"RUN {COMMAND} build --params {PARAMS}")
    assert install < min(copies) and max(copies) < build
    assert docker[-1] == f'ENTRYPOINT ["{ENTRYPOINT}"]'

    entry = _lines(tmp_path / "agor-persistence-entrypoint")
    start = entry.index(f"{COMMAND} start --params {PARAMS}")
    assert start < _index(entry, "exec setpriv --reuid=agent --regid=agents --init-groups -- \"$@\"")
    assert _executable(tmp_path / "agor-persistence-entrypoint") and _executable(tmp_path / "agor-persistence")
    with open(tmp_path / "agor-persistence", "rb") as handle:
        assert handle.readline() == b"#!/usr/bin/python3 -I\n"

    with open(tmp_path / "agor-persistence-params.json", encoding="utf-8") as handle:
        params = json.load(handle)
    assert params == {key: value for key, value in module_params(VARIABLES, "present").items() if key != "state"}, (
        "the module's parameters but the state, which each subcommand sets")


def test_engine_flavour_without_python_packages(tmp_path):
    render(str(tmp_path), "engine", {"agor_persistence_engine_packages": []}, read=False)
    with open(tmp_path / "Dockerfile.agor-persistence", encoding="utf-8") as handle:
        assert "apt-get" not in handle.read(), "an image with python3 installs nothing"


def test_rendering_twice_gives_the_same_command(tmp_path):
    """The zipapp is reproducible: rendered again (another directory, later), the same bytes."""
    digests = []
    for name in ("first", "second"):
        render(str(tmp_path / name), "engine", read=False)
        with open(tmp_path / name / "agor-persistence", "rb") as handle:
            digests.append(hashlib.sha256(handle.read()).hexdigest())
    assert digests[0] == digests[1]


@pytest.mark.parametrize("flavour", ["ansible", "engine"])
def test_the_images_own_entrypoint_and_command_run_after_the_start_step(tmp_path, flavour):
    """Agor's production image: ENTRYPOINT ["docker-entrypoint-prod.sh"], no CMD."""
    render(str(tmp_path), flavour, {"agor_persistence_image_entrypoint": ["docker-entrypoint-prod.sh", "--it's"],
                                    "agor_persistence_image_command": ["serve", "--port=3030"]}, read=False)
    entry = _lines(tmp_path / "agor-persistence-entrypoint")
    prepend = entry.index("set -- docker-entrypoint-prod.sh '--it'\"'\"'s' \"$@\"")
    step = _index(entry, "agor-persistence start" if flavour == "engine" else "ansible-playbook agor.persistence.start")
    assert prepend < step < _index(entry, "exec setpriv")
    with open(tmp_path / "Dockerfile.agor-persistence", encoding="utf-8") as handle:
        docker = _instructions(handle.read())
    assert docker[-2:] == ['ENTRYPOINT ["/usr/local/bin/agor-persistence-entrypoint"]', 'CMD ["serve", "--port=3030"]']


def test_the_removed_shell_flavour_names_its_replacement(tmp_path):
    proc = playbook("render", {"agor_persistence_render_flavour": "shell", "agor_persistence_render_dir": str(tmp_path)},
                    check=False)
    assert proc.returncode != 0
    assert "the shell flavour was removed: render with agor_persistence_render_flavour=engine" in proc.stdout, proc.stdout
    assert not os.listdir(tmp_path), "nothing rendered"


# -- shellcheck -------------------------------------------------------------------------------------


def _repository_shell_scripts() -> t.List[str]:
    """Every file of the repository (tracked by git, when it is a checkout) that is a shell script."""
    if os.path.isdir(os.path.join(REPO, ".git")):
        listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True, text=True, check=True).stdout
        paths = [os.path.join(REPO, name) for name in listed.split("\0") if name]
    else:
        paths = [os.path.join(root, name) for root, dirs, names in os.walk(REPO)
                 for name in names if not any(part.startswith(".") for part in os.path.relpath(root, REPO).split(os.sep))]
    scripts = []
    for path in paths:
        if path.endswith(".j2") or not os.path.isfile(path):
            continue  # templates are checked as rendered
        with open(path, "rb") as handle:
            first = handle.readline()
        interpreter = {os.path.basename(word) for word in first[2:].split()} if first.startswith(b"#!") else set()
        if path.endswith(".sh") or interpreter & {b"sh", b"bash", b"dash"}:
            scripts.append(path)
    return scripts


def test_every_shell_script_passes_shellcheck(tmp_path):
    rendered = []
    for name, flavour, variables in [
        ("ansible-defaults", "ansible", {}),
        ("ansible-pull", "ansible", {"agor_persistence_pull_url": "file:///srv/agor.persistence"}),
        ("engine-defaults", "engine", {}),
        ("engine-custom", "engine", {**VARIABLES, "agor_persistence_home": "/srv/it's a home",
                                     "agor_persistence_volume": "/srv/it's a home/state",
                                     "agor_persistence_params_path": "/etc/it's/params.json",
                                     "agor_persistence_image_entrypoint": ["docker-entrypoint-prod.sh", "it's"]}),
    ]:
        render(str(tmp_path / name), flavour, variables, read=False)
        rendered.append(str(tmp_path / name / "agor-persistence-entrypoint"))
    scripts = rendered + _repository_shell_scripts()
    assert any(path.endswith("scripts/test") for path in scripts)
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    proc = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
