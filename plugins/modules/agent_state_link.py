#!/usr/bin/python
# Copyright (c) agor.persistence contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: agent_state_link
short_description: Link AI coding agents' state paths into a persistent volume, migrating what is there
version_added: 0.1.0
description:
  - Makes each configured state path (for example C(~/.claude), the file C(~/.claude.json), C(~/.codex))
    a single-hop absolute symlink to a directory or file inside a persistent volume, so that agent
    conversations survive container restarts.
  - Whatever stands at a path is migrated into the volume first. Moves use C(rename) where possible;
    across filesystems (an image layer, where C(rename) fails with C(EXDEV)) each entry is copied to a
    private staging area on the volume, synced, renamed into place, synced again, and only then removed
    from the home. A kill at any instant loses nothing and a rerun completes the job.
  - Where the volume already holds an entry of the same name with different content, or of the wrong kind,
    the volume's copy stays and the home copy goes to a backup directory inside the volume (reported in
    RV(backup_dir)). Identical home copies are removed once compared byte for byte.
  - Run as root, the module does as root only what needs root (check the volume, take the lock, re-own the
    volume root with O(manage_volume_root), create C(<volume>/users/<name>/) for further accounts). Everything
    inside the home and the volume is done by a child process that has dropped to the account owning those links,
    so a planted link or a swapped directory gains that account nothing. It never follows a symlink it did not
    create; a symlink found where a target or one of its parents should be is moved to the backup directory.
  - From C(/) to each path, target and seed store, a symlink is followed only when root owns it and it sits in a
    directory only root can write. A directory below the volume root on the way to a target must be owned by root
    or by the link's owner and writable by nobody else, and an existing target must belong to the link's owner;
    otherwise the run refuses before any change, naming the directory, its owner and its mode.
  - Concurrent runs on the same volume serialize on a lock (C(flock) of the volume root directory); the second
    run then finds nothing to do. Each account keeps its staging area and backups in its own bookkeeping
    directory C(.agent-state-link/), at the volume root for the volume root's owner and in
    C(<volume>/users/<name>/) for any other account.
  - All links are handled in one task. Over the local connection (a container's start step) the engine runs in
    the task's worker process, so a start builds and starts no module process (see the C(action) attribute).
author:
  - Agor persistence maintainers (@agor-persistence)
extends_documentation_fragment:
  - agor.persistence._attributes
options:
  links:
    description:
      - The state paths to link, each with its target in the volume.
      - Paths and targets must be absolute and distinct; no path or target may lie inside another one.
    type: list
    elements: dict
    required: true
    suboptions:
      path:
        description:
          - The state path in the home directory, for example C(/home/agor/.claude).
          - Missing parent directories are created, owned by O(links[].owner).
        type: path
        required: true
      target:
        description:
          - Where the state lives, inside O(volume), for example C(/home/agor/.agor/.claude).
        type: path
        required: true
      kind:
        description:
          - Whether the state is a directory or a single file.
        type: str
        choices: [directory, file]
        default: directory
      initial_content:
        description:
          - For O(links[].kind=file) only, the content of the target when it has to be created.
          - Without it a missing file target is never created (an empty C(~/.claude.json) makes Claude Code
            refuse to start); the link then dangles until the program writes the file through it.
        type: str
      owner:
        description:
          - The account that owns this link's state; overrides O(owner). The link, its target and what is created
            for it belong to this account, which performs the link's steps.
          - An account other than the owner of the volume root keeps its targets below C(<volume>/users/<name>/).
        type: str
      group:
        description:
          - Group of what is created for this link; overrides O(group).
        type: str
      label:
        description:
          - How error messages name this link, in the caller's terms (for example
            C(agor_persistence_extra_links[2])), instead of its position in O(links).
        type: str
        version_added: 0.2.0
  volume:
    description:
      - The persistent volume's directory. Every target must lie inside it.
    type: path
    required: true
  require_mount:
    description:
      - Refuse to run unless O(volume) lies on a mounted filesystem other than the root filesystem (it may be
        the mount point itself, as on Railway, or below one, as with a docker-compose volume for the whole home).
      - Without a mounted volume, linking would move the state onto the container's throwaway layer and
        persistence would be lost.
      - Ignored with O(state=prepared).
    type: bool
    default: true
  owner:
    description:
      - The account (name or uid) that owns the state. Links, targets and parents the module creates belong to
        it, and it performs the steps. Migrated entries keep their owner when renamed, like C(mv), and become
        this account's when copied across filesystems.
      - Defaults, per link, to the owner of the directory that holds the path (the home).
    type: str
  group:
    description:
      - Group (name or gid) for the same entries. Defaults to the primary group of O(owner).
    type: str
  directory_mode:
    description:
      - Mode of target directories the module creates. Parents it creates get C(0755).
    type: raw
    default: '0700'
  file_mode:
    description:
      - Mode of file targets the module creates from O(links[].initial_content).
    type: raw
    default: '0600'
  conflict:
    description:
      - V(backup) keeps the volume's copy and moves a conflicting home copy (or a link or wrong-kind entry in the
        volume) to the backup directory.
      - V(fail) fails the run, before anything changes, when any conflict exists.
    type: str
    choices: [backup, fail]
    default: backup
  seed_store:
    description:
      - A directory outside the volume holding the image's defaults, laid out like the volume
        (C(<seed_store>/.claude/settings.json) for the target C(<volume>/.claude)).
      - With O(state=prepared), what stands at each path is moved there.
      - With O(state=present), a target that is missing or an empty directory, and receives nothing from the
        home, is filled with a copy of its seed, owned by the link's owner. A target with content is never
        touched, so the user's later changes win over a newer image's defaults.
    type: path
  manage_volume_root:
    description:
      - With O(state=present), make the volume's root directory itself (not its content) owned by O(owner) and
        O(group), so the agents' user can write there (platforms such as Railway mount volumes owned by root).
      - With O(state=prepared) the seed store's root is always made the primary account's, for the same reason.
    type: bool
    default: false
  lock_timeout:
    description:
      - Seconds to wait for another run holding the volume's lock before failing.
    type: float
    default: 120
  labels:
    description:
      - How error messages name the parameters, for a role or playbook that sets them from variables of its own.
        A mapping from a parameter name to the caller's name for it, for example from C(require_mount) to
        C(agor_persistence_require_mount).
    type: dict
    default: {}
    version_added: 0.2.0
  state:
    description:
      - V(present) links every path to its target in the mounted volume, migrating what is there.
      - V(prepared) is for the image build, when no volume is mounted. Each path becomes a link to its target
        (dangling until the volume is mounted) and what stood there is moved into O(seed_store), since the mounted
        volume would hide anything written below its mount path. The volume is not touched.
      - V(absent) rolls back. Each path that is a link to its target (or missing) becomes a real directory or file
        again holding a copy of the target's content; the volume keeps its copy. A real directory or file, or a
        link to somewhere else, is left alone.
    type: str
    choices: [present, prepared, absent]
    default: present
notes:
  - Uses Linux C(/proc/self/mountinfo) for O(require_mount).
  - A path that is a socket, FIFO or device (or a tree containing one) is refused; move it away first.
seealso:
  - module: ansible.builtin.file
    description: Creates single links, but replaces files and refuses non-empty directories instead of migrating them.
  - name: The agor.persistence.agor_persistence role
    description: >-
      Uses this module with a registry of known agents, at image build, container start and audit time
      (C(ansible-doc -t role agor.persistence.agor_persistence)).
    link: https://github.com/agor-persistence/agor.persistence/tree/main/roles/agor_persistence
"""

EXAMPLES = r"""
- name: Keep Claude Code, Codex and Gemini CLI state in the Railway volume
  agor.persistence.agent_state_link:
    links:
      - path: /home/agor/.claude
        target: /home/agor/.agor/.claude
      - path: /home/agor/.claude.json
        target: /home/agor/.agor/.claude.json
        kind: file
        initial_content: "{}"
      - path: /home/agor/.codex
        target: /home/agor/.agor/.codex
      - path: /home/agor/.gemini
        target: /home/agor/.agor/.gemini
    volume: /home/agor/.agor
    owner: agor
    group: agor
    manage_volume_root: true

- name: At image build time, link the paths and keep baked-in config in a seed store
  agor.persistence.agent_state_link:
    links:
      - path: /home/agor/.claude
        target: /home/agor/.agor/.claude
    volume: /home/agor/.agor
    seed_store: /usr/local/share/agor-persistence/seed
    state: prepared
    owner: agor

- name: Fail instead of backing up when the home and the volume disagree
  agor.persistence.agent_state_link:
    links:
      - path: /home/agor/.codex
        target: /home/agor/.agor/.codex
    volume: /home/agor/.agor
    conflict: fail

- name: Roll back to real directories (the volume keeps its copy)
  agor.persistence.agent_state_link:
    links:
      - path: /home/agor/.claude
        target: /home/agor/.agor/.claude
    volume: /home/agor/.agor
    state: absent
"""

RETURN = r"""
links:
  description: One record per link, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The state path.
      type: str
      sample: /home/agor/.claude
    target:
      description: The target in the volume.
      type: str
      sample: /home/agor/.agor/.claude
    kind:
      description: V(directory) or V(file).
      type: str
      sample: directory
    before:
      description: What stood at the path before the run (V(missing), V(directory), V(file), V(other) or V(link to <dest>)).
      type: str
      sample: directory
    target_before:
      description: What stood at the target before the run, described the same way.
      type: str
      sample: missing
    changed:
      description: Whether this link needed any step.
      type: bool
      sample: true
    after:
      description: What stands (or, in check mode, would stand) at the path and at the target after the run.
      type: dict
      sample: {path: link to /home/agor/.agor/.claude, target: directory}
    actions:
      description:
        - The kinds of step taken (or, in check mode, that would be taken), in order. Among them C(backup_volume_entry),
          C(create_directory), C(set_group), C(create_home_directory), C(move), C(backup), C(drop_duplicate), C(seed),
          C(create_file), C(link), C(clear_restore), C(restore), C(create_empty), C(remove_link).
        - Steps run in exactly this order.
      type: list
      elements: str
      sample: [create_directory, move, link]
    steps:
      description: Every step with its path and, where it has one, its destination.
      type: list
      elements: dict
      sample: [{action: move, path: /home/agor/.claude/settings.json, dest: /home/agor/.agor/.claude/settings.json}]
    migrated:
      description: Home entries moved into the volume.
      type: list
      elements: str
      sample: [/home/agor/.claude/projects]
    duplicates_removed:
      description: Home entries removed because the volume already held identical copies.
      type: list
      elements: str
      sample: []
    backups:
      description: Conflicting entries and where they went.
      type: list
      elements: dict
      sample:
        - path: /home/agor/.claude/settings.json
          backup: /home/agor/.agor/.agent-state-link/backups/20261124T060000.000000Z/home/agor/.claude/settings.json
backup_dir:
  description: The backup directory of this run, when anything was (or would be) backed up.
  returned: always
  type: str
  sample: /home/agor/.agor/.agent-state-link/backups/20261124T060000.000000Z
volume_owner_changed:
  description: Whether the volume root's owner was (or would be) changed, see O(manage_volume_root).
  returned: always
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.agor.persistence.plugins.module_utils._engine import run_reporting_refusal
from ansible_collections.agor.persistence.plugins.module_utils._spec import argument_spec


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
    )
    result = run_reporting_refusal(module.params, check_mode=module.check_mode)
    if result.get("failed"):
        module.fail_json(msg=result["msg"])
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
