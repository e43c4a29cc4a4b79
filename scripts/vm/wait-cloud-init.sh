#!/usr/bin/env bash
# Wait until cloud-init has finished on the registry VM, so nothing later touches a half-booted
# VM (Docker not installed yet, registry directories missing).
# Parameters (environment): TIMEOUT_SECONDS, EXPECTED_ADDRESS (the static ipconfig0 address).
set -euo pipefail

: "${TIMEOUT_SECONDS:?}" "${EXPECTED_ADDRESS:?}"

log() { printf 'wait-cloud-init: %s\n' "$*" >&2; }

status=0
timeout "${TIMEOUT_SECONDS}" cloud-init status --wait >/dev/null || status=$?
if [ "$status" -eq 124 ]; then
  log "cloud-init did not finish within ${TIMEOUT_SECONDS}s on $(hostname); see /var/log/cloud-init-output.log"
  exit 1
fi
# Exit 2 is "done with recoverable errors" on newer cloud-init: still a broken VM for us.
if [ "$status" -ne 0 ]; then
  log "cloud-init finished with errors (status $status):"
  cloud-init status --long >&2 || true
  exit 1
fi

# The address must be the static one from ipconfig0: a DHCP lease here breaks every mirror.
if ! ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1 | grep -qxF "$EXPECTED_ADDRESS"; then
  log "expected static address ${EXPECTED_ADDRESS} is not configured on $(hostname):"
  ip -4 -o addr show >&2
  exit 1
fi

if ! systemctl is-active --quiet docker; then
  log "docker is not active after cloud-init; see journalctl -u docker"
  exit 1
fi
echo "ready address=${EXPECTED_ADDRESS}"
