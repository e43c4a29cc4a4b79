#!/usr/bin/env bash
# k3s / RKE2 nodes: write the merged registries.yaml (stdin), restart the distribution's unit, wait
# until its containerd's CRI plugin is ok, then check that the hosts.toml the distribution
# generated for each upstream names our cache first; otherwise put the previous file back.
# Why all that: k3s and RKE2 read registries.yaml only at start and regenerate their containerd's
# config.toml and certs.d from it (deleting what they generated before), so the file alone proves
# nothing; a file k3s cannot parse stops k3s (and its containerd) from starting.
# Params (env):
#   REGISTRIES_FILE      /etc/rancher/k3s/registries.yaml or /etc/rancher/rke2/registries.yaml
#   EXPECTED_SHA256      sha256 of the file the component merged into ("absent": no file then);
#                        anything else on disk now means someone edited it: refuse
#   RESTART_COMMAND      e.g. "systemctl restart k3s" (k3s-agent, rke2-server, rke2-agent)
#   RESTART_TIMEOUT      seconds to wait for the CRI plugin after a restart
#   CONTAINERD_ADDRESS   the distribution's containerd socket (/run/k3s/containerd/containerd.sock)
#   CTR                  its ctr (k3s: /var/lib/rancher/k3s/data/current/bin/ctr); default: PATH
#   HOSTS_DIR            where it generates <host>/hosts.toml
#   EXPECTED_HOSTS       "<host>=<our cache URL> ..." to find first in each generated hosts.toml
#   UNIT                 the unit, for its journal on failure
#   SERVICE_LOG          optional log file of the service to quote on failure (else the journal)
#   CONTAINERD_LOG       the distribution's containerd log (k3s logs containerd to a file)
#   RESTORE              1: no stdin; put back the very first original (pulumi destroy / node
#                        removed), restart and wait, like restore.sh for config.toml
# stdin: the new registries.yaml (not read with RESTORE=1).
# Output: key=value lines: changed=0|1 restarted=0|1 backup=PATH rolled_back=0|1 (restored=0|1).
# Exit: 0 ok; 2 not root; 3 edited since probe; 5 failed, previous file restored and the
#       distribution is ok again; 6 failed and so did the rollback.
set -euo pipefail

: "${REGISTRIES_FILE:?REGISTRIES_FILE is required}"
: "${RESTART_COMMAND:?RESTART_COMMAND is required}"
: "${RESTART_TIMEOUT:=60}"
: "${CONTAINERD_ADDRESS:=/run/k3s/containerd/containerd.sock}"
: "${CTR:=}"
: "${HOSTS_DIR:=}"
: "${EXPECTED_HOSTS:=}"
: "${UNIT:=}"
: "${SERVICE_LOG:=}"
: "${CONTAINERD_LOG:=}"
: "${RESTORE:=0}"

me=registries.sh
if [[ $(id -u) -ne 0 ]]; then
  echo "${me}: must run as root (log in as root or give the SSH user passwordless sudo)" >&2
  exit 2
fi
[[ -n $CTR && -x $CTR ]] || CTR=$(command -v ctr || true)

dir=$(dirname "$REGISTRIES_FILE")
orig="${REGISTRIES_FILE}.registry-mirrors.orig"
absent_marker="${REGISTRIES_FILE}.registry-mirrors.absent"

cri_status() {
  [[ -n $CTR ]] || return 0
  "$CTR" --address "$CONTAINERD_ADDRESS" plugins ls 2>/dev/null |
    awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" {print $NF}'
}

wait_for_cri() {
  local deadline=$((SECONDS + RESTART_TIMEOUT)) status=""
  while ((SECONDS < deadline)); do
    status=$(cri_status || true)
    [[ $status == ok ]] && return 0
    # "error" is final for this daemon: containerd skipped the plugin and will not retry.
    [[ $status == error ]] && return 1
    sleep 0.2
  done
  return 1
}

restart() {
  bash -c "$RESTART_COMMAND"
}

# The first [host."..."] table of the generated file must be our cache (k3s writes the URL with
# /v2 appended since v1.29, without before): tried first, then the node's own mirrors, then the
# upstream (`server`).
check_generated_hosts() {
  local pair host url file first
  for pair in $EXPECTED_HOSTS; do
    host=${pair%%=*}
    url=${pair#*=}
    file="${HOSTS_DIR}/${host}/hosts.toml"
    if [[ ! -f $file ]]; then
      echo "no ${file}: the distribution generated no hosts.toml for ${host}"
      return 1
    fi
    first=$(grep -m 1 -E '^[[:space:]]*\[host\.' "$file" || true)
    if [[ $first != *"[host.\"${url}\"]"* && $first != *"[host.\"${url}/v2\"]"* ]]; then
      echo "${file} does not try our cache ${url} first (first host: ${first:-none})"
      return 1
    fi
  done
}

distribution_error_text() {
  if [[ -n $SERVICE_LOG && -r $SERVICE_LOG ]]; then
    grep -E 'level=(error|fatal)|^(Error|error|fatal)' "$SERVICE_LOG" | tail -n 5 || true
  elif [[ -n $UNIT ]] && command -v journalctl >/dev/null 2>&1; then
    journalctl -u "$UNIT" --since "-$((RESTART_TIMEOUT + 30))s" --no-pager -n 20 -p warning 2>/dev/null || true
  fi
  if [[ -n $CONTAINERD_LOG && -r $CONTAINERD_LOG ]]; then
    grep -E 'level=(error|fatal)' "$CONTAINERD_LOG" | tail -n 5 || true
  fi
}

put_in_place() {  # SOURCE: copy next to the target, then rename(2): never a half-written file
  local tmp
  tmp=$(mktemp "${dir}/.registries.yaml.registry-mirrors.XXXXXX")
  cp -p "$1" "$tmp"
  mv -f "$tmp" "$REGISTRIES_FILE"
}

if [[ $RESTORE == 1 ]]; then
  rm -f "${REGISTRIES_FILE}.registry-mirrors.applied"
  restored=0
  if [[ -f $orig ]]; then
    if ! cmp -s "$orig" "$REGISTRIES_FILE"; then
      [[ -f $REGISTRIES_FILE ]] && cp -p "$REGISTRIES_FILE" "${REGISTRIES_FILE}.registry-mirrors.before-restore"
      put_in_place "$orig"
      restored=1
    fi
    rm -f "$orig"
  elif [[ -f $absent_marker ]]; then
    [[ -f $REGISTRIES_FILE ]] && mv -f "$REGISTRIES_FILE" "${REGISTRIES_FILE}.registry-mirrors.before-restore"
    rm -f "$absent_marker"
    restored=1
  fi
  echo "restored=${restored}"
  if ((restored)); then
    if ! restart_output=$(restart 2>&1) || ! wait_for_cri; then
      {
        echo "${me}: ${REGISTRIES_FILE} was restored but the CRI plugin on ${CONTAINERD_ADDRESS} is not ok after ${RESTART_TIMEOUT}s"
        [[ -n ${restart_output:-} ]] && echo "restart command output: ${restart_output}"
        distribution_error_text
      } >&2
      exit 5
    fi
    echo "restarted=1"
  else
    echo "restarted=0"
  fi
  exit 0
fi

: "${EXPECTED_SHA256:?EXPECTED_SHA256 is required}"
mkdir -p "$dir"
new=$(mktemp "${dir}/.registries.yaml.registry-mirrors.XXXXXX")
trap 'rm -f "$new"' EXIT
cat >"$new"

# Identical text: nothing to do, and above all no restart, whatever the guard says (the guard of
# an unchanged node is the checksum of the file it was once merged from, see probe.sh).
if [[ -f $REGISTRIES_FILE ]] && cmp -s "$new" "$REGISTRIES_FILE"; then
  echo "changed=0"
  echo "restarted=0"
  exit 0
fi
current_sha=absent
[[ -f $REGISTRIES_FILE ]] && current_sha=$(sha256sum <"$REGISTRIES_FILE" | awk '{print $1}')
if [[ $current_sha != "$EXPECTED_SHA256" ]]; then
  echo "${me}: ${REGISTRIES_FILE} changed since it was probed (expected sha256 ${EXPECTED_SHA256}, now ${current_sha}); nothing changed, run pulumi up again" >&2
  exit 3
fi

# Keep the very first original forever (delete restores it) plus one backup per change.
stamp=$(date -u +%Y%m%dT%H%M%SZ)
backup=""
if [[ -f $REGISTRIES_FILE ]]; then
  [[ -e $orig ]] || cp -p "$REGISTRIES_FILE" "$orig"
  backup="${REGISTRIES_FILE}.registry-mirrors.${stamp}"
  cp -p "$REGISTRIES_FILE" "$backup"
  chmod --reference="$REGISTRIES_FILE" "$new"
else
  [[ -e $orig ]] || : >"$absent_marker"
  # registries.yaml may carry registry credentials (configs.*.auth).
  chmod 0600 "$new"
fi
mv -f "$new" "$REGISTRIES_FILE"
echo "changed=1"
echo "backup=${backup}"

restart_output=""
hosts_problem=""
if restart_output=$(restart 2>&1) && wait_for_cri; then
  if hosts_problem=$(check_generated_hosts); then
    # What we wrote and what it was merged from (probe.sh reads it back; RESTORE removes it).
    record=$(mktemp "${dir}/.registries.yaml.registry-mirrors.XXXXXX")
    printf '%s %s\n' "$(sha256sum <"$REGISTRIES_FILE" | awk '{print $1}')" "$EXPECTED_SHA256" >"$record"
    mv -f "$record" "${REGISTRIES_FILE}.registry-mirrors.applied"
    echo "restarted=1"
    echo "rolled_back=0"
    exit 0
  fi
fi

reason=$(distribution_error_text)
echo "restarted=1"
echo "rolled_back=1"
if [[ -n $backup ]]; then
  put_in_place "$backup"
else
  rm -f "$REGISTRIES_FILE" "$absent_marker"
fi
{
  if [[ -n $hosts_problem ]]; then
    echo "${me}: after writing ${REGISTRIES_FILE} and restarting, ${hosts_problem}; the previous file was restored."
  else
    echo "${me}: after writing ${REGISTRIES_FILE} the CRI plugin on ${CONTAINERD_ADDRESS} did not become ok within ${RESTART_TIMEOUT}s; the previous file was restored."
  fi
  [[ -n $restart_output ]] && echo "restart command output: ${restart_output}"
  echo "${UNIT:-the service} says:"
  echo "${reason:-<no error text found>}"
} >&2
if restart >/dev/null 2>&1 && wait_for_cri; then
  exit 5
fi
echo "${me}: the CRI plugin on ${CONTAINERD_ADDRESS} is NOT ok even with the restored ${REGISTRIES_FILE}: $(distribution_error_text)" >&2
exit 6
