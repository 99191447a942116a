# SPDX-License-Identifier: GPL-3.0-or-later
"""state=present from every starting state, on real trees: check mode first (tree untouched, same
prediction), the real run, then a rerun with nothing to do (see agent_tree.converge)."""

from __future__ import annotations

import os
import stat

import pytest

from agent_tree import CLAUDE, CLAUDE_JSON, CLAUDE_JSON_BARE, DIR, MISSING, Case, Link, converge_case

NESTED = {"path": "home:.claude", "target": "vol:agents/claude"}

CASES = [
    Case("path missing", {}, [["create_directory", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": DIR}),
    Case("path missing, target holds state", {"vol:.claude/s.jsonl": "S"}, [["link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/s.jsonl": "S"}),
    Case("path already the right link", {"vol:.claude/s.jsonl": "S", "home:.claude": Link("vol:.claude")}, [[]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/s.jsonl": "S"}),
    Case("link elsewhere", {"out:dir/keep": "K", "home:.claude": Link("out:dir")}, [["create_directory", "link"]],
         {"home:.claude": Link("vol:.claude"), "out:dir/keep": "K", "vol:.claude/keep": MISSING}),
    Case("dangling link", {"home:.claude": Link("/nonexistent/agor/.claude")}, [["create_directory", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": DIR}),
    Case("relative link to the right target", {"vol:.claude/s.jsonl": "S", "home:.claude": Link(".agor/.claude")}, [["link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/s.jsonl": "S"}),
    Case("empty real directory", {"home:.claude": DIR}, [["create_directory", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": DIR}),
    Case("real directory into a missing target",
         {"home:.claude/projects/-work/s.jsonl": "S", "home:.claude/settings.json": "{}", "home:.claude/.hidden": "H"},
         [["create_directory", "move", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/projects/-work/s.jsonl": "S", "vol:.claude/settings.json": "{}",
          "vol:.claude/.hidden": "H"}),
    Case("real directory merged into an existing target",
         {"home:.claude/new.jsonl": "N", "home:.claude/projects/a.jsonl": "A",
          "vol:.claude/old.jsonl": "O", "vol:.claude/projects/b.jsonl": "B"},
         [["move", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/new.jsonl": "N", "vol:.claude/old.jsonl": "O",
          "vol:.claude/projects/a.jsonl": "A", "vol:.claude/projects/b.jsonl": "B"}),
    Case("conflicts inside a directory",
         {"home:.claude/new": "n", "home:.claude/same": "s", "vol:.claude/same": "s",
          "home:.claude/settings.json": "home", "vol:.claude/settings.json": "volume"},
         [["move", "backup", "drop_duplicate", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/new": "n", "vol:.claude/same": "s", "vol:.claude/settings.json": "volume"},
         backups={"home:.claude/settings.json": "home"}),
    Case("wrong kinds inside a directory",
         {"home:.claude/projects/a.jsonl": "A", "vol:.claude/projects": "a file", "home:.claude/todos": "a file", "vol:.claude/todos/t.json": "T"},
         [["backup", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/projects": "a file", "vol:.claude/todos/t.json": "T"},
         backups={"home:.claude/projects": DIR, "home:.claude/projects/a.jsonl": "A", "home:.claude/todos": "a file"}),
    Case("links inside a directory: the same one dropped, another one backed up",
         {"home:.claude/same": Link("/etc/hostname"), "vol:.claude/same": Link("/etc/hostname"),
          "home:.claude/other": Link("../mine"), "vol:.claude/other": Link("../theirs")},
         [["backup", "drop_duplicate", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/same": Link("/etc/hostname"), "vol:.claude/other": Link("../theirs")},
         backups={"home:.claude/other": Link("../mine")}),
    Case("real file into a missing target", {"home:.claude.json": '{"a": 1}'}, [["move", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": '{"a": 1}'}, links=[CLAUDE_JSON]),
    Case("file identical to the volume's", {"home:.claude.json": "same", "vol:.claude.json": "same"}, [["drop_duplicate", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "same"}, links=[CLAUDE_JSON_BARE]),
    Case("conflicting file", {"home:.claude.json": "home", "vol:.claude.json": "volume"}, [["backup", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "volume"}, links=[CLAUDE_JSON_BARE],
         backups={"home:.claude.json": "home"}),
    Case("file in the home where a directory is expected", {"home:.claude": "oops"}, [["create_directory", "backup", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": DIR}, backups={"home:.claude": "oops"}),
    Case("directory in the home where a file is expected", {"home:.claude.json/x": "X"}, [["backup", "create_file", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "{}"}, links=[CLAUDE_JSON],
         backups={"home:.claude.json": DIR, "home:.claude.json/x": "X"}),
    Case("file in the volume where the target directory goes", {"home:.claude/s": "S", "vol:.claude": "stray"},
         [["backup_volume_entry", "create_directory", "move", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/s": "S"}, backups={"vol:.claude": "stray"}),
    Case("directory in the volume where the target file goes", {"home:.claude.json": "mine", "vol:.claude.json/x": "X"},
         [["backup_volume_entry", "move", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "mine"}, links=[CLAUDE_JSON_BARE],
         backups={"vol:.claude.json": DIR, "vol:.claude.json/x": "X"}),
    Case("target is a link to a directory outside the volume", {"out:dir/keep": "K", "vol:.claude": Link("out:dir"), "home:.claude/s": "S"},
         [["backup_volume_entry", "create_directory", "move", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": DIR, "vol:.claude/s": "S", "out:dir/s": MISSING},
         backups={"vol:.claude": Link("out:dir")}),
    Case("file target is a link to a file outside the volume", {"out:secret": "secret", "vol:.claude.json": Link("out:secret"), "home:.claude.json": "mine"},
         [["backup_volume_entry", "move", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "mine", "out:secret": "secret"}, links=[CLAUDE_JSON_BARE],
         backups={"vol:.claude.json": Link("out:secret")}),
    Case("right link, but the target is a link outside the volume", {"out:dir/keep": "K", "vol:.claude": Link("out:dir"), "home:.claude": Link("vol:.claude")},
         [["backup_volume_entry", "create_directory"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude": DIR, "vol:.claude/keep": MISSING}, backups={"vol:.claude": Link("out:dir")}),
    Case("parent below the volume is a link outside", {"out:dir/keep": "K", "vol:agents": Link("out:dir"), "home:.claude/s": "S"},
         [["backup_volume_entry", "create_directory", "move", "link"]],
         {"home:.claude": Link("vol:agents/claude"), "vol:agents": DIR, "vol:agents/claude/s": "S", "out:dir/claude": MISSING},
         links=[NESTED], backups={"vol:agents": Link("out:dir")}),
    Case("parent below the volume is a file", {"vol:agents": "stray", "home:.claude/s": "S"},
         [["backup_volume_entry", "create_directory", "move", "link"]],
         {"home:.claude": Link("vol:agents/claude"), "vol:agents/claude/s": "S"}, links=[NESTED], backups={"vol:agents": "stray"}),
    Case("file link with initial_content, nothing there", {}, [["create_file", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "{}"}, links=[CLAUDE_JSON]),
    Case("file link without initial_content, nothing there", {}, [["link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": MISSING}, links=[CLAUDE_JSON_BARE]),
    Case("missing home parents", {}, [["create_directory", "create_home_directory", "link"]],
         {"home:.local": DIR, "home:.local/share/opencode": Link("vol:opencode"), "vol:opencode": DIR},
         links=[{"path": "home:.local/share/opencode", "target": "vol:opencode"}]),
    Case("seed fills a missing target", {"seed:.claude/settings.json": "seeded"}, [["create_directory", "seed", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/settings.json": "seeded", "seed:.claude/settings.json": "seeded"},
         params={"seed_store": "seed:"}),
    Case("seed fills an empty target", {"vol:.claude": DIR, "seed:.claude/settings.json": "seeded"}, [["seed", "link"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/settings.json": "seeded"}, params={"seed_store": "seed:"}),
    Case("seed never overwrites a target with content",
         {"vol:.claude/settings.json": "user", "seed:.claude/settings.json": "seeded", "seed:.claude/other": "o"}, [["link"]],
         {"vol:.claude/settings.json": "user", "vol:.claude/other": MISSING}, params={"seed_store": "seed:"}),
    Case("seed not used when the home brings content", {"home:.claude/s": "S", "seed:.claude/settings.json": "seeded"},
         [["create_directory", "move", "link"]],
         {"vol:.claude/s": "S", "vol:.claude/settings.json": MISSING}, params={"seed_store": "seed:"}),
    Case("seed fills a missing file target before initial_content", {"seed:.claude.json": '{"seed": 1}'}, [["seed", "link"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": '{"seed": 1}'}, links=[CLAUDE_JSON],
         params={"seed_store": "seed:"}),
    Case("seed never overwrites a file target", {"vol:.claude.json": "user", "seed:.claude.json": "seeded"}, [["link"]],
         {"vol:.claude.json": "user"}, links=[CLAUDE_JSON_BARE], params={"seed_store": "seed:"}),
    # The image build (state=prepared) leaves the right link, dangling; the first start fills the target.
    Case("prepared link, seed fills the missing target", {"home:.claude": Link("vol:.claude"), "seed:.claude/settings.json": "seeded"},
         [["create_directory", "seed"]],
         {"home:.claude": Link("vol:.claude"), "vol:.claude/settings.json": "seeded"}, params={"seed_store": "seed:"}),
    Case("prepared file link, initial_content creates the target", {"home:.claude.json": Link("vol:.claude.json")}, [["create_file"]],
         {"home:.claude.json": Link("vol:.claude.json"), "vol:.claude.json": "{}"}, links=[CLAUDE_JSON]),
    Case("several links at once",
         {"home:.claude/s": "S", "home:.claude.json": "{}", "home:.codex": Link("out:dir")},
         [["create_directory", "move", "link"], ["move", "link"], ["create_directory", "link"]],
         {"home:.claude": Link("vol:.claude"), "home:.claude.json": Link("vol:.claude.json"), "home:.codex": Link("vol:.codex"),
          "vol:.claude/s": "S", "vol:.claude.json": "{}", "vol:.codex": DIR},
         links=[CLAUDE, CLAUDE_JSON, {"path": "home:.codex", "target": "vol:.codex"}]),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_present(tree, case):
    params, result = converge_case(tree, case)
    for link in params["links"]:  # the end state every link shares
        assert os.readlink(link["path"]) == link["target"], "the path must be a single-hop absolute link to its target"
        target = os.lstat(link["target"]) if os.path.lexists(link["target"]) else None
        kind = link.get("kind", "directory")
        if kind == "directory" or target is not None:
            assert target is not None and (stat.S_ISDIR if kind == "directory" else stat.S_ISREG)(target.st_mode)
