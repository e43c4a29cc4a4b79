#!/bin/bash
# The read identity's only command (README "The read identity"). Installed root-owned at
# /usr/local/lib/registry-mirrors/read-gate.sh by install-read-access.sh (apply identity). sshd
# runs it for every session of a read key (authorized_keys `restrict,command=`), through the one
# sudo rule the read user has, with the client's command line (SSH_ORIGINAL_COMMAND) as its ONE
# argument: whatever the client asks, this runs and nothing else.
#
# It runs the probe or the verify check INSTALLED beside it, with the parameters INSTALLED beside
# it (read-access.conf): the request only says which, and for verify which images to pull. The
# request never reaches a shell or an eval: a fixed character set, split into words, each word
# matched against a fixed pattern; an image must be from a registry that has a cache here.
# Requests:
#   probe                      probe.sh with the installed probe.* parameters
#   verify [IMAGE ...]         verify-node.sh with the installed verify.* parameters and IMAGES
#                              (at most 16, HOST/REPO[:TAG][@sha256:DIGEST], HOST in
#                              verify.REGISTRIES)
# Output: "read_access=1 op=<op> scripts_sha256=<gate + script> params_sha256=<the op's lines of
#   read-access.conf>" (the client compares both with what it would install: a node installed
#   for other parameters or older scripts is seen as such), then the script's own output.
# Exit: 64 request refused; 65 read-access.conf unusable; else the script's own exit code.
set -euo pipefail
PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 077
cd /

readonly dir=/usr/local/lib/registry-mirrors
readonly me=read-gate.sh

refuse() {
  echo "${me}: refused: $1 (the read identity runs only 'probe' and 'verify [IMAGE...]')" >&2
  exit 64
}

(($# == 1)) || refuse "expected the request as one argument, got $#"
request=$1
((${#request} <= 2048)) || refuse "the request is longer than 2048 characters"
# Also keeps out newlines, quotes, $, ;, |, &, <, >, *, ?, [, backslash and tabs.
[[ $request =~ ^[A-Za-z0-9._/:@\ -]*$ ]] || refuse "the request has characters outside [A-Za-z0-9._/:@ -]"
read -r -a words <<<"$request"
op=${words[0]:-}
case $op in
  probe)
    script=probe.sh
    ((${#words[@]} == 1)) || refuse "probe takes no arguments"
    ;;
  verify)
    script=verify-node.sh
    ((${#words[@]} <= 17)) || refuse "verify takes at most 16 images"
    ;;
  *) refuse "unknown request '${op}'" ;;
esac

# The installed parameters: "<op>.<KEY>=<value>" lines. Only the keys each script takes (and
# verify.REGISTRIES, this gate's own) are exported; the file is root's, but a key like BASH_ENV
# must not become a way in even so.
declare -A takes=(
  [probe]="CONFIG_FILE CONFIG_PATH FLAVOUR CONTAINERD_ADDRESS"
  [verify]="CONFIG_FILE CONFIG_PATH CONTAINERD_ADDRESS CTR CONTAINERD REGISTRIES"
)
conf=${dir}/read-access.conf
[[ -f $conf ]] || { echo "${me}: ${conf} is missing: run pulumi up (it installs the read access)" >&2; exit 65; }
params="" registries="" number=0
while IFS= read -r line || [[ -n $line ]]; do
  number=$((number + 1))
  [[ -z $line || $line == \#* ]] && continue
  if [[ ! $line =~ ^(probe|verify)\.([A-Z][A-Z0-9_]*)=(.*)$ ]]; then
    echo "${me}: ${conf} line ${number} is not '<op>.<KEY>=<value>'" >&2
    exit 65
  fi
  [[ ${BASH_REMATCH[1]} == "$op" ]] || continue
  key=${BASH_REMATCH[2]} value=${BASH_REMATCH[3]}
  if [[ " ${takes[$op]} " != *" ${key} "* ]]; then
    echo "${me}: ${conf} line ${number}: ${op} takes no ${key}" >&2
    exit 65
  fi
  params+="${line}"$'\n'
  if [[ $key == REGISTRIES ]]; then
    registries=$value
  else
    export "${key}=${value}"
  fi
done <"$conf"

if [[ $op == verify ]]; then
  images=()
  for image in "${words[@]:1}"; do
    # Lowercase host[:port], then path components joined by one separator each, then a tag
    # and/or a digest: never an option (no leading '-'), never '..'.
    if [[ ! $image =~ ^([a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?)/[a-z0-9]+([._/-][a-z0-9]+)*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?$ ]]; then
      refuse "'${image}' is not an image reference HOST/REPO[:TAG][@sha256:DIGEST]"
    fi
    [[ " ${registries} " == *" ${BASH_REMATCH[1]} "* ]] ||
      refuse "${BASH_REMATCH[1]} has no cache (the read identity pulls only from: ${registries:-none})"
    images+=("$image")
  done
  export IMAGES="${images[*]}"
fi

# The PATH the apply identity's steps run with, recorded at install: the probe must find the same
# containerd (a node's may be in /usr/local/bin or elsewhere), or the read identity would plan
# from another version than the apply identity. Root's file; still only absolute directories.
session_path=$(head -n 1 "${dir}/session-path" 2>/dev/null || true)
if [[ $session_path =~ ^/[A-Za-z0-9._/:+-]*$ ]]; then
  PATH=$session_path
else
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
fi
export PATH

scripts_sha256=$(cat "${dir}/${me}" "${dir}/${script}" | sha256sum)
params_sha256=$(printf '%s' "$params" | sha256sum)
echo "read_access=1 op=${op} scripts_sha256=${scripts_sha256%% *} params_sha256=${params_sha256%% *}"
exec bash "${dir}/${script}"
