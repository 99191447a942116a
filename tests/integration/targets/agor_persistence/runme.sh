#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-3.0-or-later
# The agor_persistence role's build and start entry points, as a container's life runs them: the
# image build over a home holding baked-in config, then the first container start with the volume.
# Each step runs four times with the same variables: ansible-playbook --check, real, --check again,
# real again. The first two report a change, the last two none; --check changes no file at all.
set -euo pipefail

sandbox=$(mktemp -d)
trap 'rm -rf "$sandbox"' EXIT
mkdir -p "$sandbox/home/.claude" "$sandbox/volume"
printf '{"theme": "dark"}\n' >"$sandbox/home/.claude/settings.json"
cat >"$sandbox/vars.yml" <<VARS
agor_persistence_user: $(id -un)
agor_persistence_group: $(id -gn)
agor_persistence_home: $sandbox/home
agor_persistence_volume: $sandbox/volume
agor_persistence_seed_store: $sandbox/seed
agor_persistence_agents: [claude, codex]
agor_persistence_require_mount: false
VARS

# Everything a user could see change: kind, link text, mode, owner, size, modification time.
listing() {
    find "$sandbox" -printf '%P %y %l %m %u:%g %s %T@\n' | sort
}

run_step() {
    local step=$1 check=$2 expect=$3 before
    before=$(listing)
    ansible-playbook step.yml ${check:+--check} -e "@$sandbox/vars.yml" -e "step=$step" \
        -e "expect_changed=$expect" "${@:4}"
    if [ -n "$check" ] && [ "$(listing)" != "$before" ]; then
        echo "ansible-playbook --check of the $step step changed files:" >&2
        diff <(echo "$before") <(listing) >&2 || true
        exit 1
    fi
}

for step in build start; do
    run_step "$step" check true "$@"
    run_step "$step" "" true "$@"
    run_step "$step" check false "$@"
    run_step "$step" "" false "$@"
    ansible-playbook verify.yml -e "@$sandbox/vars.yml" -e "step=$step" "$@"
done
