# shellcheck shell=bash
# What apply-config.sh (containerd's config.toml), registries.sh (k3s/RKE2 registries.yaml) and
# restore.sh share: replace one file that a daemon reads only at start, restart the daemon, prove
# its CRI plugin came back, and keep what is needed to undo it.
# Never a file on the node: a script travels as `bash -c '<text>'` (components/renderers/shell.py),
# so there is nothing to source there; script_text() puts this text in place of the script's
# `. "$(dirname "$0")/lib.sh"` line. From a checkout that line sources this file (and
# `shellcheck -x` follows it).
# Reads no parameter of its own (tests/test_node_steps.py checks): each script declares the
# CONTAINERD_ADDRESS, RESTART_COMMAND, RESTART_TIMEOUT, HEALTH_COMMAND and HEALTH_TIMEOUT used
# here in its own header.
# Every node script sources it (the probe, and the steps: hosts.sh, apply-config.sh, registries.sh,
# restore.sh); the steps source step.sh after it (how a step ends: its output held, a failure's
# summary first).
#
# Next to FILE (probe.sh reads .orig, .absent and .applied back):
#   FILE.registry-mirrors.orig            the very first original, until a restore puts it back
#   FILE.registry-mirrors.absent          ... or the mark that there was no FILE then
#   FILE.registry-mirrors.<UTC stamp>     one backup per change
#   FILE.registry-mirrors.applied         "<sha256 left> <guard sent> <mark sent>" (record_applied),
#                                         then a sha256sum line per file in applied_also
#   FILE.registry-mirrors.before-restore  a FILE changed after us, replaced by a restore

# Messages name the script: $0 is node/<name>.sh on the node, scripts/node/<name>.sh in a checkout.
me=${0##*/}

# fail_with WHAT UNDONE TODO: the summary a failed step prints first (step.sh end_step); set it
# right before `exit N`. The probe, which is not a step, sets it to no effect.
# shellcheck disable=SC2034 # read by step.sh's end_step
failed_what="" failed_undone="" failed_todo=""
fail_with() {
  # shellcheck disable=SC2034
  failed_what=$1
  failed_undone=$2
  failed_todo=$3
}

# Temporary files and directories of a step, removed however it ends (step.sh end_step).
cleanup=()

require_root() {
  if [[ $(id -u) -ne 0 ]]; then
    fail_with "it must run as root" "nothing: nothing was changed" \
      "log in as root, or give nodes[].sshUser passwordless sudo"
    echo "${me}: must run as root (log in as root or give the SSH user passwordless sudo)" >&2
    exit 2
  fi
}

# --- the daemon: restart it, wait for its CRI plugin ---------------------------------------------

ctr_bin=ctr  # registries.sh: the distribution's own ctr (not on PATH)

cri_status() {
  "$ctr_bin" --address "$CONTAINERD_ADDRESS" plugins ls 2>/dev/null |
    awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" {print $NF}'
}

# Sets cri_state: "ok", or what it was when we gave up ("error", "" for no answer).
cri_state=""
wait_for_cri() {
  local deadline=$((SECONDS + RESTART_TIMEOUT))
  cri_state=""
  while ((SECONDS < deadline)); do
    cri_state=$(cri_status || true)
    [[ $cri_state == ok ]] && return 0
    # "error" is final for this daemon: containerd skipped the plugin and will not retry.
    [[ $cri_state == error ]] && return 1
    sleep 0.2
  done
  return 1
}

# The restart command gets RESTART_TIMEOUT seconds too (then SIGTERM, SIGKILL 5 s later): k3s and
# RKE2 units are Type=notify, often with no start timeout, so `systemctl restart` can wait forever
# on a daemon that never reports ready (issue 27). A restart that does not return is a failed
# restart: the caller rolls back as for a CRI plugin that is not ok.
restart() {
  local code=0
  # Not the step's real output (step.sh): a daemon the command starts must not hold the session.
  timeout --kill-after=5 "$RESTART_TIMEOUT" bash -c "$RESTART_COMMAND" 3>&- 4>&- || code=$?
  if ((code == 124 || code == 137)); then
    echo "the restart command did not return within ${RESTART_TIMEOUT}s and was stopped"
  fi
  return "$code"
}

# --- control-plane nodes: healthy as a cluster member -------------------------------------------
# HEALTH_COMMAND (control-plane nodes only; empty for workers) is the node's own check that it is
# back in the cluster, e.g. its API server's /readyz, which on k3s/RKE2 includes the embedded etcd
# member's health: "CRI answers" is not "this server rejoined etcd", and the next server of the
# rollout must not restart before it has (two of three down is no quorum).

# member_healthy: one attempt, at most 15 s (then SIGKILL 5 s later); sets member_output.
member_output=""
member_healthy() {
  member_output=$(timeout --kill-after=5 15 bash -c "$HEALTH_COMMAND" 2>&1 | tail -c 2000) &&
    return 0
  return 1
}

# wait_for_member: until HEALTH_COMMAND succeeds, at most HEALTH_TIMEOUT seconds (workers: at
# once). Sets member_failed=1 when it gave up.
member_failed=0
wait_for_member() {
  member_failed=0
  [[ -z $HEALTH_COMMAND ]] && return 0
  local deadline=$((SECONDS + HEALTH_TIMEOUT))
  while ! member_healthy; do
    if ((SECONDS >= deadline)); then
      member_failed=1
      return 1
    fi
    sleep 1
  done
}

# require_member_healthy: before a change, a control-plane node must already be healthy (a
# restart of a member that is not would not tell us anything, and may take the last quorum with
# it); exit 7 with nothing changed otherwise.
require_member_healthy() {
  [[ -z $HEALTH_COMMAND ]] && return 0
  member_healthy && return 0
  fail_with "the node is not healthy as a cluster member before the change (its health command fails)" \
    "nothing: nothing was changed" \
    "bring the node back into its cluster (the health command's words are below), or hold it out with nodes[].state: held, then run pulumi up again"
  echo "${me}: the node is not healthy as a cluster member before the change (${HEALTH_COMMAND}: ${member_output:-no output}); nothing changed" >&2
  exit 7
}

# member_text: the failure line for a node whose check gave up (empty when it did not).
member_text() {
  if ((member_failed)); then
    echo "the node did not become healthy as a cluster member within ${HEALTH_TIMEOUT}s after its CRI plugin was ok (${HEALTH_COMMAND}: ${member_output:-no output})"
  fi
}

# restart_and_wait: restart, then wait for the CRI plugin and (control-plane nodes) for the node to
# be healthy as a cluster member; sets restart_output (the restart command's own words, for the
# caller's failure message).
restart_output=""
# shellcheck disable=SC2034 # read by the caller
restart_and_wait() {
  member_failed=0
  restart_output=$(restart 2>&1) && wait_for_cri && wait_for_member
}

# --- directories carried from a previous config_path (probe.sh reads, hosts.sh copies) ----------

# dir_files DIR: the regular files directly in DIR, one name a line, in byte order.
dir_files() {
  local LC_ALL=C file
  for file in "$1"/*; do
    if [[ -f $file ]]; then printf '%s\n' "${file##*/}"; fi
  done
  return 0
}

# dir_digest DIR: sha256 over "<name> <sha256>" of each of those files: what probe.sh read is what
# hosts.sh copies, or hosts.sh refuses.
dir_digest() {
  local LC_ALL=C file
  for file in "$1"/*; do
    if [[ -f $file ]]; then printf '%s %s\n' "${file##*/}" "$(sha256sum <"$file" | awk '{print $1}')"; fi
  done | sha256sum | awk '{print $1}'
}

# --- the file ------------------------------------------------------------------------------------

sha256_of() {
  sha256sum <"$1" | awk '{print $1}'
}

# temp_next_to FILE: a new temporary file in FILE's directory (rename(2) is atomic only within one
# file system: a reader sees the old or the new FILE, never half of one).
temp_next_to() {
  mktemp "$(dirname "$1")/.${1##*/}.registry-mirrors.XXXXXX"
}

# put_in_place SOURCE FILE: FILE becomes a copy of SOURCE (mode kept), in one rename: never half
# a copy (a full disk, a dropped session), and no temporary file left behind when the copy fails.
put_in_place() {
  local source=$1 file=$2 tmp
  tmp=$(temp_next_to "$file")
  if ! cp -p "$source" "$tmp" || ! mv -f "$tmp" "$file"; then
    rm -f "$tmp"
    return 1
  fi
}

# stage_stdin FILE: stdin into a temporary file next to FILE, removed on exit unless installed;
# sets new.
new=""
stage_stdin() {
  mkdir -p "$(dirname "$1")"
  new=$(temp_next_to "$1")
  cleanup+=("$new")
  cat >"$new"
}

# refuse_if_changed FILE STAGED EXPECTED_SHA256: exit 3 when FILE is no longer what the component
# planned from (EXPECTED_SHA256; "absent": no FILE then), unless FILE already holds STAGED's text:
# the guard of an unchanged node is the checksum of the file it was once made from (see
# probe.sh), so identical text is "nothing to do" whatever the guard says. Changes nothing, so a
# step calls it before the first write it makes (registries.sh: before the CA file).
refuse_if_changed() {
  local file=$1 staged=$2 expected=$3 current=absent
  [[ -f $file ]] && cmp -s "$staged" "$file" && return 0
  [[ -f $file ]] && current=$(sha256_of "$file")
  if [[ $current != "$expected" ]]; then
    fail_with "${file} changed since the program read it" "nothing: nothing was changed" \
      "run pulumi up again (it reads the node again and plans from what is there now)"
    echo "${me}: ${file} changed since it was probed (expected sha256 ${expected}, now ${current}); nothing changed, run pulumi up again" >&2
    exit 3
  fi
}

# skip_or_refuse FILE STAGED EXPECTED_SHA256 MARK: exit 0 when FILE already holds STAGED's text
# (recording it as applied: the next probe then plans these very inputs again); exit 3 as
# refuse_if_changed does.
skip_or_refuse() {
  local file=$1 staged=$2 expected=$3 mark=$4
  refuse_if_changed "$file" "$staged" "$expected"
  if [[ -f $file ]] && cmp -s "$staged" "$file"; then
    record_applied "$file" "$expected" "$mark"
    echo "changed=0"
    echo "restarted=0"
    exit 0
  fi
}

# install_new FILE STAGED: keep FILE's very first original forever (`state: restored` restores
# it) plus one backup per change (sets backup; "" when there was no FILE), then rename STAGED into
# place with FILE's mode, or 0600 for a new FILE (config.toml and registries.yaml may carry registry
# credentials). Prints changed=1 backup=.
backup=""
install_new() {
  local file=$1 staged=$2
  backup=""
  if [[ -f $file ]]; then
    # Not when the mark says there was no FILE at first: FILE is then our own first change.
    # The only lasting copy of the user's file: a truncated one would be restored as "the
    # original" on delete, so it appears whole or not at all.
    [[ -e ${file}.registry-mirrors.orig || -e ${file}.registry-mirrors.absent ]] ||
      put_in_place "$file" "${file}.registry-mirrors.orig"
    backup="${file}.registry-mirrors.$(date -u +%Y%m%dT%H%M%SZ)"
    put_in_place "$file" "$backup"
    chmod --reference="$file" "$staged"
  else
    [[ -e ${file}.registry-mirrors.orig ]] || : >"${file}.registry-mirrors.absent"
    chmod 0600 "$staged"
  fi
  mv -f "$staged" "$file"
  echo "changed=1"
  echo "backup=${backup}"
}

# record_applied FILE EXPECTED_SHA256 MARK, once the daemon runs with FILE: the sha256 of what the
# step left, the guard it was sent and its mark (APPLY_MARK: the program's name for this apply).
# probe.sh reads it back: while FILE is still what we left, the program sends the same guard and
# mark again, so an unchanged node shows no diff; once FILE is anything else (edited, put back to
# the original, ...) it sends a new mark, so the step shows a change and runs. The files named in
# applied_also (absolute paths; the CA file registries.sh writes) are recorded too, one sha256sum
# line each: one of them removed or changed is the same drift as FILE changed.
applied_also=()
record_applied() {
  local file=$1 expected=$2 mark=$3 tmp also
  tmp=$(temp_next_to "$file")
  cleanup+=("$tmp")
  {
    printf '%s %s %s\n' "$(sha256_of "$file")" "$expected" "$mark"
    for also in "${applied_also[@]}"; do
      [[ -f $also ]] && sha256sum "$also"
    done
  } >"$tmp"
  mv -f "$tmp" "${file}.registry-mirrors.applied"
}

# roll_back FILE BACKUP: FILE as it was before install_new (BACKUP "": there was no FILE).
roll_back() {
  local file=$1 backup_file=$2
  if [[ -n $backup_file ]]; then
    put_in_place "$backup_file" "$file"
  else
    rm -f "$file" "${file}.registry-mirrors.absent"
  fi
}

# roll_back_or_exit FILE BACKUP: after the daemon did not come back with the new FILE, put the
# previous one back and print rolled_back=1; when even that fails, say so and exit 6 (the new
# FILE is still in place: the node needs a person).
roll_back_or_exit() {
  local file=$1 backup_file=$2
  if ! roll_back "$file" "$backup_file"; then
    failed_undone="NOTHING: the previous ${file} could NOT be put back (${backup_file:-there was none}); the new one is in place and the daemon is not ok with it"
    failed_todo="the node needs a person now: put the previous file back by hand (${backup_file:-remove ${file}}), restart, check the CRI plugin; meanwhile nodes[].state: held keeps this node out of pulumi up"
    echo "rolled_back=0"
    echo "${me}: the daemon did not come back with the new ${file}, and the previous one could NOT be put back (${backup_file:-there was none}): the node is NOT ok" >&2
    exit 6
  fi
  echo "rolled_back=1"
}

# exit_after_roll_back FILE ERROR_TEXT: restart with the previous FILE back in place; exit 5 when
# the CRI plugin is ok again (the change failed, the node is as it was), 6 when it is NOT.
exit_after_roll_back() {
  local file=$1 error_text=$2
  if restart_and_wait; then
    failed_undone="the previous ${file} is back in place and the CRI plugin on ${CONTAINERD_ADDRESS} is ok again"
    exit 5
  fi
  # shellcheck disable=SC2034 # read by step.sh's end_step
  if ((member_failed)); then
    failed_undone="the previous ${file} is back in place, but the node is NOT healthy as a cluster member with it either"
  else
    failed_undone="the previous ${file} is back in place, but the CRI plugin on ${CONTAINERD_ADDRESS} is NOT ok with it either"
  fi
  # shellcheck disable=SC2034
  failed_todo="the node needs a person now: the daemon's words are below; meanwhile nodes[].state: held keeps this node out of pulumi up"
  if ((member_failed)); then
    echo "${me}: even with the restored ${file}, $(member_text): the node is NOT ok" >&2
  else
    echo "${me}: the CRI plugin on ${CONTAINERD_ADDRESS} is NOT ok even with the restored ${file}: $("$error_text")" >&2
  fi
  exit 6
}

# restore_original FILE [ERROR_TEXT] (delete: pulumi destroy or the node removed): put back the very
# first original, or remove FILE if there was none (a FILE changed after us is kept as
# .before-restore), then restart and wait for the CRI plugin. The files in the array
# restore_also (restore.sh: the imports drop-ins apply-config.sh changed) are put back the same
# way first, and the one restart covers them all. Prints restored=0|1 restarted=0|1; exit 5 when
# the CRI plugin is not ok, quoting the restart command and ERROR_TEXT (a function of the
# caller's: the daemon's own words).
restore_also=()
put_back_original() {
  local file=$1
  local orig="${file}.registry-mirrors.orig" absent="${file}.registry-mirrors.absent"
  rm -f "${file}.registry-mirrors.applied"
  # The mark first: an .orig beside it is our own first change, saved as the original by the
  # scripts before install_new looked at the mark (a second change of a node that had no FILE).
  if [[ -f $absent ]]; then
    [[ -f $file ]] && mv -f "$file" "${file}.registry-mirrors.before-restore"
    rm -f "$absent" "$orig"
    restored=1
  elif [[ -f $orig ]]; then
    if ! cmp -s "$orig" "$file"; then
      [[ -f $file ]] && cp -p "$file" "${file}.registry-mirrors.before-restore"
      put_in_place "$orig" "$file"
      restored=1
    fi
    rm -f "$orig"
  fi
}

restored=0
restore_original() {
  local file=$1 error_text=${2:-} also
  restored=0
  for also in "${restore_also[@]}"; do
    put_back_original "$also"
  done
  put_back_original "$file"
  echo "restored=${restored}"
  if ((!restored)); then
    echo "restarted=0"
    return 0
  fi
  if ! restart_and_wait; then
    local not_ok="the CRI plugin on ${CONTAINERD_ADDRESS} is not ok after the restart"
    ((member_failed)) && not_ok="the node did not become healthy as a cluster member within ${HEALTH_TIMEOUT}s after the restart"
    fail_with "${file}${restore_also[*]:+ and ${restore_also[*]}} was restored, but ${not_ok}" \
      "nothing: the original ${file} stays in place (the one we had written is ${file}.registry-mirrors.before-restore)" \
      "look at the daemon (its words are below); to go back to our file: pulumi up with nodes[].state: managed"
    {
      if ((member_failed)); then
        echo "${me}: ${file}${restore_also[*]:+ and ${restore_also[*]}} was restored but $(member_text)"
      else
        echo "${me}: ${file}${restore_also[*]:+ and ${restore_also[*]}} was restored but the CRI plugin on ${CONTAINERD_ADDRESS} is not ok after ${RESTART_TIMEOUT}s"
      fi
      [[ -n $restart_output ]] && echo "restart command output: ${restart_output}"
      [[ -z $error_text ]] || "$error_text"
    } >&2
    exit 5
  fi
  echo "restarted=1"
}

# --- the CA of our caches ------------------------------------------------------------------------
# A step's stdin may start with the CA certificates the node must trust for our caches (TLS on):
#   # registry-mirrors-ca
#   -----BEGIN CERTIFICATE----- ...
#   # registry-mirrors-ca-end
# followed by the step's own stdin. The file that holds them is written BEFORE any file that
# names it (hosts.toml `ca = [...]`, registries.yaml `tls.ca_file`), and removed when TLS is off.

# take_trust_section STAGED: when STAGED starts with the section, its certificates go to a
# temporary file (sets trust_pem) and STAGED keeps the rest; trust_pem="" when there is none.
trust_pem=""
take_trust_section() {
  local staged=$1 rest
  trust_pem=""
  [[ $(head -n 1 "$staged") == "# registry-mirrors-ca" ]] || return 0
  trust_pem=$(mktemp)
  rest=$(mktemp)
  cleanup+=("$trust_pem" "$rest")
  awk -v pem="$trust_pem" -v rest="$rest" '
    NR == 1 { next }
    !done && $0 == "# registry-mirrors-ca-end" { done = 1; next }
    !done { print > pem; next }
    { print > rest }
    END { if (!done) exit 1 }' "$staged" || {
    rm -f "$trust_pem" "$rest"
    fail_with "the CA section of its stdin has no end line" "nothing: nothing was changed" \
      "report it: the program should never send this"
    echo "${me}: the CA section of stdin has no end line" >&2
    exit 4
  }
  if ! grep -q -- '-----END CERTIFICATE-----' "$trust_pem"; then
    rm -f "$trust_pem" "$rest"
    fail_with "the CA section of its stdin holds no certificate" "nothing: nothing was changed" \
      "report it: the program should never send this"
    echo "${me}: the CA section of stdin holds no certificate" >&2
    exit 4
  fi
  cat "$rest" >"$staged"
  rm -f "$rest"
}

# install_trust CA_FILE: CA_FILE holds trust_pem's certificates (0644: public; one rename), or,
# when stdin had no section, CA_FILE is removed (ours: no one else writes that name).
# Prints trust=written|unchanged|removed|none.
install_trust() {
  local ca_file=$1 tmp
  if [[ -z $trust_pem ]]; then
    if [[ -e $ca_file ]]; then
      rm -f "$ca_file"
      echo "trust=removed"
    else
      echo "trust=none"
    fi
    return 0
  fi
  if [[ -f $ca_file ]] && cmp -s "$trust_pem" "$ca_file"; then
    rm -f "$trust_pem"
    echo "trust=unchanged"
    return 0
  fi
  mkdir -p "$(dirname "$ca_file")"
  tmp=$(temp_next_to "$ca_file")
  cp "$trust_pem" "$tmp"
  rm -f "$trust_pem"
  chmod 0644 "$tmp"
  mv -f "$tmp" "$ca_file"
  echo "trust=written"
}
