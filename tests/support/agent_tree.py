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
from dataclasses import dataclass, field

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
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as handle:
                result[rel] = ("file", hashlib.sha256(handle.read()).hexdigest(), st.st_mtime_ns) + common
        else:  # a FIFO, socket or device: never opened
            result[rel] = ("other", stat.S_IFMT(st.st_mode), st.st_mtime_ns) + common
    return result


def contents(root: str, exclude: t.Iterable[str] = ()) -> t.Counter[str]:
    """Multiset of the sha256 of every regular file's content below ``root`` (links not followed),
    leaving out the paths in ``exclude`` (and what is below them)."""
    skip = set(exclude)
    counter: t.Counter[str] = collections.Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = os.path.join(dirpath, name)
            if path in skip or os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as handle:
                counter[hashlib.sha256(handle.read()).hexdigest()] += 1
    return counter


def reachable(path: str) -> None:
    """Let every account traverse the directories from / to ``path`` (test sandboxes only)."""
    while path != "/":
        mode = os.stat(path).st_mode
        if mode & 0o011 != 0o011:
            os.chmod(path, stat.S_IMODE(mode) | 0o011)
        path = os.path.dirname(path)


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

    def give_to(self, uid: int, gid: int, *refs: str) -> None:
        """As in an image: the home (and ``refs``, e.g. the volume root) belong to the agents'
        account, which must also be able to reach them (pytest's temporary directories are 0700)."""
        reachable(self.root)
        for path in (self.home, *map(self, refs)):
            os.chown(path, uid, gid)

    def user_view(self) -> t.Dict[str, Entry]:
        """snapshot() of the sandbox as a user sees it: the module's bookkeeping directory (the lock a
        refused run still took) left out, and with it the volume root's modification time."""
        meta, volume = os.path.relpath(self.meta, self.root), os.path.relpath(self.volume, self.root)
        return {rel: entry for rel, entry in snapshot(self.root).items()
                if rel != volume and rel != meta and not rel.startswith(meta + "/")}

    def manifest(self) -> t.Counter[str]:
        """contents() of the whole sandbox, the module's lock file and staging area left out."""
        return contents(self.root, exclude=[os.path.join(self.meta, "lock"), os.path.join(self.meta, "staging")])

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
        assert [record["actions"] for record in again["links"]] == [[]] * len(again["links"])
    return result


def engine_command(params: t.Mapping[str, t.Any]) -> t.List[str]:
    """argv running the engine in its own process (see engine_cli.py); needs conftest's environment."""
    return [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "engine_cli.py"), json.dumps(params)]


def engine_env() -> t.Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.environ["ANSIBLE_COLLECTIONS_PATH"])


# -- Table-driven starting states ----------------------------------------------------------------

CLAUDE = {"path": "home:.claude", "target": "vol:.claude"}
CLAUDE_JSON = {"path": "home:.claude.json", "target": "vol:.claude.json", "kind": "file", "initial_content": "{}"}  # as the role's registry
CLAUDE_JSON_BARE = {"path": "home:.claude.json", "target": "vol:.claude.json", "kind": "file"}  # no initial_content
CODEX = {"path": "home:.codex", "target": "vol:.codex"}


@dataclass
class Case:
    """One starting state: the layout, the actions each link takes, what stands after, what is backed up."""

    id: str
    start: t.Dict[str, t.Any]
    actions: t.List[t.List[str]]
    after: t.Dict[str, t.Any]
    links: t.List[t.Dict[str, t.Any]] = field(default_factory=lambda: [CLAUDE])
    backups: t.Dict[str, t.Any] = field(default_factory=dict)  # what each backed-up entry was, keyed like ``start``
    params: t.Dict[str, t.Any] = field(default_factory=dict)


def converge_case(tree: Tree, case: Case) -> t.Tuple[t.Dict[str, t.Any], t.Dict[str, t.Any]]:
    """Build the case, converge it (see converge) and check what every case shares: the actions,
    the layout after, nothing outside touched, no content lost, the backups.  Returns (params, result)."""
    tree.build(case.start)
    params = tree.params(*case.links, **case.params)
    outside, before = snapshot(tree.outside), contents(tree.root)

    result = converge(params, tree.root)

    assert [record["actions"] for record in result["links"]] == case.actions
    assert result["changed"] == any(case.actions)
    tree.expect(case.after)
    assert snapshot(tree.outside) == outside, "something outside the home and the volume was touched"
    assert set(before) <= set(contents(tree.root)), "some content was lost"
    wanted = {ref: Link(tree(spec.dest)) if isinstance(spec, Link) else spec for ref, spec in case.backups.items()}
    assert backed_up(tree, result) == wanted, "each conflicting entry, whole, in the reported backup"
    return params, result


def backed_up(tree: Tree, result: t.Mapping[str, t.Any]) -> t.Dict[str, t.Any]:
    """What each reported backup holds, keyed by the reference of the original entry."""
    found: t.Dict[str, t.Any] = {}
    for entry in (entry for record in result["links"] for entry in record["backups"]):
        assert result["backup_dir"].startswith(tree.meta + "/backups/")
        assert entry["backup"] == result["backup_dir"] + entry["path"]
        ref = next(f"{key}:{os.path.relpath(entry['path'], tree(key + ':'))}" for key in ("vol", "home")
                   if entry["path"].startswith(tree(key + ":") + "/"))
        for rel, kind in snapshot(entry["backup"]).items():
            path = os.path.join(entry["backup"], rel) if rel else entry["backup"]
            found[os.path.join(ref, rel) if rel else ref] = (
                DIR if kind[0] == "dir" else Link(os.readlink(path)) if kind[0] == "link" else open(path, encoding="utf-8").read()
            )
    return found


# -- A grown agent state tree ----------------------------------------------------------------------

ODD_NAMES = (
    "with space", "new\nline", "tab\tname", "ünïcødé ✓ 日本語", "-rf", "--help", ".hidden", "..dots",
    "back\\slash", "quote'\"", "*glob?[x]", "trailing space ", "n" * 200,
)
BAD_UTF8_NAME = b"latin1-\xe9t\xe9"  # a name that is not UTF-8


def populate(root: str, files: int = 10000, outside_secret: t.Optional[str] = None, big: int = 0) -> None:
    """An agent's state as it grows: nested session directories, hidden files, odd names (spaces,
    newlines, unicode, leading dashes, non-UTF-8 bytes), symlinks inside (relative, absolute,
    dangling, to a directory, to /etc/shadow and to ``outside_secret``), an empty file and
    directory, read-only modes, ``files`` small files and ``big`` files of 4 MiB.  Every regular
    file has content of its own, so a content manifest counts each once."""
    write(os.path.join(root, "settings.json"), '{"model": "opus"}')
    write(os.path.join(root, ".credentials.json"), '{"token": "t"}')
    os.chmod(os.path.join(root, ".credentials.json"), 0o600)
    for name in ODD_NAMES:
        write(os.path.join(root, "odd", name), f"file {name}")
        write(os.path.join(root, "odd-dirs", name, name), f"nested {name}")
    with open(os.path.join(os.fsencode(root), b"odd", BAD_UTF8_NAME), "wb") as handle:
        handle.write(b"not utf-8 named")
    links = os.path.join(root, "links")
    os.makedirs(links)
    for name, dest in (("relative", "../settings.json"), ("absolute", os.path.join(root, "settings.json")),
                       ("dangling", "/nonexistent/agor"), ("directory", "../odd"), ("loop", "loop"),
                       ("shadow", "/etc/shadow"), ("secret", outside_secret or "/nonexistent/secret")):
        os.symlink(dest, os.path.join(links, name))
    os.makedirs(os.path.join(root, "empty-dir"))
    open(os.path.join(root, "empty-file"), "w").close()
    write(os.path.join(root, "read-only", "frozen.json"), "frozen")
    os.chmod(os.path.join(root, "read-only", "frozen.json"), 0o444)
    os.chmod(os.path.join(root, "read-only"), 0o555)
    for index in range(files):
        write(os.path.join(root, "projects", f"-work-p{index % 50}", f"session-{index:05d}.jsonl"), f'{{"n": {index}}}\n' * (1 + index % 7))
    for index in range(big):
        with open(os.path.join(root, f"big-{index}.bin"), "wb") as handle:
            handle.write(index.to_bytes(4, "big") * (1 << 20))
    for dirpath, _dirnames, filenames in os.walk(root):  # distinct, old modification times
        for offset, name in enumerate(filenames):
            stamp = 1_600_000_000_000_000_000 + offset
            os.utime(os.path.join(dirpath, name), ns=(stamp, stamp), follow_symlinks=False)


def shape(root: str) -> t.Dict[str, Entry]:
    """snapshot() without directory modification times (moving entries in and out changes them)."""
    return {rel: entry[:1] + entry[2:] if entry[0] == "dir" else entry for rel, entry in snapshot(root).items()}


def sha256_of(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def assert_migrated_whole(tree: Tree, before_shape: t.Mapping[str, Entry], manifest: t.Counter[str]) -> None:
    """The home's tree stands in the volume as it was (owners, modes, times, link texts), every
    file once, nothing dereferenced, and the path is the link."""
    source, target = tree("home:.claude"), tree("vol:.claude")
    assert os.readlink(source) == target
    after = shape(target)
    assert {rel: entry for rel, entry in after.items() if rel in before_shape and rel} == {
        rel: entry for rel, entry in before_shape.items() if rel}
    assert tree.manifest() == manifest, "every file exactly once, home and volume together"
    assert os.readlink(os.path.join(target, "links", "shadow")) == "/etc/shadow"
    assert os.path.islink(os.path.join(target, "links", "directory"))
    secret = sha256_of(tree("out:secret"))
    assert contents(tree.volume)[secret] == 0, "a planted link's target was copied into the volume"
    if os.access("/etc/shadow", os.R_OK):
        assert contents(tree.volume)[sha256_of("/etc/shadow")] == 0, "/etc/shadow was copied into the volume"


def migration_phase(tree: Tree) -> str:
    """Where a kill of a run migrating ``home:.claude`` (with a projects/ directory) landed, told from what it left."""
    staging = os.path.join(tree.meta, "staging")
    if os.path.islink(tree("home:.claude")):
        return "linked"
    if os.path.isdir(staging) and os.listdir(staging):
        return "copies staged"
    if os.path.isdir(tree("vol:.claude/projects")):
        return "copies in place, sources not all removed"
    return "nothing moved yet"
