# SPDX-License-Identifier: GPL-3.0-or-later
"""Helpers the tests share: real trees, snapshots that compare byte for byte, content manifests."""

from __future__ import annotations

import collections
import hashlib
import os
import stat
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
