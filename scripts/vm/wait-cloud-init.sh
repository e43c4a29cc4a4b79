#!/usr/bin/env bash
# Wait until cloud-init has finished on the registry VM, so nothing later touches a half-booted
# VM (Docker not installed yet, registry directories missing), and check what the nodes rely on:
# the static ipconfig0 address and gateway, no DHCP lease beside them, Docker running.
# Parameters (environment): TIMEOUT_SECONDS, EXPECTED_ADDRESS, EXPECTED_GATEWAY (from ipconfig0).
set -euo pipefail

: "${TIMEOUT_SECONDS:?}" "${EXPECTED_ADDRESS:?}" "${EXPECTED_GATEWAY:?}"

log() { printf 'wait-cloud-init: %s\n' "$*" >&2; }

status=0
timeout "${TIMEOUT_SECONDS}" cloud-init status --wait >/dev/null || status=$?
if [ "$status" -eq 124 ]; then
  log "cloud-init did not finish within ${TIMEOUT_SECONDS}s on $(hostname); see /var/log/cloud-init-output.log"
  exit 1
fi
# cloud-init 23.4+ exits 2 for "done, with recoverable errors". Proxmox's own user-data makes
# one on every VM (`user: <ciuser>`, deprecated in favour of `users`): a deprecation alone is not
# a broken VM. Anything else recoverable (a WARNING) or any error is.
if [ "$status" -eq 2 ]; then
  # `status --format json` exits 2 as well when degraded (handle_status_args returns the same code
  # for every format): under pipefail that would fail the check below whatever the JSON says.
  status_json=$(cloud-init status --format json || true)
  if python3 -c '
import json, sys
status = json.load(sys.stdin)
recoverable = status.get("recoverable_errors") or {}
sys.exit(0 if not status.get("errors") and set(recoverable) <= {"DEPRECATED"} else 1)
' <<<"$status_json"; then
    log "cloud-init finished with deprecation notices only (e.g. Proxmox's 'user:' key):"
    cloud-init status --long >&2 || true
    status=0
  fi
fi
if [ "$status" -ne 0 ]; then
  # 22.4's `status --wait` returns as soon as a module failed, before the last stage is done.
  log "cloud-init finished with errors (status $status) on $(hostname):"
  cloud-init status --long >&2 || true
  exit 1
fi

# The address must be the static one from ipconfig0: a DHCP lease here breaks every mirror.
if ! ip -4 -o addr show | awk '{print $4}' | cut -d/ -f1 | grep -qxF "$EXPECTED_ADDRESS"; then
  log "expected static address ${EXPECTED_ADDRESS} is not configured on $(hostname):"
  ip -4 -o addr show >&2
  exit 1
fi
# A lease beside it means something else configures the NIC too (an image's netplan default such
# as Debian's /etc/netplan/90-default.yaml): the VM would answer on an address no node knows,
# and the DHCP route may win.
if [ -n "$(ip -4 -o addr show dynamic)" ]; then
  log "a DHCP lease besides the static address ${EXPECTED_ADDRESS} on $(hostname) (see /etc/netplan/):"
  ip -4 -o addr show dynamic >&2
  exit 1
fi
if ! ip -4 route show default | grep -qw "via ${EXPECTED_GATEWAY}"; then
  log "the default route is not via the ipconfig0 gateway ${EXPECTED_GATEWAY} on $(hostname):"
  ip -4 route show default >&2
  exit 1
fi

if ! systemctl is-active --quiet docker; then
  log "docker is not active after cloud-init; see journalctl -u docker"
  exit 1
fi
echo "ready address=${EXPECTED_ADDRESS}"
