# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Private to the agor.persistence collection: attributes shared by its modules.

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
    description: Reports exactly the steps a real run would take (same RV(links[].actions), same C(changed)) and changes nothing.
  diff_mode:
    support: full
    description: Shows, per changed link, what stood at the path and at the target before and what will stand there after.
  idempotent:
    support: full
    description: A second run with the same arguments reports no change.
"""
