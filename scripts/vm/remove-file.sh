#!/usr/bin/env bash
# Remove DEST (the delete step of an installed file: cron file, script, registry config).
# Data directories are left alone on purpose: the cache is worth keeping across a re-deploy.
set -euo pipefail

: "${DEST:?DEST is required}"
[[ $DEST == /* ]] || {
    echo "DEST must be absolute: $DEST" >&2
    exit 2
}

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo -n)
fi
"${sudo[@]}" rm -f "$DEST"
