# SPDX-License-Identifier: GPL-3.0-or-later
"""Run the engine in a process of its own (to kill it, or race it): ``engine_cli.py PARAMS_JSON [--check]``.

Prints the result as JSON; on a refusal prints {"failed": true, "msg": ...} and exits 1.
ansible_collections must be importable (PYTHONPATH, see agent_tree.engine_env).
"""

import json
import sys

from ansible_collections.agor.persistence.plugins.module_utils._engine import run
from ansible_collections.agor.persistence.plugins.module_utils._spec import AgentStateLinkError

try:
    RESULT = run(json.loads(sys.argv[1]), check_mode="--check" in sys.argv[2:])
except AgentStateLinkError as exc:
    print(json.dumps({"failed": True, "msg": str(exc)}))
    sys.exit(1)
print(json.dumps(RESULT))
