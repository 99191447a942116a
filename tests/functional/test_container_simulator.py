# SPDX-License-Identifier: GPL-3.0-or-later
"""The container simulator (tests/support/container.py) runs the tests' own Python and checkout in its
containers wherever the checkout lives, including below /tmp, which every container replaces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("as_root")

# Run from a copy of the simulator placed as a checkout below /tmp would hold it: the container
# must find that checkout, the interpreter running the tests, and still have a /tmp of its own.
PROBE = """
import json, os, sys
from container import Engine
with Engine() as engine:
    container = engine.run(engine.build(["true"]))
    result = container.exec([sys.executable, "-c", "import sys; print(open(sys.argv[1]).read())",
                             os.path.join(sys.argv[1], "galaxy.yml")])
    print(json.dumps({"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr,
                      "host_only_visible": os.path.exists(container.path(sys.argv[2]))}))
"""


def test_a_checkout_below_tmp_stays_visible_in_containers(tmp_path):
    checkout = tmp_path / "checkout"
    support = checkout / "tests" / "support"
    support.mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "tests", "support", "container.py"), support)
    (checkout / "galaxy.yml").write_text("name: below-tmp\n")
    host_only = tmp_path / "host-only"  # below the host's /tmp, not part of the checkout
    host_only.write_text("")
    assert str(checkout).startswith("/tmp/"), "pytest's tmp_path is below /tmp here"

    probe = subprocess.run([sys.executable, "-c", PROBE, str(checkout), str(host_only)], cwd=str(support),
                           env={**os.environ, "PYTHONPATH": str(support)}, capture_output=True, text=True, timeout=120, check=False)

    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.splitlines()[-1])
    assert (seen["returncode"], seen["stdout"]) == (0, "name: below-tmp\n\n"), f"the container could not run it: {seen}"
    assert not seen["host_only_visible"], "the container's /tmp must stay its own tmpfs"
