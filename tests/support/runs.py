# SPDX-License-Identifier: GPL-3.0-or-later
"""How many runs the adversarial tests make: AGOR_PERSISTENCE_ATTACK_RUNS scales every count
(1 = the default, quick enough for every CI run; 10 = ten times as many runs, for a soak)."""

from __future__ import annotations

import os


def attack_runs(default: int) -> int:
    """``default`` runs times the AGOR_PERSISTENCE_ATTACK_RUNS factor (at least one run)."""
    factor = float(os.environ.get("AGOR_PERSISTENCE_ATTACK_RUNS", "1") or "1")
    return max(1, round(default * factor))
