# SPDX-License-Identifier: GPL-3.0-or-later
"""The role_links lookup refuses any agor_persistence_* variable it does not know: every name the
role, its tasks and its playbooks define must be known to it, or the role would refuse itself."""

from __future__ import annotations

import glob
import os
import re

import yaml

from ansible_collections.agor.persistence.plugins.lookup.role_links import ROLE_NAMES

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ROLE = os.path.join(REPO, "roles", "agor_persistence")


def load(*parts):
    with open(os.path.join(ROLE, *parts), encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def test_every_name_the_role_defines_is_known():
    specs = load("meta", "argument_specs.yml")["argument_specs"]
    documented = {name for spec in specs.values() for name in spec.get("options", {})}
    assert set(load("defaults", "main.yml")) <= documented, "a default without an argument spec entry"
    defined = {name for name in load("vars", "main.yml") if not name.startswith("__")}
    for path in glob.glob(os.path.join(ROLE, "tasks", "*.yml")) + glob.glob(os.path.join(REPO, "playbooks", "*.yml")):
        text = open(path, encoding="utf-8").read()
        defined |= set(re.findall(r"register: (agor_persistence_\w+)", text))
        defined |= set(re.findall(r"^\s+(agor_persistence_\w+): ", text, re.M)) - documented  # set_fact and play vars
        defined |= set(re.findall(r"(agor_persistence_\w+) \| default\(", text))  # optional playbook variables
    assert defined == set(ROLE_NAMES), "ROLE_NAMES lists exactly what the role defines besides its options"
