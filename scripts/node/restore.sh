#!/usr/bin/env bash
# Undo what apply-config.sh did (pulumi destroy / node removed): put back the very first original
# config.toml (<file>.registry-mirrors.orig), restart containerd and wait for the CRI plugin. A
# file the user changed after us is still replaced: it is backed up as
# <file>.registry-mirrors.before-restore first. (hosts.sh REMOVE_ALL=1 undoes the hosts.toml side.)
# Params (env): CONFIG_FILE, RESTART_COMMAND, RESTART_TIMEOUT, CONTAINERD_ADDRESS.
# Output: key=value lines: restored=0|1 restarted=0|1.
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${RESTART_COMMAND:=systemctl restart containerd}"
: "${RESTART_TIMEOUT:=60}"
: "${CONTAINERD_ADDRESS:=/run/containerd/containerd.sock}"

if [[ $(id -u) -ne 0 ]]; then
  echo "restore.sh: must run as root (log in as root or give the SSH user passwordless sudo)" >&2
  exit 2
fi

wait_for_cri() {
  local deadline=$((SECONDS + RESTART_TIMEOUT)) status=""
  while ((SECONDS < deadline)); do
    status=$(ctr --address "$CONTAINERD_ADDRESS" plugins ls 2>/dev/null |
      awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" {print $NF}' || true)
    [[ $status == ok ]] && return 0
    [[ $status == error ]] && return 1
    sleep 0.2
  done
  return 1
}

orig="${CONFIG_FILE}.registry-mirrors.orig"
restored=0
if [[ -f $orig ]]; then
  if ! cmp -s "$orig" "$CONFIG_FILE"; then
    [[ -f $CONFIG_FILE ]] && cp -p "$CONFIG_FILE" "${CONFIG_FILE}.registry-mirrors.before-restore"
    tmp=$(mktemp "$(dirname "$CONFIG_FILE")/.config.toml.registry-mirrors.XXXXXX")
    cp -p "$orig" "$tmp"
    mv -f "$tmp" "$CONFIG_FILE"
    restored=1
  fi
  rm -f "$orig"
elif [[ -f ${CONFIG_FILE}.registry-mirrors.absent ]]; then
  [[ -f $CONFIG_FILE ]] && mv -f "$CONFIG_FILE" "${CONFIG_FILE}.registry-mirrors.before-restore"
  rm -f "${CONFIG_FILE}.registry-mirrors.absent"
  restored=1
fi
rm -f "${CONFIG_FILE}.registry-mirrors.applied"
echo "restored=${restored}"
if ((restored)); then
  bash -c "$RESTART_COMMAND"
  if ! wait_for_cri; then
    echo "restore.sh: ${CONFIG_FILE} was restored but containerd's CRI plugin is not ok after ${RESTART_TIMEOUT}s" >&2
    exit 5
  fi
  echo "restarted=1"
else
  echo "restarted=0"
fi
