#!/usr/bin/env bash
# Undo what apply-config.sh and hosts.sh did (pulumi destroy / node removed).
# CONFIG_FILE set: put back the very first original config.toml (<file>.registry-mirrors.orig),
#   restart containerd and wait for the CRI plugin. A file the user changed after us is still
#   replaced: it is backed up as <file>.registry-mirrors.before-restore first.
# CONFIG_PATH set: remove the hosts.toml directories listed in our manifest, nothing else (a
#   hand-made hosts.toml we replaced is put back).
# Params (env): CONFIG_FILE, CONFIG_PATH, RESTART_COMMAND, RESTART_TIMEOUT, CONTAINERD_ADDRESS.
# Output: key=value lines: restored=0|1 restarted=0|1 removed=<dir>.
set -euo pipefail

: "${CONFIG_FILE:=}"
: "${CONFIG_PATH:=}"
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

if [[ -n $CONFIG_FILE ]]; then
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
fi

if [[ -n $CONFIG_PATH ]]; then
  manifest="${CONFIG_PATH}/.registry-mirrors-managed"
  if [[ -f $manifest ]]; then
    while read -r dir; do
      [[ $dir =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(:[0-9]+)?$ && $dir != *..* ]] || continue
      if [[ -f ${CONFIG_PATH}/${dir}/hosts.toml.registry-mirrors.orig ]]; then
        # A hand-made hosts.toml was there before us (hosts.sh kept it): put it back.
        mv -f "${CONFIG_PATH}/${dir}/hosts.toml.registry-mirrors.orig" "${CONFIG_PATH}/${dir}/hosts.toml"
      else
        rm -f "${CONFIG_PATH}/${dir}/hosts.toml"
        rmdir "${CONFIG_PATH}/${dir}" 2>/dev/null || true
      fi
      echo "removed=${dir}"
    done <"$manifest"
    rm -f "$manifest"
  fi
fi
