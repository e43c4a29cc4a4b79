#!/usr/bin/env bash
# Report what the node's containerd has, one key=value per line, so the component can migrate
# config.toml without guessing. The config travels base64-encoded on one line: it may hold
# registry credentials and arbitrary TOML, and must reach the parser byte for byte.
# Params (env): CONFIG_FILE (containerd config.toml), CONFIG_PATH (hosts.toml directory).
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${CONFIG_PATH:=/etc/containerd/certs.d}"

if [[ $(id -u) -ne 0 ]]; then
  echo "probe.sh: must run as root (log in as root or give the SSH user passwordless sudo)" >&2
  exit 2
fi
if ! command -v containerd >/dev/null 2>&1; then
  echo "probe.sh: containerd is not installed on $(hostname) (no 'containerd' on PATH)" >&2
  exit 3
fi

# "containerd containerd.io 1.6.20 <commit>" or "containerd github.com/containerd/containerd v1.6.20 ...":
# the version is the third field either way.
version_line=$(containerd --version)
echo "containerd_version_line=${version_line//$'\n'/ }"
echo "containerd_version=$(awk '{print $3}' <<<"$version_line")"
echo "config_file=${CONFIG_FILE}"
if [[ -f $CONFIG_FILE ]]; then
  echo "config_exists=1"
  echo "config_sha256=$(sha256sum <"$CONFIG_FILE" | awk '{print $1}')"
  # Top-level `version = N` (absent means v1 to containerd 1.x).
  config_version=$(sed -n -E 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$CONFIG_FILE" | head -n 1)
  echo "config_version=${config_version:-1}"
  echo "config_b64=$(base64 -w 0 <"$CONFIG_FILE")"
else
  echo "config_exists=0"
  echo "config_sha256=absent"
  echo "config_version="
  echo "config_b64="
fi
if [[ -f ${CONFIG_FILE}.registry-mirrors.orig || -f ${CONFIG_FILE}.registry-mirrors.absent ]]; then
  echo "original_saved=1"
else
  echo "original_saved=0"
fi
# The node's first original config.toml (saved by apply-config.sh before its first change): the
# mirrors it held were carried over to hosts.toml, and must stay there on every later run, when
# config.toml itself no longer names them.
if [[ -f ${CONFIG_FILE}.registry-mirrors.orig ]]; then
  echo "original_b64=$(base64 -w 0 <"${CONFIG_FILE}.registry-mirrors.orig")"
else
  echo "original_b64="
fi
# apply-config.sh records "<sha256 it wrote> <sha256 of the file it migrated from>". While the file
# is still what it wrote, the program sends the same guard again: an unchanged node shows no diff.
applied="${CONFIG_FILE}.registry-mirrors.applied"
applied_from=""
if [[ -f $applied && -f $CONFIG_FILE ]]; then
  read -r written source <"$applied" || true
  [[ ${written:-} == "$(sha256sum <"$CONFIG_FILE" | awk '{print $1}')" ]] && applied_from=${source:-}
fi
echo "applied_from_sha256=${applied_from}"
manifest="${CONFIG_PATH}/.registry-mirrors-managed"
if [[ -f $manifest ]]; then
  echo "managed_dirs=$(paste -s -d ' ' "$manifest")"
else
  echo "managed_dirs="
fi
