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
#                        anything else on disk now (unless it already is the new text) means
#                        someone edited it: refuse
#   RESTART_COMMAND      e.g. "systemctl restart k3s" (k3s-agent, rke2-server, rke2-agent)
#   RESTART_TIMEOUT      seconds to wait for the CRI plugin after a restart
#   CONTAINERD_ADDRESS   the distribution's containerd socket (/run/k3s/containerd/containerd.sock)
#   HEALTH_COMMAND       control-plane nodes only (empty: a worker): the node's own check that it
#                        is healthy as a cluster member (exit 0), e.g. its API server's /readyz;
#                        it must pass before the change (else exit 7, nothing changed) and again
#                        within HEALTH_TIMEOUT after the restart (else the change is rolled back)
#   HEALTH_TIMEOUT       seconds for that, after the CRI plugin is ok
#   CTR                  its ctr (k3s: /var/lib/rancher/k3s/data/current/bin/ctr); default: PATH
#   HOSTS_DIR            where it generates <host>/hosts.toml
#   EXPECTED_HOSTS       "<host>=<our cache URL> ..." to find first in each generated hosts.toml
#   UNIT                 the unit, for its journal on failure
#   SERVICE_LOG          optional log file of the service to quote on failure (else the journal)
#   CONTAINERD_LOG       the distribution's containerd log (k3s logs containerd to a file)
#   APPLY_MARK           recorded with the file and CA_FILE (lib.sh record_applied; probe.sh
#                        reads it back)
#   CA_FILE              where the CA certificates of our caches go (registries.yaml's
#                        configs.<cache>.tls.ca_file names it); removed when stdin has none
#   RESTORE              1: no stdin; put back the very first original (nodes[].state:
#                        restored), restart and wait, like restore.sh for config.toml; CA_FILE
#                        removed
# stdin: after the script itself: TLS on, the CA section (lib.sh, take_trust_section) written to
# CA_FILE before the restart that makes the distribution read it; then the new registries.yaml
# (not read with RESTORE=1).
# Output: key=value lines: changed=0|1 restarted=0|1 backup=PATH rolled_back=0|1 (restored=0|1).
#   On failure: a summary first, then all of it on stderr.
# Exit: 0 ok; 2 not root; 3 edited since probe; 5 failed, previous file restored and the
#       distribution is ok again; 6 failed and so did the rollback; 7 a control-plane node (a
#       server) was not healthy as a cluster member before the change: nothing changed.
set -euo pipefail

: "${REGISTRIES_FILE:?REGISTRIES_FILE is required}"
: "${RESTART_COMMAND:?RESTART_COMMAND is required}"
: "${RESTART_TIMEOUT:=60}"
: "${HEALTH_COMMAND:=}"
: "${HEALTH_TIMEOUT:=300}"
: "${CONTAINERD_ADDRESS:=/run/k3s/containerd/containerd.sock}"
: "${CTR:=}"
: "${HOSTS_DIR:=}"
: "${EXPECTED_HOSTS:=}"
: "${UNIT:=}"
: "${SERVICE_LOG:=}"
: "${CONTAINERD_LOG:=}"
: "${APPLY_MARK:=}"
: "${RESTORE:=0}"
: "${CA_FILE:=}"

# shellcheck source=scripts/node/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=scripts/node/step.sh
. "$(dirname "$0")/step.sh"
hold_output
require_root
if [[ -n $CTR && -x $CTR ]]; then ctr_bin=$CTR; fi

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

if [[ $RESTORE == 1 ]]; then
  restore_original "$REGISTRIES_FILE" distribution_error_text
  [[ -z $CA_FILE ]] || rm -f "$CA_FILE"
  exit 0
fi

: "${EXPECTED_SHA256:?EXPECTED_SHA256 is required}"
stage_stdin "$REGISTRIES_FILE"
take_trust_section "$new"
# Nothing is written (the CA file included) when registries.yaml changed since the probe.
refuse_if_changed "$REGISTRIES_FILE" "$new" "$EXPECTED_SHA256"
# The CA file before anything that names it; a changed CA alone needs no restart (containerd reads the file
# on every connection), and registries.yaml is then unchanged. Recorded with registries.yaml
# (record_applied): a CA file removed or changed on the node is drift, the step runs again.
if [[ -n $CA_FILE ]]; then
  install_trust "$CA_FILE"
  [[ ! -f $CA_FILE ]] || applied_also=("$CA_FILE")
fi
skip_or_refuse "$REGISTRIES_FILE" "$new" "$EXPECTED_SHA256" "$APPLY_MARK"
require_member_healthy
install_new "$REGISTRIES_FILE" "$new"

hosts_problem=""
if restart_and_wait; then
  if hosts_problem=$(check_generated_hosts); then
    # probe.sh reads it back; RESTORE removes it.
    record_applied "$REGISTRIES_FILE" "$EXPECTED_SHA256" "$APPLY_MARK"
    echo "restarted=1"
    echo "rolled_back=0"
    exit 0
  fi
fi

reason=$(distribution_error_text)
failed_todo="fix what ${UNIT:-the service} says below, then run pulumi up again; meanwhile nodes[].state: held keeps this node out of pulumi up"
if ((member_failed)); then
  failed_what="with the new ${REGISTRIES_FILE} the node did not become healthy as a cluster member within ${HEALTH_TIMEOUT}s"
  failed_todo="look at the node's cluster health (the health command's words are below), then run pulumi up again; meanwhile nodes[].state: held keeps this node out of pulumi up"
elif [[ -n $hosts_problem ]]; then
  failed_what="after writing ${REGISTRIES_FILE} and restarting ${UNIT:-the service}, ${hosts_problem}"
else
  failed_what="with the new ${REGISTRIES_FILE} the CRI plugin on ${CONTAINERD_ADDRESS} did not become ok within ${RESTART_TIMEOUT}s"
fi
echo "restarted=1"
roll_back_or_exit "$REGISTRIES_FILE" "$backup"
{
  if ((member_failed)); then
    echo "${me}: after writing ${REGISTRIES_FILE} and restarting, $(member_text); the previous file was restored."
  elif [[ -n $hosts_problem ]]; then
    echo "${me}: after writing ${REGISTRIES_FILE} and restarting, ${hosts_problem}; the previous file was restored."
  else
    echo "${me}: after writing ${REGISTRIES_FILE} the CRI plugin on ${CONTAINERD_ADDRESS} did not become ok within ${RESTART_TIMEOUT}s; the previous file was restored."
  fi
  [[ -n $restart_output ]] && echo "restart command output: ${restart_output}"
  echo "${UNIT:-the service} says:"
  echo "${reason:-<no error text found>}"
} >&2
exit_after_roll_back "$REGISTRIES_FILE" distribution_error_text
