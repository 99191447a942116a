# SPDX-License-Identifier: GPL-3.0-or-later
"""Property-based tests (Hypothesis) over random starting trees.

Three links (a directory, a file, and a directory two levels below the volume).  For each, what
stands at the path and at the target is drawn from: missing, the right link, a link elsewhere, a
dangling link, a file, a directory holding a random tree (nested directories, files whose names and
contents often coincide with the other side's, so that merges, duplicates and conflicts of content
and of kind arise, and symlinks inside: relative, absolute, dangling, to /etc/shadow); the volume's
intermediate directory may be a link or a file.  The volume is on the home's filesystem or on a
tmpfs of its own; conflicts are backed up or fail the run.

After a successful run (checked by agent_tree.converge: check mode changes nothing and predicts the
run, a rerun has nothing to do): every path is the single-hop link to its real target; every
original file content (home and volume) is in the volume exactly once, at its place or in a
reported backup, less the home copies dropped as identical duplicates, plus what the run created
(initial_content); every original symlink inside the trees likewise, its text unchanged; nothing
outside changed.  After a failed run: the tree is unchanged (the module's own lock aside), and
check mode predicted the failure.

AGOR_PERSISTENCE_HYPOTHESIS=long runs 2000 examples instead of the default suite's 300.
"""

from __future__ import annotations

import collections
import os
import shutil
import stat
import tempfile

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent_tree import Tree, contents, converge, run_engine, snapshot, write
from guarantees import assert_linked, bookkeeping
from mounts import Mounts

from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

settings.register_profile("default", max_examples=300, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", parent=settings.get_profile("default"), max_examples=2000)
PROFILE = "long" if os.environ.get("AGOR_PERSISTENCE_HYPOTHESIS") == "long" else "default"

LINKS = [
    {"path": "home:.claude", "target": "vol:.claude", "kind": "directory"},
    {"path": "home:.claude.json", "target": "vol:.claude.json", "kind": "file"},
    {"path": "home:.config/opencode", "target": "vol:agents/opencode", "kind": "directory"},
]


class Sym(str):
    """A symlink's text in a drawn tree (a reference such as out:dir is resolved when built)."""


MISSING, RIGHT_LINK = "<missing>", "<right link>"
names = st.sampled_from(["a", "b", "s.jsonl", ".hidden", "odd name ✓"])
texts = st.sampled_from(["x", "y", "{}", "", "line\n" * 3])
symlinks = st.sampled_from(["../a", "/etc/shadow", "out:dir", "/nonexistent/agor", "s.jsonl"]).map(Sym)
trees = st.recursive(
    st.dictionaries(names, st.one_of(texts, symlinks), max_size=3),
    lambda inner: st.dictionaries(names, st.one_of(texts, symlinks, inner), max_size=3),
    max_leaves=8,
)
elsewhere = st.sampled_from(["out:dir", "/nonexistent/agor/state"]).map(Sym)  # elsewhere, or dangling
# What stands at a path or a target, weighted toward the right kind (merges need content on both sides).
DIRECTORY_SIDE = st.sampled_from(["missing", "link", "elsewhere", "file", "tree", "tree", "tree"])
FILE_SIDE = st.sampled_from(["missing", "link", "elsewhere", "file", "file", "file", "tree"])
MAKE = {"missing": st.just(MISSING), "link": st.just(RIGHT_LINK), "elsewhere": elsewhere, "file": texts, "tree": trees}


def entries(kind):
    return (DIRECTORY_SIDE if kind == "directory" else FILE_SIDE).flatmap(lambda choice: MAKE[choice])


def build(tree, path, entry, target=None):
    """Make ``entry`` at ``path``: a file's text, a dict for a directory, a Sym, or nothing."""
    if entry == MISSING:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if entry == RIGHT_LINK:
        os.symlink(target, path)
    elif isinstance(entry, Sym):
        os.symlink(tree(entry), path)
    elif isinstance(entry, dict):
        os.mkdir(path)
        for name, child in entry.items():
            build(tree, os.path.join(path, name), child)
    else:
        write(path, entry)


def inventory(root, skip=()):
    """(files: path -> text, symlinks: path -> link text) below ``root``, links not followed."""
    files, links = {}, {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in skip]
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            if path in skip:
                continue
            st_ = os.lstat(path)
            if stat.S_ISLNK(st_.st_mode):
                links[path] = os.readlink(path)
            elif stat.S_ISREG(st_.st_mode):
                with open(path, encoding="utf-8") as handle:
                    files[path] = handle.read()
    return files, links


@pytest.fixture
def scratch(mounts):
    """Room for one sandbox per example (function-scoped fixtures are shared by all examples)."""
    base = tempfile.mkdtemp(prefix="agor-properties-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


@settings(settings.get_profile(PROFILE))
@given(
    homes=st.tuples(*(entries(link["kind"]) for link in LINKS)),
    targets=st.tuples(*(entries(link["kind"]) for link in LINKS)),
    parent=st.sampled_from([MISSING, MISSING, {}, {}, "a file", Sym("out:dir")]),
    initial_content=st.booleans(),
    across=st.booleans(),
    conflict=st.sampled_from(["backup", "backup", "fail"]),
)
def test_random_starting_trees(scratch, homes, targets, parent, initial_content, across, conflict):
    base = tempfile.mkdtemp(dir=scratch)
    tree = Tree(base)
    mounts = Mounts()
    try:
        if across:
            mounts.tmpfs(tree.volume, size="16m")
        write(tree("out:dir/secret"), "outside")
        links = [dict(link, path=tree(link["path"]), target=tree(link["target"])) for link in LINKS]
        if initial_content:
            links[1]["initial_content"] = "{}"
        build(tree, tree("vol:agents"), parent)
        for link, home, target in zip(links, homes, targets, strict=True):
            if os.path.lexists(os.path.dirname(link["target"])) and not os.path.isdir(os.path.dirname(link["target"])):
                target = MISSING  # its parent is a file or a link: nothing can stand below it
            build(tree, link["target"], RIGHT_LINK if target == RIGHT_LINK else target, tree("out:dir"))
            build(tree, link["path"], home, link["target"])
        check(tree, tree.params(*links, conflict=conflict))
    finally:
        mounts.close()
        shutil.rmtree(base, ignore_errors=True)


def check(tree, params):
    files, symlinks = inventory(tree.volume)
    for link in params["links"]:
        if os.path.isdir(link["path"]) and not os.path.islink(link["path"]):
            more_files, more_links = inventory(link["path"])
            files.update(more_files)
            symlinks.update(more_links)
        elif os.path.isfile(link["path"]) and not os.path.islink(link["path"]):
            files[link["path"]] = open(link["path"], encoding="utf-8").read()
    outside, before = snapshot(tree.outside), tree.user_view()

    try:
        predicted = run_engine(params, check_mode=True)
    except AgentStateLinkError as refusal:
        assert params["conflict"] == "fail" and str(refusal).startswith("conflict=fail:"), refusal
        with pytest.raises(AgentStateLinkError) as excinfo:
            run_engine(params)
        assert str(excinfo.value) == str(refusal), "check mode predicted another failure"
        assert tree.user_view() == before, "a failed run changed the tree"
        event("refused: conflict=fail")
        return
    assert predicted is not None
    result = converge(params, tree.root)

    assert_linked(tree, params)
    assert snapshot(tree.outside) == outside, "something outside was touched"
    steps = [step for record in result["links"] for step in record["steps"]]
    for action in {step["action"] for step in steps}:
        event(f"step: {action}")
    dropped = {step["path"] for step in steps if step["action"] == "drop_duplicate"}
    created = sum(step["action"] == "create_file" for step in steps)
    expected_files = collections.Counter(text for path, text in files.items() if path not in dropped)
    expected_files["{}"] += created
    after_files, after_links = inventory(tree.volume, skip=bookkeeping(tree))
    assert collections.Counter(after_files.values()) == expected_files, "a file content lost or duplicated"
    expected_links = collections.Counter(text for path, text in symlinks.items() if path not in dropped)
    assert collections.Counter(after_links.values()) == expected_links, "a symlink lost, duplicated or changed"
    assert contents(tree.home, exclude=[tree.volume]) == collections.Counter(), "state left in the home"

    backups = {entry["path"]: entry["backup"] for record in result["links"] for entry in record["backups"]}
    for path, text in files.items():
        if path in dropped:
            continue
        assert text == _found(path, params, backups, after_files), f"{path}: its content is not where it belongs"
    reported = tuple(backups.values())
    for path in after_files:
        if path.startswith(tree.meta + "/backups/"):
            assert path.startswith(reported), f"{path}: in the backup directory but not reported"


def _found(path, params, backups, after_files):
    """The text at the place a file must be after the run: in a reported backup (its own or an
    ancestor's), else at its place in the target (home files) or where it was (volume files)."""
    for entry, backup in backups.items():
        if path == entry or path.startswith(entry + "/"):
            return after_files.get(backup + path[len(entry):])
    for link in params["links"]:
        if path == link["path"] or path.startswith(link["path"] + "/"):
            return after_files.get(link["target"] + path[len(link["path"]):])
    return after_files.get(path)
