# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Validate agent_state_link parameters into immutable link specs.

Private to the agor.persistence collection: no compatibility promise outside it.
Everything here is pure: it reads the user and group databases, never the filesystem.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import typing as t

STATES = ("present", "prepared", "absent")
KINDS = ("directory", "file")
CONFLICT_POLICIES = ("backup", "fail")

# The module's own bookkeeping directory, one per account below the store it writes (the volume, or
# the seed store at image build): staging area for copies in flight, and backups of conflicting entries.
META_DIR_NAME = ".agent-state-link"
# The state of an account other than the volume root's owner lives below <volume>/users/<name>/.
USERS_DIR_NAME = "users"


def printable(value: t.Any) -> t.Any:
    """Strings (in lists and dicts) as a JSON result can carry them to Ansible.

    os functions decode a name that is not UTF-8 with surrogate escapes; Ansible refuses a module
    result holding one (and would report that instead of the run).  Such bytes are shown as \\xNN.
    """
    if isinstance(value, str):
        try:
            return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(item) for item in value]
    return value


class AgentStateLinkError(Exception):
    """A refusal or failure, with a message that names the parameter or path at fault."""

    def __init__(self, message: str) -> None:
        super().__init__(printable(message))


class LinkSpec(t.NamedTuple):
    """One state path and where it lives in the volume.

    ``uid``/``gid`` are None until the run resolves them when no owner was given: the state then
    belongs to whoever owns the directory that holds the path (the home).
    """

    path: str
    target: str
    kind: str
    initial_content: t.Optional[str]
    uid: t.Optional[int]
    gid: t.Optional[int]
    index: int = 0
    label: str = ""

    def field_name(self, field: str) -> str:
        return field_name(self.index, self.label, field)


def field_name(index: int, label: str, field: str) -> str:
    """How a message names one field of a link: ``links[3].owner``, or ``owner of <label>`` when the
    caller labelled the link in its own terms (``owner of agor_persistence_extra_links[2]``)."""
    return f"{field} of {label}" if label else f"links[{index}].{field}"


def relabel(message: str, labels: t.Mapping[str, str]) -> str:
    """``message`` with each parameter name the caller knows by another name renamed, where a message
    names a parameter: before ``:`` or ``=`` (``require_mount=false`` -> ``agor_persistence_require_mount=false``)."""
    if not labels:
        return message
    pattern = r"(?<![\w.\[])(" + "|".join(re.escape(name) for name in sorted(labels, key=len, reverse=True)) + r")(?=[:=])"
    return re.sub(pattern, lambda match: labels[match.group(1)], message)


class Job(t.NamedTuple):
    """Everything one module run does, validated."""

    links: t.Tuple[LinkSpec, ...]
    volume: str
    state: str
    require_mount: bool
    conflict: str
    seed_store: t.Optional[str]
    manage_volume_root: bool
    uid: t.Optional[int]  # None: no owner given (see LinkSpec)
    gid: t.Optional[int]
    directory_mode: int
    file_mode: int
    lock_timeout: float

    def relative_target(self, link: LinkSpec) -> str:
        """The link's target relative to the volume, e.g. ``.claude``."""
        # Both normalized, the target strictly inside the volume (build_job checks): a slice, not
        # os.path.relpath, which makes both absolute (a getcwd() each) and is called per link and step.
        return link.target[len(self.volume.rstrip("/")) + 1:]

    @property
    def store_root(self) -> str:
        """Where this run keeps content: the volume, or the seed store at image build (prepared)."""
        if self.state == "prepared":
            return t.cast(str, self.seed_store)  # build_job requires it with prepared
        return self.volume


def _absolute(value: t.Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise AgentStateLinkError(f"{name}: must be a non-empty absolute path, got {value!r}")
    if not os.path.isabs(value):
        raise AgentStateLinkError(f"{name}: {value!r} is a relative path; give an absolute path")
    if "\0" in value:
        raise AgentStateLinkError(f"{name}: {value!r} contains a NUL byte")
    if ".." in value.split("/"):
        raise AgentStateLinkError(f"{name}: {value!r} contains '..'; give a path without parent references")
    normalized = os.path.normpath(value)
    if normalized == "/":
        raise AgentStateLinkError(f"{name}: the filesystem root cannot be used")
    return normalized


def is_within(child: str, parent: str) -> bool:
    """True when ``child`` equals or lies below ``parent`` (both normalized)."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def _resolve_user(value: t.Any, name: str) -> t.Tuple[int, int]:
    """Return (uid, primary gid) for a user name or numeric id."""
    text = str(value)
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        if text.isdigit():
            return int(text), -1
        raise AgentStateLinkError(f"{name}: unknown user {text!r}") from None
    return entry.pw_uid, entry.pw_gid


def _resolve_group(value: t.Any, name: str) -> int:
    text = str(value)
    if text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise AgentStateLinkError(f"{name}: unknown group {text!r}") from None


Owner = t.Tuple[t.Optional[int], t.Optional[int]]


def _ownership(owner: t.Any, group: t.Any, where: t.Callable[[str], str], default: Owner) -> Owner:
    """Resolve an owner/group pair; unset values fall back to ``default``."""
    uid, gid = default
    if owner is not None and owner != "":
        uid, primary_gid = _resolve_user(owner, where("owner"))
        gid = primary_gid if primary_gid >= 0 else gid if gid is not None else uid
    if group is not None and group != "":
        gid = _resolve_group(group, where("group"))
    return uid, gid


def _mode(value: t.Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and value != "" and set(value) <= set("01234567"):  # isdigit() let '9' reach int(, 8)
        mode = int(value, 8)
    else:
        raise AgentStateLinkError(f"{name}: {value!r} is not an octal mode such as '0700'")
    if not 0 <= mode <= 0o7777:
        raise AgentStateLinkError(f"{name}: {value!r} is out of range for a file mode")
    return mode


def _choice(value: t.Any, name: str, choices: t.Sequence[str]) -> str:
    if value not in choices:
        raise AgentStateLinkError(f"{name}: {value!r} is not one of {', '.join(choices)}")
    return t.cast(str, value)


def argument_spec() -> t.Dict[str, t.Any]:
    """The module's argument spec, and the one place that holds each parameter's default."""
    return dict(
        links=dict(
            type="list",
            elements="dict",
            required=True,
            options=dict(
                path=dict(type="path", required=True),
                target=dict(type="path", required=True),
                kind=dict(type="str", choices=list(KINDS), default="directory"),
                initial_content=dict(type="str"),
                owner=dict(type="str"),
                group=dict(type="str"),
                label=dict(type="str"),
            ),
        ),
        volume=dict(type="path", required=True),
        require_mount=dict(type="bool", default=True),
        owner=dict(type="str"),
        group=dict(type="str"),
        directory_mode=dict(type="raw", default="0700"),
        file_mode=dict(type="raw", default="0600"),
        conflict=dict(type="str", choices=list(CONFLICT_POLICIES), default="backup"),
        seed_store=dict(type="path"),
        manage_volume_root=dict(type="bool", default=False),
        lock_timeout=dict(type="float", default=120),
        labels=dict(type="dict", default={}),
        state=dict(type="str", choices=list(STATES), default="present"),
    )


def _defaults(options: t.Mapping[str, t.Mapping[str, t.Any]]) -> t.Dict[str, t.Any]:
    return {name: option["default"] for name, option in options.items() if "default" in option}


DEFAULTS = _defaults(argument_spec())
LINK_DEFAULTS = _defaults(argument_spec()["links"]["options"])


def build_job(raw_params: t.Mapping[str, t.Any]) -> Job:
    """Validate raw module parameters; raise AgentStateLinkError naming the first problem.

    Parameters left out (or None, as Ansible passes them) take the argument spec's defaults."""
    params = dict(DEFAULTS, **{name: value for name, value in raw_params.items() if value is not None})
    state = _choice(params["state"], "state", STATES)
    volume = _absolute(params.get("volume"), "volume")
    conflict = _choice(params["conflict"], "conflict", CONFLICT_POLICIES)
    uid, gid = _ownership(params.get("owner"), params.get("group"), str, (None, None))
    seed_store = params.get("seed_store")
    if seed_store is not None:
        seed_store = _absolute(seed_store, "seed_store")
        if is_within(seed_store, volume) or is_within(volume, seed_store):
            raise AgentStateLinkError(
                f"seed_store: {seed_store} overlaps volume {volume}; the seed store must lie outside the volume "
                "because the mounted volume hides whatever the image holds below its mount path"
            )
    if state == "prepared" and seed_store is None:
        raise AgentStateLinkError("seed_store: required with state=prepared, to keep what the image holds at each path")

    raw_links = params.get("links")
    if not isinstance(raw_links, (list, tuple)) or not raw_links:
        raise AgentStateLinkError("links: give a non-empty list of {path, target, kind} entries")
    owners: t.Dict[t.Tuple[str, str], Owner] = {}
    links = tuple(
        _build_link(raw, index, volume, (uid, gid), seed_store, owners) for index, raw in enumerate(raw_links)
    )
    _check_disjoint(links)

    lock_timeout = params["lock_timeout"]
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, (int, float)) or lock_timeout < 0:
        raise AgentStateLinkError(f"lock_timeout: {lock_timeout!r} is not a number of seconds >= 0")

    return Job(
        links=links,
        volume=volume,
        state=state,
        require_mount=bool(params["require_mount"]),
        conflict=conflict,
        seed_store=seed_store,
        manage_volume_root=bool(params["manage_volume_root"]),
        uid=uid,
        gid=gid,
        directory_mode=_mode(params["directory_mode"], "directory_mode"),
        file_mode=_mode(params["file_mode"], "file_mode"),
        lock_timeout=float(lock_timeout),
    )


def _build_link(
    raw: t.Any, index: int, volume: str, default_owner: Owner, seed_store: t.Optional[str],
    owners: t.Dict[t.Tuple[str, str], Owner],
) -> LinkSpec:
    if not isinstance(raw, t.Mapping):
        raise AgentStateLinkError(f"links[{index}]: expected a dictionary with path, target and kind, got {raw!r}")
    label = raw.get("label") or ""

    def where(field: str) -> str:
        return field_name(index, label, field)

    path = _absolute(raw.get("path"), where("path"))
    target = _absolute(raw.get("target"), where("target"))
    kind = _choice(raw.get("kind") or LINK_DEFAULTS["kind"], where("kind"), KINDS)
    if not is_within(target, volume) or target == volume:
        raise AgentStateLinkError(f"{where('target')}: {target} lies outside volume {volume}; every target must be inside it")
    if META_DIR_NAME in target.split("/"):
        raise AgentStateLinkError(f"{where('target')}: {target} runs through a bookkeeping directory {META_DIR_NAME} of the module")
    if path == target:
        raise AgentStateLinkError(f"{where('path')}: {path} equals its target")
    if is_within(target, path):
        raise AgentStateLinkError(f"{where('path')}: {path} contains its target {target}")
    if is_within(path, target):
        raise AgentStateLinkError(f"{where('path')}: {path} lies inside its target {target}")
    if is_within(path, volume) or is_within(volume, path):
        raise AgentStateLinkError(f"{where('path')}: {path} overlaps volume {volume}; state paths must lie outside it")
    if seed_store is not None and (is_within(path, seed_store) or is_within(seed_store, path)):
        raise AgentStateLinkError(f"{where('path')}: {path} overlaps seed_store {seed_store}")
    initial_content = raw.get("initial_content")
    if initial_content is not None:
        if kind != "file":
            raise AgentStateLinkError(f"{where('initial_content')}: only allowed with kind=file")
        if not isinstance(initial_content, str) or initial_content == "":
            raise AgentStateLinkError(
                f"{where('initial_content')}: must be a non-empty string (an empty file breaks programs such as Claude Code)"
            )
    key = (repr(raw.get("owner")), repr(raw.get("group")))  # the user database is read once per owner, not per link
    if key not in owners:
        owners[key] = _ownership(raw.get("owner"), raw.get("group"), where, default_owner)
    uid, gid = owners[key]
    return LinkSpec(path=path, target=target, kind=kind, initial_content=initial_content, uid=uid, gid=gid,
                    index=index, label=label)


def _check_disjoint(links: t.Sequence[LinkSpec]) -> None:
    """Refuse duplicate or nested paths and targets: one link would run through another."""
    if not any(_nesting(getattr(link, attr) for link in links) for attr in ("path", "target")):
        return  # the usual case, found in O(n log n); the pairwise scan below names the offending pair
    for i, first in enumerate(links):
        for j in range(i + 1, len(links)):
            second = links[j]
            for attr in ("path", "target"):
                a, b = getattr(first, attr), getattr(second, attr)
                if a == b:
                    raise AgentStateLinkError(f"{second.field_name(attr)}: {b} is given twice (also {first.field_name(attr)})")
                if is_within(a, b) or is_within(b, a):
                    raise AgentStateLinkError(f"{second.field_name(attr)}: {b} and {first.field_name(attr)} {a} are nested")


def _nesting(paths: t.Iterable[str]) -> bool:
    """True when two of the normalized ``paths`` are equal or one lies below another.

    Sorted with a trailing slash, the paths below a path P directly follow P/, so comparing
    neighbours finds every case.
    """
    keys = sorted(path + "/" for path in paths)
    return any(later.startswith(earlier) for earlier, later in zip(keys, keys[1:]))
