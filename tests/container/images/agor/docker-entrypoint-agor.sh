#!/bin/sh
# The Agor-like image's own entrypoint: prepare Agor's data in ~/.agor (created once, kept after),
# then run the daemon in the foreground.
set -eu
echo "agor entrypoint: running as $(id -un) with HOME=$HOME"
mkdir -p "$HOME/.agor"
sudo -n chown agor:agor "$HOME/.agor" 2>/dev/null || true  # a volume mounted owned by root
if [ ! -e "$HOME/.agor/agor.db" ]; then
    echo "agor database created" > "$HOME/.agor/agor.db"
fi
echo "agor daemon starting"
exec node /usr/local/lib/agor-daemon.js
