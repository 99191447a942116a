# SPDX-License-Identifier: GPL-3.0-or-later
"""Scan for root-owned entries in user-writable directories, over and over, until SIGTERM:
``root_watch.py SCOPE_JSON`` ({"roots": [...], "users": [uid...], "planted": [[dev, ino]...]}) prints "ready", then each finding (see
attacker.find_root_owned) the first time it is seen, then "scans N" when stopped.
Runs as root beside the engine, in a process of its own so that it really runs alongside it."""

from __future__ import annotations

import json
import signal
import sys

from attacker import find_root_owned


def main() -> None:
    scope = json.loads(sys.argv[1])
    planted = {tuple(inode) for inode in scope["planted"]}
    seen = set()
    scans = 0

    def stop(*_args: object) -> None:
        print(f"scans {scans}", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        for finding in find_root_owned(scope["roots"], scope["users"], planted):
            if finding not in seen:
                seen.add(finding)
                print(finding, flush=True)
        scans += 1


if __name__ == "__main__":
    main()
