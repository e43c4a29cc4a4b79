#!/usr/bin/env bash
# Undo what apply-config.sh did (nodes[].state: restored): put back the very first original
# config.toml (<file>.registry-mirrors.orig), restart containerd and wait for the CRI plugin. A
# file the user changed after us is still replaced: it is backed up as
# <file>.registry-mirrors.before-restore first. The `imports` drop-ins apply-config.sh changed
# (listed in <file>.registry-mirrors.dropins) are put back the same way, before the one restart.
# (hosts.sh REMOVE_ALL=1 undoes the hosts.toml side.)
# Params (env): CONFIG_FILE, RESTART_COMMAND, RESTART_TIMEOUT, CONTAINERD_ADDRESS, and on a
# control-plane node HEALTH_COMMAND, HEALTH_TIMEOUT (after the restart it must be healthy as a
# cluster member again, as after apply-config.sh's).
# Output: key=value lines: restored=0|1 restarted=0|1.
# Exit: 0 ok; 2 not root; 5 restored, but the restart failed or the CRI plugin is not ok.
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${RESTART_COMMAND:=systemctl restart containerd}"
: "${RESTART_TIMEOUT:=60}"
: "${HEALTH_COMMAND:=}"
: "${HEALTH_TIMEOUT:=300}"
: "${CONTAINERD_ADDRESS:=/run/containerd/containerd.sock}"

# shellcheck source=scripts/node/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=scripts/node/step.sh
. "$(dirname "$0")/step.sh"
hold_output
require_root

dropin_list="${CONFIG_FILE}.registry-mirrors.dropins"
if [[ -f $dropin_list ]]; then
  mapfile -t restore_also <"$dropin_list"
fi
restore_original "$CONFIG_FILE"
rm -f "$dropin_list"
