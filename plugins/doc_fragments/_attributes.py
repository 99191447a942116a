# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Private to the agor.persistence collection: attributes shared by its modules.

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  action:
    support: full
    description:
      - Over the local connection, without become or async (a container's start step), the engine runs in the task's own
        worker process on the controller, with the module's argument spec and result; no module is built or started.
        Over any other connection, or with become or async, the module runs as usual.
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
