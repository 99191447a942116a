# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Audit findings as lines, shared by the role's drift_lines filter and the agor-persistence command.

Private to the agor.persistence collection; standard library only.
"""

from __future__ import annotations

import typing as t


def drift_lines(result: t.Mapping[str, t.Any]) -> t.List[str]:
    """One line per drifted path of an agent_state_link check-mode result; empty when clean."""
    if "links" not in result:
        return [f"audit failed: {result.get('msg', 'no result')}"]
    lines = []
    for link in result["links"]:
        if not link["changed"]:
            continue
        wanted = f"link to {link['target']}"
        found = link["before"]
        problem = f"is {found}, expected {wanted}" if found != wanted else f"target {link['target']} is {link['target_before']}"
        lines.append(f"{link['path']}: {problem}; start would {', '.join(link['actions'])}")
    if result.get("volume_owner_changed"):
        lines.append("volume root: owned by another user than the agents' user; start would set_owner")
    return lines
