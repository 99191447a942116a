# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
name: role_links
short_description: The agor_persistence role's links, from its variables checked against an entry point's argument spec
version_added: 0.2.0
author: Agor persistence maintainers (@agor-persistence)
description:
  - Used by the P(agor.persistence.agor_persistence#role) role to compute the O(agor.persistence.agent_state_link#module:links)
    of a run. Checks the role's variables against the argument spec of the entry point (C(meta/argument_specs.yml)), takes
    the values that check converted (a string where a list is expected becomes a one-element list, not a list of
    characters), and expands the agent registry with P(agor.persistence.state_links#filter).
  - Refuses a variable named C(agor_persistence_*) that no entry point of the role knows, naming the closest known
    one, so that a typo such as C(agor_persistence_agent) fails instead of being ignored.
  - Only meaningful inside the role, where C(role_path) and the registry are defined.
options:
  _terms:
    description: The entry point whose argument spec applies (V(build), V(start), V(audit) or V(render)).
    type: list
    elements: str
    required: true
"""

EXAMPLES = r"""
- name: The links the start step would handle (inside the role)
  ansible.builtin.debug:
    msg: "{{ query('agor.persistence.role_links', 'start') }}"
"""

RETURN = r"""
_raw:
  description: The links, as P(agor.persistence.state_links#filter) returns them (use C(query), not C(lookup)).
  type: list
  elements: dict
"""

import difflib
import os
import typing as t

import yaml
from ansible.errors import AnsibleLookupError
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.lookup import LookupBase

from ansible_collections.agor.persistence.plugins.filter.persistence import state_links

PREFIX = "agor_persistence_"
# The role's own names besides its entry points' options: its registry and links (vars/main.yml), the
# results it registers, and the audit playbook's host pattern.
ROLE_NAMES = frozenset(PREFIX + name for name in ("registry", "links", "result", "drift", "audit_hosts"))


class LookupModule(LookupBase):
    def run(self, terms: t.List[t.Any], variables: t.Optional[t.Dict[str, t.Any]] = None, **kwargs: t.Any) -> t.List[t.Any]:
        variables = variables or {}
        if len(terms) != 1 or "role_path" not in variables:
            raise AnsibleLookupError("role_links: give one entry point name, from inside the agor_persistence role")
        entry_point = terms[0]
        with open(os.path.join(variables["role_path"], "meta", "argument_specs.yml"), encoding="utf-8") as handle:
            specs = yaml.load(handle, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["argument_specs"]
        known = {name for spec in specs.values() for name in spec.get("options", {})} | ROLE_NAMES
        unknown = sorted(name for name in variables if name.startswith(PREFIX) and name not in known)
        if unknown:
            raise AnsibleLookupError(f"{unknown[0]}: no such variable of the agor_persistence role; {_advice(unknown[0], known)}")
        options = specs[entry_point].get("options", {})
        given = self._templar.template({name: variables[name] for name in options if name in variables})
        errors = [error for name, spec in options.items() for error in _element_errors(name, spec, given.get(name))]
        checked = ArgumentSpecValidator(options).validate(given, validate_role_argument_spec=True)
        errors = errors or checked.error_messages
        if errors:
            raise AnsibleLookupError(f"agor_persistence_* variables of the {entry_point} step: " + "; ".join(errors))
        value = checked.validated_parameters
        registry = self._templar.template(variables[PREFIX + "registry"])
        return state_links(
            registry, value[PREFIX + "agents"], value[PREFIX + "user"], value[PREFIX + "group"], value[PREFIX + "home"],
            value[PREFIX + "volume"], users=value[PREFIX + "users"], extra_links=value[PREFIX + "extra_links"],
        )


def _element_errors(name: str, spec: t.Mapping[str, t.Any], value: t.Any) -> t.List[str]:
    """Problems of each dictionary in a list variable, named with its index (Ansible's messages leave it out)."""
    keys = spec.get("options")
    if not keys or not isinstance(value, list):
        return []
    errors = []
    for index, element in enumerate(value):
        if not isinstance(element, dict):
            continue  # the whole list's check names the type
        unknown = [key for key in element if key not in keys]
        errors += [f"{name}[{index}].{key}: no such key; {_advice(key, keys)}" for key in unknown]
        if not unknown:
            errors += [f"{name}[{index}]: {error}" for error in ArgumentSpecValidator(keys).validate(element).error_messages]
    return errors


def _advice(name: str, known: t.Iterable[str]) -> str:
    """A misspelt name would otherwise be ignored silently, and the default used instead: name the closest known one."""
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"did you mean {close[0]}?" if close else f"known names are {', '.join(sorted(known))}"
