#!/usr/bin/env bash
# Replace containerd's config.toml with the migrated text on stdin, restart containerd and prove
# the CRI plugin came back; otherwise put the old file back.
# Why the CRI plugin and not "service active": with a bad registry section (mirrors next to
# config_path) containerd keeps running and only skips the CRI plugin; kubelet then fails with
# "unknown service runtime.v1.RuntimeService".
# Params (env):
#   CONFIG_FILE          config.toml path
#   EXPECTED_SHA256      sha256 of the file the component migrated ("absent": no file then);
#                        anything else on disk now (unless it already is the new text) means
#                        someone edited it: refuse
#   RESTART_COMMAND      how to restart containerd (e.g. "systemctl restart containerd")
#   RESTART_TIMEOUT      seconds to wait for the CRI plugin after a restart
#   CONTAINERD_ADDRESS   containerd's socket (default /run/containerd/containerd.sock)
#   CONTAINERD_LOG       optional log file to quote on failure (else the journal)
# stdin: the new config.toml.
# Output: key=value lines: changed=0|1 restarted=0|1 backup=PATH rolled_back=0|1, and after a
#   successful restart deprecations=<ids> (what `ctr deprecations list` names, containerd 1.7+;
#   "unsupported" on 1.6): io.containerd.deprecation/cri-registry-mirrors there means the running
#   daemon still has a `mirrors` entry.
# Exit: 0 ok; 2 not root; 3 edited since probe; 4 rejected by `containerd config dump`;
#       5 CRI plugin failed, old config restored; 6 CRI failed and so did the rollback.
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${EXPECTED_SHA256:?EXPECTED_SHA256 is required}"
: "${RESTART_COMMAND:?RESTART_COMMAND is required}"
: "${RESTART_TIMEOUT:=60}"
: "${CONTAINERD_ADDRESS:=/run/containerd/containerd.sock}"
: "${CONTAINERD_LOG:=}"

# shellcheck source=scripts/node/lib.sh
. "$(dirname "$0")/lib.sh"
require_root

stage_stdin "$CONFIG_FILE"
skip_or_refuse "$CONFIG_FILE" "$new" "$EXPECTED_SHA256"

if ! check_output=$(containerd -c "$new" config dump 2>&1 >/dev/null); then
  echo "${me}: containerd rejects the new ${CONFIG_FILE}; nothing changed:" >&2
  echo "$check_output" >&2
  exit 4
fi

containerd_error_text() {
  # containerd's own words: the init error of every CRI plugin that failed, then the log lines
  # around it. 1.x: io.containerd.grpc.v1.cri itself ("invalid plugin config: ..."); 2.x: the
  # root cause is io.containerd.cri.v1.images ("invalid cri image config: ..."), and grpc.v1.cri
  # fails as its dependent ("unable to load CRI image service plugin dependency: ...").
  ctr --address "$CONTAINERD_ADDRESS" plugins ls --detailed 2>&1 |
    awk '/^Type:/ {type = $2} /^ID:/ {id = $2}
      /^ *Message:/ && (type ~ /^io\.containerd\.cri\./ || (type == "io.containerd.grpc.v1" && id == "cri")) {
        sub(/^ *Message: */, ""); print "cri plugin " type "." id ": " $0
      }' || true
  if [[ -n $CONTAINERD_LOG && -r $CONTAINERD_LOG ]]; then
    grep -E 'level=(error|fatal|warning)' "$CONTAINERD_LOG" | tail -n 5 || true
  elif command -v journalctl >/dev/null 2>&1; then
    journalctl -q -u containerd --since "-${RESTART_TIMEOUT}s" --no-pager -n 20 -p warning 2>/dev/null || true
  fi
}

deprecations() {
  # What the RUNNING daemon loaded (config dump only reads the file). 1.6 has no such command.
  local out
  if out=$(ctr --address "$CONTAINERD_ADDRESS" deprecations list 2>/dev/null); then
    awk 'NR > 1 && NF {print $1}' <<<"$out" | paste -s -d ' '
  else
    echo unsupported
  fi
}

install_new "$CONFIG_FILE" "$new"

if restart_and_wait; then
  # probe.sh reads it back; restore.sh removes it.
  record_applied "$CONFIG_FILE" "$EXPECTED_SHA256"
  echo "restarted=1"
  echo "rolled_back=0"
  echo "deprecations=$(deprecations)"
  exit 0
fi

reason=$(containerd_error_text)
echo "restarted=1"
roll_back_or_exit "$CONFIG_FILE" "$backup"
{
  if [[ $cri_state == error ]]; then
    echo "${me}: after writing ${CONFIG_FILE} containerd runs with its CRI plugin in error (kubelet would fail); the previous config was restored."
  else
    echo "${me}: after writing ${CONFIG_FILE} containerd's CRI plugin did not become ok within ${RESTART_TIMEOUT}s; the previous config was restored."
  fi
  [[ -n $restart_output ]] && echo "restart command output: ${restart_output}"
  echo "containerd says:"
  echo "${reason:-<no error text found>}"
  if [[ $reason == *"cannot be set when \`config_path\` is provided"* ]]; then
    # 1.6/1.7: "invalid plugin config: ..." (also for `configs.tls`); 2.x: "invalid cri image
    # config: ..." from io.containerd.cri.v1.images. README: Troubleshooting.
    echo "hint: containerd refuses registry.mirrors (1.x: also registry.configs.*.tls) next to config_path; remove them (hosts.toml replaces them)"
  fi
} >&2
exit_after_roll_back "$CONFIG_FILE" containerd_error_text
