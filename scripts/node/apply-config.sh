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
#   HEALTH_COMMAND       control-plane nodes only (empty: a worker): the node's own check that it
#                        is healthy as a cluster member (exit 0), e.g. its API server's /readyz;
#                        it must pass before the change (else exit 7, nothing changed) and again
#                        within HEALTH_TIMEOUT after the restart (else the change is rolled back)
#   HEALTH_TIMEOUT       seconds for that, after the CRI plugin is ok
#   DROPIN_COUNT         0 (default): stdin is the new config.toml. N > 0: stdin is a bundle of
#                        N+1 files, config.toml first, then the `imports` drop-ins that change
#                        with it (issue 22), each after a line
#                        "# registry-mirrors-file: <expected sha256> <bytes> <path>" and exactly
#                        <bytes> bytes of text; each file has its own guard (the one line
#                        EXPECTED_SHA256 is config.toml's), all are checked before any is
#                        changed, one restart, and a failed CRI check puts every one back.
#                        Their paths are kept in <CONFIG_FILE>.registry-mirrors.dropins, so
#                        restore.sh puts them back too.
#   APPLY_MARK           recorded with every file it leaves (lib.sh record_applied; probe.sh
#                        reads it back)
# stdin: the new config.toml (or the bundle), after the script itself (renderers/shell.py
#   stdin_command).
# Output: key=value lines: changed=0|1 restarted=0|1 backup=PATH rolled_back=0|1, and after a
#   successful restart deprecations=<ids> (what `ctr deprecations list` names, containerd 1.7+;
#   "unsupported" on 1.6): io.containerd.deprecation/cri-registry-mirrors there means the running
#   daemon still has a `mirrors` entry. On failure: a summary first, then all of it on stderr.
# Exit: 0 ok; 2 not root; 3 edited since probe; 4 rejected by `containerd config dump`;
#       5 CRI plugin failed (or a control-plane node did not become healthy), old config restored;
#       6 that, and so did the rollback; 7 a control-plane node not healthy before: nothing changed.
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${EXPECTED_SHA256:?EXPECTED_SHA256 is required}"
: "${RESTART_COMMAND:?RESTART_COMMAND is required}"
: "${RESTART_TIMEOUT:=60}"
: "${HEALTH_COMMAND:=}"
: "${HEALTH_TIMEOUT:=300}"
: "${CONTAINERD_ADDRESS:=/run/containerd/containerd.sock}"
: "${CONTAINERD_LOG:=}"
: "${DROPIN_COUNT:=0}"
: "${APPLY_MARK:=}"

# shellcheck source=scripts/node/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=scripts/node/step.sh
. "$(dirname "$0")/step.sh"
hold_output
require_root

# files[i] gets staged[i] unless its checksum is no longer guards[i]; files[0] is CONFIG_FILE.
# (Each staged file is in step.sh's cleanup list, removed when the step ends unless installed.)
files=() guards=() staged=()
if ((DROPIN_COUNT == 0)); then
  stage_stdin "$CONFIG_FILE"
  files=("$CONFIG_FILE") guards=("$EXPECTED_SHA256") staged=("$new")
else
  for ((i = 0; i <= DROPIN_COUNT; i++)); do
    IFS= read -r header || header=""
    if [[ ! $header =~ ^#\ registry-mirrors-file:\ ([0-9a-f]{64}|absent)\ ([0-9]+)\ (/.+)$ ]]; then
      fail_with "its stdin is not the bundle of $((DROPIN_COUNT + 1)) files it expects" \
        "nothing: nothing was changed" "report it: the program should never send this"
      echo "${me}: stdin is not a bundle of $((DROPIN_COUNT + 1)) files (file $((i + 1)): ${header@Q}); nothing changed" >&2
      exit 4
    fi
    path=${BASH_REMATCH[3]}
    if ((i == 0)) && [[ $path != "$CONFIG_FILE" ]]; then
      fail_with "its bundle does not start with ${CONFIG_FILE}" "nothing: nothing was changed" \
        "report it: the program should never send this"
      echo "${me}: the bundle starts with ${path}, not ${CONFIG_FILE}; nothing changed" >&2
      exit 4
    fi
    mkdir -p "$(dirname "$path")"
    staged+=("$(temp_next_to "$path")")
    cleanup+=("${staged[i]}")
    # GNU head -c reads no byte past its count, even from a pipe: the next header is next.
    head -c "${BASH_REMATCH[2]}" >"${staged[i]}"
    files+=("$path") guards+=("${BASH_REMATCH[1]}")
  done
fi

# Every guard before any change: a file edited since the probe stops the step with nothing changed.
changing=()
for i in "${!files[@]}"; do
  [[ -f ${files[i]} ]] && cmp -s "${staged[i]}" "${files[i]}" && continue
  current=absent
  [[ -f ${files[i]} ]] && current=$(sha256_of "${files[i]}")
  if [[ $current != "${guards[i]}" ]]; then
    fail_with "${files[i]} changed since the program read it" "nothing: nothing was changed" \
      "run pulumi up again (it reads the node again and plans from what is there now)"
    echo "${me}: ${files[i]} changed since it was probed (expected sha256 ${guards[i]}, now ${current}); nothing changed, run pulumi up again" >&2
    exit 3
  fi
  changing+=("$i")
done
if ((${#changing[@]} == 0)); then
  # Nothing to change: recorded as applied all the same, with this step's mark (the next probe
  # then plans these very inputs again).
  for i in "${!files[@]}"; do
    [[ -f ${files[i]} ]] && record_applied "${files[i]}" "${guards[i]}" "$APPLY_MARK"
  done
  echo "changed=0"
  echo "restarted=0"
  exit 0
fi

for i in "${changing[@]}"; do
  # A drop-in is checked on its own (it is a whole config to containerd's loader); config.toml
  # reads the drop-ins on disk, which are still the old ones here.
  if ! check_output=$(containerd -c "${staged[i]}" config dump 2>&1 >/dev/null); then
    fail_with "this containerd refuses the migrated ${files[i]} (containerd config dump, below)" \
      "nothing: no file was replaced" \
      "report the lines below (a migration this containerd cannot load is a bug of the program); meanwhile nodes[].state: held keeps this node out of pulumi up"
    echo "${me}: containerd rejects the new ${files[i]}; nothing changed:" >&2
    echo "$check_output" >&2
    exit 4
  fi
done

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

require_member_healthy

# restore.sh puts these back with config.toml; written before the first of them changes.
dropin_list="${CONFIG_FILE}.registry-mirrors.dropins"
for i in "${changing[@]}"; do
  ((i == 0)) && continue
  if ! { [[ -f $dropin_list ]] && grep -qxF -- "${files[i]}" "$dropin_list"; }; then
    echo "${files[i]}" >>"$dropin_list"
  fi
done
backups=()
for i in "${changing[@]}"; do
  install_new "${files[i]}" "${staged[i]}"
  backups[i]=$backup
done

# roll_back_all: every file installed above as it was (exit 6 when one cannot be put back).
roll_back_all() {
  local i
  for i in "${changing[@]}"; do
    if ! roll_back "${files[i]}" "${backups[i]}"; then
      failed_undone="NOTHING: the previous ${files[i]} could NOT be put back (${backups[i]:-there was none}); the new one is in place and the daemon is not ok with it"
      failed_todo="the node needs a person now: put the previous file back by hand (${backups[i]:-remove ${files[i]}}), restart, check the CRI plugin; meanwhile nodes[].state: held keeps this node out of pulumi up"
      echo "rolled_back=0"
      echo "${me}: the daemon did not come back with the new ${files[i]}, and the previous one could NOT be put back (${backups[i]:-there was none}): the node is NOT ok" >&2
      exit 6
    fi
  done
  echo "rolled_back=1"
}

if restart_and_wait; then
  # probe.sh reads them back; restore.sh removes them. Every file of the step, changed or not,
  # with this step's mark: the next probe plans these very inputs again.
  for i in "${!files[@]}"; do
    [[ -f ${files[i]} ]] && record_applied "${files[i]}" "${guards[i]}" "$APPLY_MARK"
  done
  echo "restarted=1"
  echo "rolled_back=0"
  echo "deprecations=$(deprecations)"
  exit 0
fi

reason=$(containerd_error_text)
written=""
for i in "${changing[@]}"; do written+="${written:+ and }${files[i]}"; done
failed_todo="fix what containerd says below (its own words), then run pulumi up again; meanwhile nodes[].state: held keeps this node out of pulumi up"
if ((member_failed)); then
  failed_what="with the new ${written} the node did not become healthy as a cluster member within ${HEALTH_TIMEOUT}s"
  failed_todo="look at the node's cluster health (the health command's words are below), then run pulumi up again; meanwhile nodes[].state: held keeps this node out of pulumi up"
elif [[ $cri_state == error ]]; then
  failed_what="with the new ${written} containerd runs with its CRI plugin in error (kubelet would fail)"
else
  failed_what="with the new ${written} containerd's CRI plugin did not become ok within ${RESTART_TIMEOUT}s"
fi
echo "restarted=1"
roll_back_all
{
  if ((member_failed)); then
    echo "${me}: after writing ${written}, $(member_text); the previous config was restored."
  elif [[ $cri_state == error ]]; then
    echo "${me}: after writing ${written} containerd runs with its CRI plugin in error (kubelet would fail); the previous config was restored."
  else
    echo "${me}: after writing ${written} containerd's CRI plugin did not become ok within ${RESTART_TIMEOUT}s; the previous config was restored."
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
exit_after_roll_back "$written" containerd_error_text
