# SPDX-License-Identifier: GPL-3.0-or-later
"""Run agent_state_link's engine once, in a process of its own: ``engine_once.py PARAMS_JSON_FILE``.

The benchmark suite times this process as a whole (interpreter start, imports, the run), like the
command line tools it is compared with.  Prints the actions taken per link.  ansible_collections
must be importable (PYTHONPATH).
"""

import json
import sys

from ansible_collections.agor.persistence.plugins.module_utils._engine import run

with open(sys.argv[1], encoding="utf-8") as handle:
    PARAMS = json.load(handle)
RESULT = run(PARAMS)
print(json.dumps({"changed": RESULT["changed"], "actions": [link["actions"] for link in RESULT["links"]]}))
