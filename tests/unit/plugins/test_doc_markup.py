# SPDX-License-Identifier: GPL-3.0-or-later
"""Every documentation text of the collection (modules, plugins, doc fragments, the role's argument
specs) uses Ansible's markup so that ansible-doc and the docsite render what the author meant.

C(), I(), B() and the others end at the first closing parenthesis, and V(), O(), E(), RV() at the
first one not escaped by a backslash: an opening parenthesis inside one of them (``C(host(s))``)
means the markup ends earlier than written, which the linters accept (it is valid markup)."""

from __future__ import annotations

import ast
import glob
import os
import re
import subprocess
import sys
import typing as t

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
MARKUP = re.compile(r"\b(RV|[CIBMUVOEP])\(")
ESCAPING = {"V", "O", "E", "RV"}  # these take backslash escapes (antsibull-docs-parser)


def documents() -> t.Iterator[t.Tuple[str, t.Any]]:
    """(where, parsed YAML) of every documentation block."""
    for path in sorted(glob.glob(os.path.join(REPO, "plugins", "*", "*.py"))):
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in tree.body:
            for assign in [node] if isinstance(node, ast.Assign) else []:
                name = getattr(assign.targets[0], "id", "")
                if name in ("DOCUMENTATION", "RETURN") and isinstance(assign.value, ast.Constant):
                    yield f"{os.path.relpath(path, REPO)} {name}", yaml.safe_load(assign.value.value)
            if isinstance(node, ast.ClassDef) and node.name == "ModuleDocFragment":
                for assign in node.body:
                    if isinstance(assign, ast.Assign) and isinstance(assign.value, ast.Constant):
                        yield f"{os.path.relpath(path, REPO)} {assign.targets[0].id}", yaml.safe_load(assign.value.value)
    for path in sorted(glob.glob(os.path.join(REPO, "plugins", "*", "*.yml"))
                       + glob.glob(os.path.join(REPO, "roles", "*", "meta", "argument_specs.yml"))):
        yield os.path.relpath(path, REPO), yaml.safe_load(open(path, encoding="utf-8"))


def texts(node: t.Any, where: str) -> t.Iterator[t.Tuple[str, str]]:
    """Every description-like string below ``node``, with where it is."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("description", "short_description", "notes") or key.startswith("_"):
                for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
                    if isinstance(text, str):
                        yield f"{where}.{key}", text
            if isinstance(value, (dict, list)):
                yield from texts(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from texts(value, f"{where}[{index}]")


def markup_problems(text: str) -> t.List[str]:
    """Markup whose argument holds an unescaped opening parenthesis: it ends before the author meant."""
    problems = []
    for match in MARKUP.finditer(text):
        escaping = match.group(1) in ESCAPING
        index = match.end()
        while index < len(text) and text[index] != ")":
            if escaping and text[index] == "\\":
                index += 1
            elif text[index] == "(":
                problems.append(text[match.start():text.find(")", index) + 1])
                break
            index += 1
    return problems


def test_markup_problems_are_found():
    assert markup_problems("then a C(N of M host(s) drifted) total") == ["C(N of M host(s)"]
    assert markup_problems(r"then a V(N of M host\(s\) drifted) total, C(ls -l), O(links[].kind)") == []


@pytest.mark.parametrize("where, document", list(documents()), ids=lambda value: value if isinstance(value, str) else "")
def test_documentation_markup(where, document):
    found = {place: problems for place, text in texts(document, where) if (problems := markup_problems(text))}
    assert found == {}


def test_ansible_doc_renders_the_fleet_total():
    """The case that was wrong, as ansible-doc prints it."""
    ansible_doc = os.path.join(os.path.dirname(sys.executable), "ansible-doc")
    if not os.path.exists(ansible_doc):
        pytest.skip("no ansible-doc next to this Python (ansible-test units' environment)")
    out = subprocess.run([ansible_doc, "-t", "filter", "agor.persistence.fleet_summary"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, ANSIBLE_NOCOLOR="1")).stdout
    assert "`N of M host(s) drifted' total" in " ".join(out.split())
