# SPDX-License-Identifier: GPL-3.0-or-later
"""``ansible-playbook agor.persistence.render`` writes what a user needs, in both flavours, and every
shell script the repository ships or renders passes shellcheck."""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import sys
import typing as t

import yaml

from rendering import REPO, module_params, render

ENTRYPOINT = "/usr/local/sbin/agor-entrypoint"
VARS = "/etc/agor/persistence.yml"
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
RENDER_ONLY = {"agor_persistence_entrypoint_path": ENTRYPOINT, "agor_persistence_vars_path": VARS}


def _instructions(dockerfile: str) -> t.List[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = dockerfile.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _index(lines: t.Sequence[str], fragment: str) -> int:
    found = [index for index, line in enumerate(lines) if fragment in line]
    assert found, f"no line contains {fragment!r}:\n" + "\n".join(lines)
    return found[0]


def _executable(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IXUSR)


def test_ansible_flavour(tmp_path):
    files = render(str(tmp_path), "ansible", {**VARIABLES, **RENDER_ONLY})
    assert set(files) == {"Dockerfile.agor-persistence", "agor-persistence-entrypoint", "agor-persistence-vars.yml"}

    docker = _instructions(files["Dockerfile.agor-persistence"])
    assert docker[0] == "USER root"
    assert "'ansible-core==2.19.*'" in docker[_index(docker, "pip install")]
    install = _index(docker, "ansible-galaxy collection install")
    with open(os.path.join(REPO, "galaxy.yml"), encoding="utf-8") as galaxy:
        version = yaml.safe_load(galaxy)["version"]
    assert _index(docker, f"COPY agor-persistence-{version}.tar.gz") < install, "the tarball galaxy.yml's version builds"
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


def _shell_data_lines(script: str) -> t.List[t.List[str]]:
    body = script[script.index("for_each_link() {"):]
    body = body[:body.index("\n}\n")]
    return [shlex.split(line)[1:] for line in body.splitlines() if line.strip().startswith('"$@" ')]


def test_shell_flavour(tmp_path):
    files = render(str(tmp_path), "shell", {**VARIABLES, **RENDER_ONLY})
    assert set(files) == {"Dockerfile.agor-persistence", "agor-persistence-entrypoint"}, "no Python, no variables file"

    docker = _instructions(files["Dockerfile.agor-persistence"])
    assert not any("pip" in line or "ansible" in line or "python" in line for line in docker)
    copy = _index(docker, f"COPY agor-persistence-entrypoint {ENTRYPOINT}")
    build = _index(docker, "RUN ")
    assert docker[build] == f"RUN AGOR_PERSISTENCE_PHASE=build {ENTRYPOINT}" and copy < build
    assert docker[-1] == f'ENTRYPOINT ["{ENTRYPOINT}"]'

    script = files["agor-persistence-entrypoint"]
    assert script.startswith("#!/bin/sh\n") and _executable(tmp_path / "agor-persistence-entrypoint")
    links = module_params(VARIABLES, "present")["links"]
    assert _shell_data_lines(script) == [
        [link["path"], link["target"], link["kind"], link["owner"], link["group"], link.get("initial_content", "")]
        for link in links
    ], "one data line per link the module would get, in order"
    for line in ("VOLUME=/data/agent-state", "SEED_STORE=/opt/agent-seed", "REQUIRE_MOUNT=false", "MANAGE_VOLUME_ROOT=false",
                 "CONFLICT=fail", "RUN_USER=agent", "RUN_GROUP=agents", "RUN_HOME=/srv/agent"):
        assert f"\n{line}\n" in script
    tail = script[script.rindex("case ${AGOR_PERSISTENCE_PHASE:-start} in"):]
    assert tail.index("run_phase present") < tail.index('run_command "$@"'), "start, then the command"
    assert 'exec setpriv --reuid="$RUN_USER" --regid="$RUN_GROUP" --init-groups -- "$@"' in script
    assert "chown -R" not in script.replace('chown -R -h -- "$uid:$gid" "$copy"', ""), "no recursive chown but of a fresh copy"


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
        ("shell-defaults", "shell", {}),
        ("shell-custom", "shell", {**VARIABLES, "agor_persistence_home": "/srv/it's a home",
                                   "agor_persistence_volume": "/srv/it's a home/state"}),
    ]:
        render(str(tmp_path / name), flavour, variables)
        rendered.append(str(tmp_path / name / "agor-persistence-entrypoint"))
    scripts = rendered + _repository_shell_scripts()
    assert any(path.endswith("scripts/test") for path in scripts)
    shellcheck = os.path.join(os.path.dirname(sys.executable), "shellcheck")
    proc = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
