# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers the tests share: real trees, snapshots that compare byte for byte, content manifests."""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re
import stat
import sys
import typing as t

Entry = t.Tuple[t.Any, ...]


def snapshot(root: str) -> t.Dict[str, Entry]:
    """Every entry below ``root`` (not following links): type, mode, owner, mtime and content or link target."""
    result: t.Dict[str, Entry] = {}
    if not os.path.lexists(root):
        return result
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        common = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
        if stat.S_ISLNK(st.st_mode):
            result[rel] = ("link", os.readlink(path)) + common
        elif stat.S_ISDIR(st.st_mode):
            result[rel] = ("dir", st.st_mtime_ns) + common
            stack.extend(os.path.join(rel, name) for name in os.listdir(path))
        else:
            with open(path, "rb") as handle:
                result[rel] = ("file", hashlib.sha256(handle.read()).hexdigest(), st.st_mtime_ns) + common
    return result


def contents(root: str) -> t.Counter[str]:
    """Multiset of the sha256 of every regular file's content below ``root`` (links not followed)."""
    counter: t.Counter[str] = collections.Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                counter[hashlib.sha256(handle.read()).hexdigest()] += 1
    return counter


def write(path: str, content: str = "x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


def read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


# -- Sandboxes described as data ---------------------------------------------------------------
#
# A layout maps references to what stands there.  A reference is "<root>:<relative path>", the
# roots being the sandbox's home (home:), volume (vol:), a directory outside both (out:, where
# planted links point) and a seed store (seed:).  A value is a file's text, DIR, Link(reference
# or literal link text) or, in expectations only, MISSING.


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DIR = _Marker("DIR")
MISSING = _Marker("MISSING")


class Link(t.NamedTuple):
    dest: str


class Tree:
    """A sandbox below a temporary directory: a home with its volume inside, as on Railway."""

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self.home = os.path.join(self.root, "home", "agor")
        self.volume = os.path.join(self.home, ".agor")
        self.outside = os.path.join(self.root, "outside")
        self.seed_store = os.path.join(self.root, "seed")
        self.roots = {"home": self.home, "vol": self.volume, "out": self.outside, "seed": self.seed_store}
        os.makedirs(self.volume)
        os.makedirs(self.outside)

    def __call__(self, ref: str) -> str:
        """The absolute path a reference names; anything else is returned as it is."""
        prefix, sep, rel = ref.partition(":")
        if not sep or prefix not in self.roots:
            return ref
        return os.path.join(self.roots[prefix], rel) if rel else self.roots[prefix]

    @property
    def meta(self) -> str:
        return os.path.join(self.volume, ".agent-state-link")

    def link(self, path: str, target: str, kind: str = "directory", **extra: t.Any) -> t.Dict[str, t.Any]:
        return dict(path=self(path), target=self(target), kind=kind, **extra)

    def params(self, *links: t.Mapping[str, t.Any], **overrides: t.Any) -> t.Dict[str, t.Any]:
        """Module parameters; references among link paths, targets and string options are resolved."""
        resolved = [dict(raw, path=self(raw["path"]), target=self(raw["target"])) for raw in links]
        params: t.Dict[str, t.Any] = {
            "links": resolved or [self.link("home:.claude", "vol:.claude")],
            "volume": self.volume,
            "require_mount": False,
        }
        params.update({key: self(value) if isinstance(value, str) else value for key, value in overrides.items()})
        return params

    def build(self, layout: t.Mapping[str, t.Any]) -> None:
        for ref, spec in layout.items():
            path = self(ref)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if spec is DIR:
                os.makedirs(path, exist_ok=True)
            elif isinstance(spec, Link):
                os.symlink(self(spec.dest), path)
            else:
                write(path, spec)

    def expect(self, expected: t.Mapping[str, t.Any]) -> None:
        """Assert what stands at each reference, looking at links rather than through them."""
        for ref, spec in expected.items():
            path = self(ref)
            st = os.lstat(path) if os.path.lexists(path) else None
            if spec is MISSING:
                assert st is None, f"{ref}: expected nothing, found {snapshot(path).get('')}"
                continue
            assert st is not None, f"{ref}: expected {spec!r}, found nothing"
            if spec is DIR:
                assert stat.S_ISDIR(st.st_mode), f"{ref}: expected a real directory"
            elif isinstance(spec, Link):
                assert stat.S_ISLNK(st.st_mode) and os.readlink(path) == self(spec.dest), f"{ref}: expected a link to {spec.dest}"
            else:
                assert stat.S_ISREG(st.st_mode), f"{ref}: expected a regular file"
                assert read(path) == spec, f"{ref}: unexpected content"


# -- Running the engine --------------------------------------------------------------------------

_STAMP = re.compile(r"/\.agent-state-link/backups/[^/]+")


def run_engine(params: t.Mapping[str, t.Any], check_mode: bool = False) -> t.Dict[str, t.Any]:
    from ansible_collections.agor.persistence.plugins.module_utils._engine import run

    return run(params, check_mode=check_mode)


def outline(result: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """What check mode must predict of a real run: changed, and per link its actions and steps.

    Backup directories are named after the time of the run, so the stamp is left out.
    """
    return {
        "changed": result["changed"],
        "links": [
            {
                "changed": record["changed"],
                "actions": record["actions"],
                "steps": [{key: _STAMP.sub("/.agent-state-link/backups/*", value) for key, value in step.items()} for step in record["steps"]],
            }
            for record in result["links"]
        ],
    }


def converge(params: t.Mapping[str, t.Any], root: str) -> t.Dict[str, t.Any]:
    """Check mode (``root`` byte for byte unchanged), the real run (same outline), then a rerun
    that has nothing to do (in check mode and for real).  Returns the real run's result."""
    before = snapshot(root)
    predicted = run_engine(params, check_mode=True)
    assert snapshot(root) == before, "check mode changed the tree"
    result = run_engine(params)
    assert outline(predicted) == outline(result), "check mode predicted another run than the real one"
    for check_mode in (True, False):
        again = run_engine(params, check_mode=check_mode)
        assert not again["changed"], f"second run (check_mode={check_mode}) still changes: {outline(again)}"
        assert [record["actions"] for record in again["links"]] == [[] for _ in again["links"]]
    return result


def engine_command(params: t.Mapping[str, t.Any]) -> t.List[str]:
    """argv running the engine in its own process (see engine_cli.py); needs conftest's environment."""
    return [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_cli.py"), json.dumps(params)]


def engine_env() -> t.Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.environ["ANSIBLE_COLLECTIONS_PATH"])
