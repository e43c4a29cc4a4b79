#!/usr/bin/env bash
# Read-only check of one node, for scripts/verify.py: is containerd's CRI plugin ok, does the
# effective config read hosts.toml from CONFIG_PATH with no `mirrors` left, and (optionally) do
# pulls of IMAGES resolve through the node's hosts.toml files. Changes nothing but the image store.
# Params (env):
#   CONFIG_FILE          containerd config.toml
#   CONFIG_PATH          expected hosts.toml directory
#   CONTAINERD_ADDRESS   containerd's socket (default /run/containerd/containerd.sock)
#   IMAGES               space-separated image references to pull (optional)
#   CTR, CONTAINERD      the node's ctr and containerd (k3s/RKE2: their own, not on PATH)
# Output: key=value lines: cri=, config_path=, mirrors=, deprecations=, one
#   hosts_toml=<dir> <sha256> per CONFIG_PATH/<dir>/hosts.toml, then one
#   pull=<image> <ok|failed> per image. deprecations= lists what `ctr deprecations list` names
#   (containerd 1.7+; "unsupported" on 1.6): the RUNNING daemon's view, where config dump only
#   reads the file (a file fixed by hand but never restarted into shows up here).
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${CONFIG_PATH:?CONFIG_PATH is required}"
: "${CONTAINERD_ADDRESS:=/run/containerd/containerd.sock}"
: "${IMAGES:=}"
: "${CTR:=ctr}"
: "${CONTAINERD:=containerd}"

if [[ $(id -u) -ne 0 ]]; then
  echo "verify-node.sh: must run as root (log in as root or give the SSH user passwordless sudo)" >&2
  exit 2
fi

# "active" is not health: containerd runs on with the CRI plugin skipped (mirrors + config_path).
cri=$("$CTR" --address "$CONTAINERD_ADDRESS" plugins ls 2>/dev/null |
  awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" {print $NF}' || true)
echo "cri=${cri:-absent}"

if ! dump=$("$CONTAINERD" -c "$CONFIG_FILE" config dump 2>&1); then
  echo "config_dump=failed"
  echo "verify-node.sh: containerd cannot read ${CONFIG_FILE}: ${dump}" >&2
  exit 1
fi
# config_path of the registry section (v2: grpc.v1.cri.registry, v3: cri.v1.images.registry).
# 1.x dumps strings in double quotes, 2.x in single quotes (config_path = '/etc/containerd/certs.d').
config_path=$(awk '
  /^[[:space:]]*\[/ { registry = ($0 ~ /\.registry\][[:space:]]*$/) }
  registry && $1 == "config_path" { sub(/^[^=]*=[[:space:]]*/, ""); gsub(/["\047]/, ""); print; exit }
' <<<"$dump")
echo "config_path=${config_path}"
mirrors=$(grep -cE '^[[:space:]]*\[plugins\..*\.registry\.mirrors\.' <<<"$dump" || true)
echo "mirrors=${mirrors}"
if deprecations=$("$CTR" --address "$CONTAINERD_ADDRESS" deprecations list 2>/dev/null); then
  echo "deprecations=$(awk 'NR > 1 && NF {print $1}' <<<"$deprecations" | paste -s -d ' ')"
else
  echo "deprecations=unsupported"
fi

# Every hosts.toml containerd reads from CONFIG_PATH, by digest: verify compares them with what the
# program writes for this node (a file edited or removed since the last apply shows).
for file in "$CONFIG_PATH"/*/hosts.toml; do
  [[ -f $file ]] || continue
  dir=${file%/hosts.toml}
  echo "hosts_toml=${dir##*/} $(sha256sum <"$file" | cut -d ' ' -f 1)"
done

for image in $IMAGES; do
  # ctr reads hosts.toml only when told where: the same files the CRI plugin uses.
  if output=$("$CTR" --address "$CONTAINERD_ADDRESS" -n k8s.io images pull --hosts-dir "$CONFIG_PATH" "$image" 2>&1); then
    echo "pull=${image} ok"
  else
    echo "pull=${image} failed"
    echo "verify-node.sh: pull of ${image} failed: ${output##*$'\n'}" >&2
  fi
done
