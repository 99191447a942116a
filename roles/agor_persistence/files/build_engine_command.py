# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Pack the collection's module_utils into the ``agor-persistence`` zipapp.

``python3 build_engine_command.py MODULE_UTILS_DIR DEST``: every ``*.py`` of MODULE_UTILS_DIR (the
files agent_state_link ships) goes in under its package path
``ansible_collections/agor/persistence/plugins/module_utils/``, with empty ``__init__.py`` files so
their imports work unchanged, and a ``__main__.py`` that runs ``_command.main``.  Each source gets
an unchecked hash-based ``.pyc`` beside it (a zip cannot cache bytecode; a Python of another version
ignores it and compiles the source).  Entries are stored in name order with a fixed time stamp, so
the same sources and Python give the same bytes.  DEST is written only when its content changes;
prints ``changed`` or ``unchanged``.  Standard library only.
"""

from __future__ import annotations

import importlib.util
import io
import marshal
import os
import sys
import typing as t
import zipfile

PACKAGE = ("ansible_collections", "agor", "persistence", "plugins", "module_utils")
# Debian's python3, isolated (-I): no PYTHONPATH, no user site, no current directory on sys.path.
SHEBANG = b"#!/usr/bin/python3 -I\n"
MAIN = b"""\
import sys

from ansible_collections.agor.persistence.plugins.module_utils._command import main

sys.exit(main())
"""
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def _bytecode(source: bytes, arcname: str) -> bytes:
    """An unchecked hash-based .pyc (PEP 552): valid whatever the zip entry's time stamp."""
    code = compile(source, arcname, "exec", dont_inherit=True)
    flags = 0b01  # hash-based, source not checked
    return (importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def entries(module_utils: str) -> t.Dict[str, bytes]:
    """Every file of the zipapp by its name inside the archive."""
    sources = {"__main__.py": MAIN}
    for depth in range(1, len(PACKAGE) + 1):
        sources["/".join(PACKAGE[:depth] + ("__init__.py",))] = b""
    names = sorted(name for name in os.listdir(module_utils) if name.endswith(".py") and name != "__init__.py")
    if "_command.py" not in names:
        raise SystemExit(f"{module_utils}: no _command.py, not agor.persistence's module_utils")
    for name in names:
        with open(os.path.join(module_utils, name), "rb") as handle:
            sources["/".join(PACKAGE + (name,))] = handle.read()
    files = dict(sources)
    for arcname, source in sources.items():
        files[arcname + "c"] = _bytecode(source, arcname)
    return files


def archive(files: t.Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    buffer.write(SHEBANG)
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as zipped:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
            info.create_system = 3  # Unix, so that the permission bits below are read
            info.external_attr = 0o644 << 16
            zipped.writestr(info, files[arcname])
    return buffer.getvalue()


def main(argv: t.Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 build_engine_command.py MODULE_UTILS_DIR DEST", file=sys.stderr)
        return 1
    module_utils, dest = argv
    content = archive(entries(module_utils))
    try:
        with open(dest, "rb") as handle:
            if handle.read() == content:
                print("unchanged")
                return 0
    except FileNotFoundError:
        pass
    partial = dest + ".partial"
    with open(partial, "wb") as handle:
        handle.write(content)
    os.chmod(partial, 0o755)
    os.replace(partial, dest)
    print("changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
