# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Turn plans into the module result: per-link records, a readable diff, the totals.

Private to the agor.persistence collection.  Each account's part is built in that account's
process as JSON data (see _privsep); ``report`` joins the parts and root's own steps.
"""

from __future__ import annotations

import grp
import pwd
import typing as t

from ansible_collections.agor.persistence.plugins.module_utils import _plan as P
from ansible_collections.agor.persistence.plugins.module_utils._spec import Job, printable

Action = P.Action

# How the diff names what a step does to the entry at ``path`` (and ``dest``).
_STEP_LINES = {
    Action.BACKUP_VOLUME_ENTRY: "backed up {path} (in the way in the volume) -> {dest}",
    Action.CREATE_DIRECTORY: "created directory {path}",
    Action.SET_GROUP: "set the group of {path}",
    Action.CREATE_HOME_DIRECTORY: "created directory {path}",
    Action.MOVE: "moved {path} -> {dest}",
    Action.BACKUP: "backed up {path} (differs from the volume copy) -> {dest}",
    Action.DROP_DUPLICATE: "dropped {path} (identical to {dest})",
    Action.SEED: "seeded {dest} from {path}",
    Action.CREATE_FILE: "created {path} from initial_content",
    Action.CLEAR_RESTORE: "removed {path} (left by an interrupted rollback)",
    Action.RESTORE: "restored {path} from {dest}",
    Action.CREATE_EMPTY: "created an empty directory at {path}",
    Action.REMOVE_LINK: "removed the link {path}",
}


def conflicts(plan: P.TerritoryPlan) -> t.List[t.Dict[str, str]]:
    return [
        {"path": step.path, "why": "volume entry in the way" if step.action is Action.BACKUP_VOLUME_ENTRY else "differs from the volume copy"}
        for link_plan in plan.links for step in link_plan.conflicts()
    ]


def territory_report(plan: P.TerritoryPlan, warnings: t.Sequence[str]) -> t.Dict[str, t.Any]:
    """One account's part of the module result, as JSON data (it crosses from the account's process;
    ``report`` makes its names printable once, for all accounts)."""
    backups = any(link_plan.conflicts() for link_plan in plan.links)
    return ({
        "links": [_link_record(link_plan) for link_plan in plan.links],
        "diff": {str(link_plan.link.index): _link_diff(link_plan, plan.job.state) for link_plan in plan.links if link_plan.changed},
        "backup_dir": plan.backup_dir if backups else None,
        "conflicts": conflicts(plan),
        "conflict_policy": plan.job.conflict,
        "warnings": list(warnings),
    })


def report(
    job: Job, store_owner: t.Optional[t.Tuple[t.Tuple[int, int], t.Tuple[int, int]]],
    root_steps: t.Mapping[int, t.Sequence[t.Dict[str, str]]], results: t.Sequence[t.Mapping[str, t.Any]],
) -> t.Dict[str, t.Any]:
    """The module result: changed, per-link records in the order given, a diff per changed link.

    ``store_owner`` is the store root's (owner before, owner after) when root re-owns it;
    ``root_steps`` are root's steps (directories it makes), shown on the link that needs them."""
    records = sorted((record for result in results for record in result["links"]), key=lambda record: record["index"])
    diffs = {int(index): diff for result in results for index, diff in result["diff"].items()}
    diff = []
    if store_owner is not None:
        before, after = (_owner_names(*owner) for owner in store_owner)
        diff.append({"before_header": job.store_root, "after_header": job.store_root,
                     "before": f"owner: {before}\n", "after": f"owner: {after}\n"})
    for record in records:
        steps = root_steps.get(record["index"], [])
        if steps:
            record["steps"] = list(steps) + record["steps"]
            record["actions"] = list(dict.fromkeys(step["action"] for step in record["steps"]))
            record["changed"] = True
            diffs.setdefault(record["index"], _record_diff(record))
            lines = "".join(_STEP_LINES[Action(step["action"])].format(path=step["path"], dest="") + "\n" for step in steps)
            diffs[record["index"]]["prepared"] = lines + diffs[record["index"]].get("prepared", "")
        if record["index"] in diffs:
            diff.append(diffs[record["index"]])
        del record["index"]
    backup_dirs = [result["backup_dir"] for result in results if result["backup_dir"]]
    return printable({
        "changed": store_owner is not None or any(record["changed"] for record in records),
        "links": records,
        "backup_dir": backup_dirs[0] if backup_dirs else None,
        "volume_owner_changed": store_owner is not None,
        "diff": diff,
        "warnings": [warning for result in results for warning in result["warnings"]],
    })


def _owner_names(uid: int, gid: int) -> str:
    """``user:group`` by name where the databases know them, else by number."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    try:
        group = grp.getgrgid(gid).gr_name
    except KeyError:
        group = str(gid)
    return f"{user}:{group}"


def _link_record(link_plan: P.LinkPlan) -> t.Dict[str, t.Any]:
    link = link_plan.link

    def paths(action: Action) -> t.List[str]:
        return [step.path for step in link_plan.steps if step.action is action]

    return {
        "index": link.index,
        "path": link.path,
        "target": link.target,
        "kind": link.kind,
        "before": str(link_plan.before),
        "target_before": _target_text(link_plan.target_before),
        "changed": link_plan.changed,
        "actions": link_plan.actions(),
        "steps": [step.as_dict() for step in link_plan.steps],
        "migrated": paths(Action.MOVE),
        "duplicates_removed": paths(Action.DROP_DUPLICATE),
        "backups": [{"path": step.path, "backup": step.dest} for step in link_plan.conflicts()],
        "after": _after(link_plan),
    }


def _target_text(entry: t.Optional[P.Entry]) -> str:
    return "not inspected (state=prepared)" if entry is None else str(entry)


def _after(link_plan: P.LinkPlan) -> t.Dict[str, str]:
    """What stands at the path and at the target once the run is done."""
    link = link_plan.link
    actions = {step.action for step in link_plan.steps}
    target_before = _target_text(link_plan.target_before)
    if link_plan.before.kind is P.Kind.LINK and not link_plan.before.points_to(link.target) and Action.LINK not in actions:
        return {"path": str(link_plan.before), "target": target_before}  # state=absent leaves others' links alone
    if Action.RESTORE in actions or Action.CREATE_EMPTY in actions:
        return {"path": link.kind, "target": target_before}
    if Action.REMOVE_LINK in actions:
        return {"path": "missing", "target": target_before}
    if link_plan.before.points_to(link.target) or Action.LINK in actions:
        target_kind = None if link_plan.target_before is None else link_plan.target_before.kind.value
        filled = link.kind == "directory" or target_kind == "file" or _fills_file_target(link_plan)
        return {"path": f"link to {link.target}", "target": link.kind if filled else "missing"}
    return {"path": str(link_plan.before), "target": target_before}


def _fills_file_target(link_plan: P.LinkPlan) -> bool:
    """Whether a step puts content at a file target (which is otherwise left missing)."""
    for step in link_plan.steps:
        written = step.path if step.action is Action.CREATE_FILE else step.dest
        if step.action in (Action.MOVE, Action.SEED, Action.CREATE_FILE) and written == link_plan.store:
            return True
    return False


def _link_diff(link_plan: P.LinkPlan, state: str) -> t.Dict[str, str]:
    """A short text per link: what stands at the path and the target before and after, then one
    line per entry moved, backed up, dropped as a duplicate, seeded or created."""
    diff = _record_diff(_link_record(link_plan))
    lines = "".join(
        _STEP_LINES[step.action].format(path=step.path, dest=step.dest) + "\n"
        for step in link_plan.steps if step.action is not Action.LINK
    )
    if lines:
        diff["prepared"] = lines
    return diff


def _record_diff(record: t.Mapping[str, t.Any]) -> t.Dict[str, str]:
    before = {"path": record["before"], "target": record["target_before"]}
    return {
        "before_header": record["path"],
        "after_header": record["path"],
        "before": _state_text(record, before),
        "after": _state_text(record, record["after"]),
    }


def _state_text(record: t.Mapping[str, t.Any], state: t.Mapping[str, str]) -> str:
    return f"path   {record['path']}: {state['path']}\ntarget {record['target']}: {state['target']}\n"
