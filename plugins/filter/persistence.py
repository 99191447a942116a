# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Filters that turn the role's agent registry into agent_state_link links, and audit results into lines."""

from __future__ import annotations

import posixpath
import typing as t

from ansible.errors import AnsibleFilterError

from ansible_collections.agor.persistence.plugins.module_utils._drift import drift_lines

# Targets of further users (see agor_persistence_users) live below this directory of the volume.
USERS_SUBDIR = "users"


def _relative(value: str, name: str) -> str:
    rel = posixpath.normpath(value)
    if rel.startswith("/") or rel == "." or rel.split("/")[0] == "..":
        raise AnsibleFilterError(f"{name}: {value!r} must be a path relative to the home directory")
    return rel


def _absolute(value: t.Any, name: str) -> str:
    """The module would refuse a relative path too, but naming its own parameter, not the role's variable."""
    if not isinstance(value, str) or not posixpath.isabs(value):
        raise AnsibleFilterError(f"{name}: {value!r} must be an absolute path")
    return value


def _entries(registry: t.Mapping[str, t.Any], agents: t.Sequence[str], variable: str) -> t.List[t.Mapping[str, t.Any]]:
    unknown = [agent for agent in agents if agent not in registry]
    if unknown:
        raise AnsibleFilterError(
            f"{variable}: unknown agent(s) {', '.join(map(repr, unknown))}; known agents are {', '.join(sorted(registry))} "
            "(use agor_persistence_extra_links for other paths)"
        )
    return [entry for agent in agents for entry in registry[agent]]


def _link(home: str, target_root: str, entry: t.Mapping[str, t.Any], owner: str, group: str, where: str) -> t.Dict[str, t.Any]:
    rel = _relative(entry["path"], where + ".path")
    link = {
        "path": posixpath.join(home, rel),
        "target": posixpath.join(target_root, rel),
        "kind": entry.get("kind", "directory"),
        "owner": owner,
        "group": group,
    }
    if entry.get("initial_content") is not None:
        link["initial_content"] = entry["initial_content"]
    return link


def state_links(
    registry: t.Mapping[str, t.Any],
    agents: t.Sequence[str],
    user: str,
    group: str,
    home: str,
    volume: str,
    users: t.Sequence[t.Mapping[str, t.Any]] = (),
    extra_links: t.Sequence[t.Mapping[str, t.Any]] = (),
) -> t.List[t.Dict[str, t.Any]]:
    """Every link for the primary user, each further user, and the site's extra links."""
    _absolute(home, "agor_persistence_home")
    _absolute(volume, "agor_persistence_volume")
    links = [
        _link(home, volume, entry, user, group, "agor_persistence_agents")
        for entry in _entries(registry, agents, "agor_persistence_agents")
    ]
    for index, account in enumerate(users):
        where = f"agor_persistence_users[{index}]"
        if not isinstance(account, t.Mapping) or not account.get("name"):
            raise AnsibleFilterError(f"{where}: each further user needs at least a name")
        name = account["name"]
        account_home = _absolute(account.get("home") or f"/home/{name}", where + ".home")
        target_root = posixpath.join(volume, USERS_SUBDIR, name)
        for entry in _entries(registry, account.get("agents", agents), where + ".agents"):
            links.append(_link(account_home, target_root, entry, name, account.get("group") or name, where))
    for index, extra in enumerate(extra_links):
        where = f"agor_persistence_extra_links[{index}]"
        if not isinstance(extra, t.Mapping) or not extra.get("path"):
            raise AnsibleFilterError(f"{where}: needs a path (relative to the home directory)")
        link = _link(home, volume, extra, extra.get("owner") or user, extra.get("group") or group, where)
        if extra.get("target"):
            link["target"] = posixpath.join(volume, _relative(extra["target"], where + ".target"))
        links.append(link)
    return links


def fleet_summary(hosts: t.Sequence[str], hostvars: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """Aggregate every host's drift lines (set as agor_persistence_drift) into one report."""
    report = {}
    for host in hosts:
        drift = hostvars[host].get("agor_persistence_drift")
        report[host] = list(drift) if drift is not None else ["audit did not run on this host"]
    drifted = [host for host, lines in report.items() if lines]
    lines = [f"{host}: {line}" for host in drifted for line in report[host]]
    lines.append(f"{len(drifted)} of {len(report)} host(s) drifted")
    return {"hosts": report, "drifted": drifted, "lines": lines}


class FilterModule:
    def filters(self) -> t.Dict[str, t.Callable[..., t.Any]]:
        return {"state_links": state_links, "drift_lines": drift_lines, "fleet_summary": fleet_summary}
