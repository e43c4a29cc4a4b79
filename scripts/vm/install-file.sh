#!/usr/bin/env bash
# Install stdin as DEST with MODE, atomically (a half-written registry config or cron file would
# be read as-is by Distribution or cron). Content arrives on stdin so it never appears on a command
# line or in a log (it can hold upstream credentials).
#
# Parameters (exported by components/renderers/shell.remote_command):
#   DEST        absolute path of the file
#   MODE        octal mode, e.g. 0600 (credentials) or 0644
#   EXTRA_DIR   optional directory to create as well (e.g. the registry's data dir)
#   REMOVE      1: remove DEST instead and ignore stdin (the delete step). Data directories are
#               left alone on purpose: the cache is worth keeping across a re-deploy.
# Prints the sha256 of what was installed (never the content).
set -euo pipefail

: "${DEST:?DEST is required}" "${REMOVE:=0}"
[[ $DEST == /* ]] || {
    echo "DEST must be absolute: $DEST" >&2
    exit 2
}

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo -n)
fi

if [[ $REMOVE == 1 ]]; then
    "${sudo[@]}" rm -f "$DEST"
    exit 0
fi
: "${MODE:?MODE is required}"

dir=$(dirname "$DEST")
"${sudo[@]}" install -d -m 0755 "$dir"
if [[ -n ${EXTRA_DIR:-} ]]; then
    "${sudo[@]}" install -d -m 0755 "$EXTRA_DIR"
fi

tmp=$("${sudo[@]}" mktemp "$dir/.install.XXXXXX")
trap '"${sudo[@]}" rm -f "$tmp"' EXIT
# Mode before content: the credentials are never readable by others, not even for a moment.
"${sudo[@]}" chmod "$MODE" "$tmp"
"${sudo[@]}" tee "$tmp" >/dev/null
"${sudo[@]}" mv -f "$tmp" "$DEST"
trap - EXIT
"${sudo[@]}" sha256sum "$DEST" | cut -d' ' -f1
