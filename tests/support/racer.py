# SPDX-License-Identifier: GPL-3.0-or-later
"""The attacker's racer, run as the agents' user: ``racer.py MOVES_JSON``.

MOVES_JSON is a list of moves, made in turn in a loop (a random pause of up to ``pause``
seconds between rounds, set by a move {"pause": S}, 2 ms by default) until SIGTERM:

- {"steal": DIR, "spare": [NAME...], "loot": LOOT}: rename every entry of DIR not named in
  ``spare`` into LOOT (same filesystem), keeping it there; each one root owns when caught is
  reported.  DIR's entries when the racer starts are spared too.  Needs no internal name.
- {"swap": PATH, "to": DEST}: rename PATH aside, put a symlink to DEST there, then undo both.
- {"plant": STASH, "at": PLACE}: rename STASH (say, a hard link to a root-only file) to PLACE,
  then back.
- {"move": PATH, "to": OTHER}: rename PATH to OTHER, then back.
- {"append": PATH}: append the line "<n>" to PATH (opened anew each time, as a log writer does);
  ``appended`` counts the writes that returned: acknowledged, so never to be lost.
- {"save": PATH}: save PATH the way editors and Claude Code do, by writing '{"save": <n>}' to a
  new file beside it and renaming that over PATH; ``saved`` is the last save that completed.

Prints "ready", and when stopped a JSON report:
{"moves": N, "stolen": N, "root_owned": [...], "appended": N, "saved": N}.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sys
import time


def main() -> None:
    moves = json.loads(sys.argv[1])
    pause = next((move["pause"] for move in moves if "pause" in move), 0.002)
    report = {"moves": 0, "stolen": 0, "root_owned": [], "appended": 0, "saved": 0}
    spared = {move["steal"]: set(move.get("spare", ())) | set(_listing(move["steal"])) for move in moves if "steal" in move}

    def stop(*_args: object) -> None:
        print(json.dumps(report), flush=True)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    print("ready", flush=True)
    while True:
        for move in moves:
            if "steal" in move:
                _steal(move["steal"], spared[move["steal"]], move["loot"], report)
            elif "swap" in move:
                report["moves"] += _swap(move["swap"], move["to"])
            elif "plant" in move:
                report["moves"] += _there_and_back(move["plant"], move["at"], 0.0005)
            elif "move" in move:
                report["moves"] += _there_and_back(move["move"], move["to"], 0.0005)
            elif "append" in move:
                _append(move["append"], report)
            elif "save" in move:
                _save(move["save"], report)
        time.sleep(random.random() * pause)


def _listing(directory: str) -> list:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _steal(directory: str, spare: set, loot: str, report: dict) -> None:
    for name in _listing(directory):
        if name in spare:
            continue
        taken = os.path.join(loot, f"{report['stolen']}-{name}")
        try:
            os.rename(os.path.join(directory, name), taken)
        except OSError:
            continue
        report["stolen"] += 1
        report["moves"] += 1
        try:
            st = os.lstat(taken)
        except OSError:
            continue
        if st.st_uid == 0:
            report["root_owned"].append(f"{os.path.join(directory, name)} (mode {st.st_mode:o})")


def _append(path: str, report: dict) -> None:
    with _acknowledged():
        _append_once(path, report)


def _append_once(path: str, report: dict) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError:
        return
    try:
        os.write(fd, f"{report['appended'] + 1}\n".encode())
        report["appended"] += 1
    except OSError:
        pass
    finally:
        os.close(fd)


def _save(path: str, report: dict) -> None:
    with _acknowledged():
        _save_once(path, report)


@contextlib.contextmanager
def _acknowledged():
    """SIGTERM waits until a write and its count are both done (the report then tells the truth)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])


def _save_once(path: str, report: dict) -> None:
    new = f"{path}.save-{os.getpid()}"
    try:
        with open(new, "w", encoding="utf-8") as handle:
            handle.write(json.dumps({"save": report["saved"] + 1}))
        os.rename(new, path)
    except OSError:
        return
    report["saved"] += 1


def _swap(path: str, dest: str) -> int:
    aside = path + ".racer"
    try:
        os.rename(path, aside)
    except OSError:
        return 0
    done = 0
    try:
        os.symlink(dest, path)
        done = 1
        time.sleep(0.0005)
        os.unlink(path)
    except OSError:
        pass
    try:
        os.rename(aside, path)
    except OSError:
        pass
    return done


def _there_and_back(path: str, other: str, hold: float) -> int:
    try:
        os.rename(path, other)
    except OSError:
        return 0
    time.sleep(hold)
    try:
        os.rename(other, path)
    except OSError:
        pass
    return 1


if __name__ == "__main__":
    main()
