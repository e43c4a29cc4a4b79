#!/usr/bin/env bash
# Report what the node's containerd has, one key=value per line, so the component can migrate
# config.toml (or merge a k3s/RKE2 registries.yaml) without guessing. Read-only: it runs while the
# program runs, `pulumi preview` included.
# Params (env): CONFIG_FILE (containerd config.toml), CONFIG_PATH (hosts.toml directory),
#   FLAVOUR (optional: the node setting, picks one of several enabled k3s/RKE2 units).
set -euo pipefail

: "${CONFIG_FILE:?CONFIG_FILE is required}"
: "${CONFIG_PATH:=/etc/containerd/certs.d}"

# shellcheck source=scripts/node/lib.sh
. "$(dirname "$0")/lib.sh"
require_root
# file_report PREFIX FILE: PREFIX_exists=, PREFIX_sha256= ("absent" when missing) and PREFIX_b64=.
# The file travels base64-encoded on one line: it may hold credentials and must reach the parser
# byte for byte (the checksum guards the apply that follows).
file_report() {
  if [[ -f $2 ]]; then
    echo "$1_exists=1"
    echo "$1_sha256=$(sha256sum <"$2" | awk '{print $1}')"
    echo "$1_b64=$(base64 -w 0 <"$2")"
  else
    echo "$1_exists=0"
    echo "$1_sha256=absent"
    echo "$1_b64="
  fi
}

# original_saved FILE: 1 once a script of ours saved FILE's first original (or that it had none).
original_saved() {
  if [[ -f ${1}.registry-mirrors.orig || -f ${1}.registry-mirrors.absent ]]; then echo 1; else echo 0; fi
}

# applied PREFIX FILE: apply-config.sh and registries.sh record "<sha256 left> <guard sent> <mark
# sent>" (lib.sh record_applied). While FILE is still what they left, PREFIX_applied_from_sha256=
# and PREFIX_applied_mark= give the guard and mark to send again (an unchanged node shows no diff);
# PREFIX_applied_record_sha256= (whenever there is a record) lets the program name a new mark when
# FILE is anything else: edited, or put back to the original by a config manager or a reinstall.
# All three keys every time (empty when not known): the drop-ins' keys are matched by position.
# Lines after the first: sha256sum lines of other files the step left with FILE (registries.sh's
# CA file): any of them not as left is the same as FILE not as left.
applied() {
  local record="${2}.registry-mirrors.applied" written="" source="" mark="" record_sha="" also
  if [[ -f $record ]]; then
    record_sha=$(sha256sum <"$record" | awk '{print $1}')
    read -r written source mark <"$record" || true
    also=$(tail -n +2 "$record")
    if [[ ! -f $2 || $written != "$(sha256sum <"$2" | awk '{print $1}')" ]]; then
      source="" mark=""
    elif [[ -n $also ]] && ! sha256sum -c --status - <<<"$also" 2>/dev/null; then
      source="" mark=""
    fi
  fi
  echo "$1_applied_record_sha256=${record_sha}"
  echo "$1_applied_from_sha256=${source}"
  echo "$1_applied_mark=${mark}"
}

# --- flavour: plain containerd, or k3s / RKE2 with their own containerd (issue 14) -------------
# k3s and RKE2 run their own containerd (not on PATH), regenerate its config.toml and certs.d from
# /etc/rancher/<dist>/registries.yaml at every start, and serve CRI on
# /run/k3s/containerd/containerd.sock. Detected by the systemd units they install, not by names:
# RKE2 installs both rke2-server and rke2-agent units, so "enabled" (the multi-user.target.wants
# symlink) decides; a unit that is only installed counts when it is the only one.
# Output: flavour=, flavour_candidates=, unit=, cri_socket=; for k3s/RKE2 also registries_*=,
# hosts_dir=, ctr=, containerd_log=, distribution_binary=, distribution_version= and the base keys
# (containerd_version= of the embedded containerd; no config.toml of ours: config_exists=0).
declare -A flavour_of_unit=([k3s]=k3s-server [k3s-agent]=k3s-agent [rke2-server]=rke2-server [rke2-agent]=rke2-agent)
declare -A unit_files=()
installed_units=() enabled_units=()
for unit in k3s k3s-agent rke2-server rke2-agent; do
  for unit_dir in /etc/systemd/system /usr/local/lib/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -f ${unit_dir}/${unit}.service ]]; then
      installed_units+=("$unit")
      unit_files[$unit]="${unit_dir}/${unit}.service"
      break
    fi
  done
  [[ -e /etc/systemd/system/multi-user.target.wants/${unit}.service ]] && enabled_units+=("$unit")
done
if ((${#enabled_units[@]})); then candidates=("${enabled_units[@]}"); else candidates=("${installed_units[@]}"); fi
names=()
for unit in "${candidates[@]}"; do names+=("${flavour_of_unit[$unit]}"); done
unit=""
if ((${#candidates[@]} == 1)); then
  unit=${candidates[0]}
else
  # Several enabled (or only installed): the node setting `flavour` (FLAVOUR) picks one of them.
  for candidate in "${candidates[@]}"; do
    [[ ${flavour_of_unit[$candidate]} == "${FLAVOUR:-}" ]] && unit=$candidate
  done
fi
if ((${#candidates[@]} == 0)); then
  echo "flavour=containerd"
  echo "unit=containerd"
  echo "cri_socket=${CONTAINERD_ADDRESS:-/run/containerd/containerd.sock}"
elif [[ -z $unit ]]; then
  # The component stops, naming these (or takes the one nodes[].flavour names).
  echo "flavour=ambiguous"
  echo "flavour_candidates=${names[*]}"
  exit 0
else
  dist=${unit%%-*}
  unit_file=${unit_files[$unit]:-}
  echo "flavour=${flavour_of_unit[$unit]}"
  echo "flavour_candidates=${names[*]}"
  echo "unit=${unit}"
  echo "cri_socket=/run/k3s/containerd/containerd.sock"
  registries_file="/etc/rancher/${dist}/registries.yaml"
  echo "registries_file=${registries_file}"
  file_report registries "$registries_file"
  echo "registries_original_saved=$(original_saved "$registries_file")"
  applied registries "$registries_file"
  echo "hosts_dir=/var/lib/rancher/${dist}/agent/etc/containerd/certs.d"
  echo "containerd_log=/var/lib/rancher/${dist}/agent/containerd/containerd.log"
  # k3s unpacks its binaries to data/<hash>/bin (data/current points at the running set); RKE2
  # links bin/ to the runtime image it extracted.
  if [[ $dist == k3s ]]; then bin_dir=/var/lib/rancher/k3s/data/current/bin; else bin_dir=/var/lib/rancher/rke2/bin; fi
  ctr_bin="${bin_dir}/ctr"
  [[ -x $ctr_bin ]] || ctr_bin=$(command -v ctr || true)
  echo "ctr=${ctr_bin}"
  # The binary the unit starts (k3s: /usr/local/bin/k3s, RKE2: /usr/local/bin or /usr/bin).
  binary=""
  [[ -n $unit_file ]] && binary=$(sed -n -E 's/^ExecStart=[-@!+:]*([^[:space:]]+).*/\1/p' "$unit_file" | head -n 1)
  echo "distribution_binary=${binary}"
  if [[ -n $binary && -x $binary ]]; then
    echo "distribution_version=$("$binary" --version 2>/dev/null | head -n 1)"
  else
    echo "distribution_version="
  fi
  embedded=""
  if [[ -x ${bin_dir}/containerd ]]; then
    embedded=$("${bin_dir}/containerd" --version 2>/dev/null | awk '{print $3}' || true)
  fi
  if [[ -z $embedded && -n $ctr_bin ]]; then
    embedded=$("$ctr_bin" --address /run/k3s/containerd/containerd.sock version 2>/dev/null |
      awk '/^Server:/ {s=1} s && $1 == "Version:" {print $2; exit}' || true)
  fi
  echo "containerd_version=${embedded}"
  # The base keys: this flavour has no containerd config.toml of ours.
  echo "config_file="
  echo "config_exists=0"
  echo "config_sha256=absent"
  echo "config_version="
  echo "config_b64="
  echo "original_saved=0"
  echo "managed_dirs="
  exit 0
fi
# --- end flavour ------------------------------------------------------------------------------

if ! command -v containerd >/dev/null 2>&1; then
  echo "probe.sh: containerd is not installed on $(hostname) (no 'containerd' on PATH)" >&2
  exit 3
fi

# "containerd containerd.io 1.6.20 <commit>" or "containerd github.com/containerd/containerd v1.6.20 ...":
# the version is the third field either way.
version_line=$(containerd --version)
echo "containerd_version_line=${version_line//$'\n'/ }"
echo "containerd_version=$(awk '{print $3}' <<<"$version_line")"
echo "config_file=${CONFIG_FILE}"
file_report config "$CONFIG_FILE"
# Top-level `version = N` (absent means v1 to containerd 1.x).
config_version=""
if [[ -f $CONFIG_FILE ]]; then
  config_version=$(sed -n -E 's/^[[:space:]]*version[[:space:]]*=[[:space:]]*([0-9]+).*/\1/p' "$CONFIG_FILE" | head -n 1)
  config_version=${config_version:-1}
fi
echo "config_version=${config_version}"
echo "original_saved=$(original_saved "$CONFIG_FILE")"
# The node's first original config.toml (saved by apply-config.sh before its first change): the
# mirrors it held were carried over to hosts.toml, and must stay there on every later run, when
# config.toml itself no longer names them.
if [[ -f ${CONFIG_FILE}.registry-mirrors.orig ]]; then
  echo "original_b64=$(base64 -w 0 <"${CONFIG_FILE}.registry-mirrors.orig")"
else
  echo "original_b64="
fi
applied config "$CONFIG_FILE"
manifest="${CONFIG_PATH}/.registry-mirrors-managed"
if [[ -f $manifest ]]; then
  echo "managed_dirs=$(paste -s -d ' ' "$manifest")"
else
  echo "managed_dirs="
fi
# What hosts.sh left: "mark <mark>", then a sha256sum line per file it wrote (each hosts.toml, each
# carried file, the CA file; relative to CONFIG_PATH, the CA file by its absolute path). All of them
# as it left them: hosts_applied_mark= (sent again: no diff); else the record's checksum.
hosts_record="${CONFIG_PATH}/.registry-mirrors-applied"
if [[ -f $hosts_record ]]; then
  echo "hosts_applied_record_sha256=$(sha256sum <"$hosts_record" | awk '{print $1}')"
  listed=$(tail -n +2 "$hosts_record")
  if [[ -z $listed ]] || (cd "$CONFIG_PATH" && sha256sum -c --status - <<<"$listed") 2>/dev/null; then
    echo "hosts_applied_mark=$(sed -n '1s/^mark //p' "$hosts_record")"
  fi
fi

# --- imports drop-ins (issue 22; docs/containerd-imports.md) -----------------------------------
# containerd reads the main file, then every file its `imports` names, breadth first (a file's own
# imports go to the end of the queue), a file read once. An entry with `*` is a Go glob (no match
# is no error; 1.6 matches a relative pattern in its working directory, `/` under systemd, 1.7+
# next to the importing file); any other entry is a file next to the importing file that must
# exist. The set of files read is reported; the planner (components/plan/node_imports.py) replays
# containerd's order with its per-version table and checks it reaches exactly these files.
# Output (additive): imports_glob_base=, imports_b64= (the entries this script read from the main
# file's `imports`, one per line), per imported file dropin_path=, dropin_exists=, dropin_sha256=,
# dropin_b64=, dropin_imports_b64=, dropin_original_saved=, dropin_applied_record_sha256=,
# dropin_applied_from_sha256=, dropin_applied_mark=, dropin_original_b64= (the same keys, in the
# same order, once per file), and imports_error= for a named file that does not exist.

# import_entries FILE: the strings of FILE's top-level `imports = [...]`, one a line. Plain TOML
# strings without escapes; anything else is read differently by the planner's TOML parser, which
# then refuses the node (it compares these lines with its own reading).
import_entries() {
  LC_ALL=C awk -v q="'" '
    NR == 1 { sub(/^\357\273\277/, "") }
    {
      line = $0
      if (!inside) {
        if (line ~ /^[ \t]*\[/) exit
        if (line !~ /^[ \t]*imports[ \t]*=/) next
        sub(/^[ \t]*imports[ \t]*=[ \t]*/, "", line)
        if (substr(line, 1, 1) != "[") exit
        line = substr(line, 2)
        inside = 1
      }
      while (length(line) > 0) {
        c = substr(line, 1, 1)
        if (c == "\"" || c == q) {
          rest = substr(line, 2)
          end = index(rest, c)
          if (end == 0) exit
          print substr(rest, 1, end - 1)
          line = substr(rest, end + 1)
        } else if (c == "]") {
          exit
        } else if (c == "#") {
          break
        } else {
          line = substr(line, 2)
        }
      }
    }' "$1"
}

containerd_release=$(awk '{print $3}' <<<"$version_line")
containerd_release=${containerd_release#v}
glob_base="file"
[[ $containerd_release == 1.[0-6].* ]] && glob_base=cwd
echo "imports_glob_base=${glob_base}"

declare -A read_already=()
queue=()
if [[ -f $CONFIG_FILE ]]; then
  queue=("$CONFIG_FILE")
  read_already[$CONFIG_FILE]=1
fi
shopt -s nullglob dotglob
next=0
while ((next < ${#queue[@]})); do
  file=${queue[next]}
  next=$((next + 1))
  mapfile -t entries < <(import_entries "$file")
  entries_b64=""
  ((${#entries[@]})) && entries_b64=$(printf '%s\n' "${entries[@]}" | base64 -w 0)
  if [[ $file == "$CONFIG_FILE" ]]; then
    echo "imports_b64=${entries_b64}"
  else
    echo "dropin_path=${file}"
    file_report dropin "$file"
    echo "dropin_imports_b64=${entries_b64}"
    echo "dropin_original_saved=$(original_saved "$file")"
    applied dropin "$file"
    if [[ -f ${file}.registry-mirrors.orig ]]; then
      echo "dropin_original_b64=$(base64 -w 0 <"${file}.registry-mirrors.orig")"
    else
      echo "dropin_original_b64="
    fi
  fi
  for entry in "${entries[@]}"; do
    [[ -n $entry ]] || continue
    found=()
    if [[ $entry == *"*"* ]]; then
      pattern=$entry
      if [[ $pattern != /* ]]; then
        if [[ $glob_base == cwd ]]; then pattern="/${pattern}"; else pattern="$(dirname "$file")/${pattern}"; fi
      fi
      # No word splitting, only the glob; byte order (the planner sorts as Go does anyway).
      IFS='' eval 'found=($pattern)'
    else
      path=$entry
      [[ $path == /* ]] || path="$(dirname "$file")/${path}"
      # As Go's filepath.Clean: the same path string containerd keys its "read already" on.
      path=$(realpath -m -s -- "$path")
      if [[ ! -f $path ]]; then
        echo "imports_error=${path} (named in ${file}) does not exist"
        continue
      fi
      found=("$path")
    fi
    for path in "${found[@]}"; do
      [[ -f $path ]] || continue
      path=$(realpath -m -s -- "$path")
      [[ -n ${read_already[$path]:-} ]] && continue
      read_already[$path]=1
      queue+=("$path")
    done
  done
done
shopt -u nullglob dotglob

# --- directories of a previous config_path (issue 27, item 5) ----------------------------------
# containerd read hosts.toml (or Docker's *.crt/*.cert/*.key layout) from every root of its
# config_path (a ':' list; containerd 2.2+ without config_path and mirrors:
# /etc/containerd/certs.d:/etc/docker/certs.d). The planner (components/plan/node_routes.py)
# carries what was in effect into CONFIG_PATH. Roots: 2.2's defaults, and every config_path
# string in the files read above and their saved originals (the planner reads the value with a
# TOML parser and refuses the node if a root it needs is not listed here).
# Output (additive): previous_root= per root (CONFIG_PATH excluded), then per directory in it
# previous_dir=, previous_dir_files_b64= (its regular files, one a line), previous_dir_digest=,
# previous_dir_hosts_b64= (its hosts.toml, or empty), in that order; config_path_dirs= (the
# directories in CONFIG_PATH).
roots=(/etc/containerd/certs.d /etc/docker/certs.d)
for file in "${queue[@]}"; do
  for source in "$file" "${file}.registry-mirrors.orig"; do
    [[ -f $source ]] || continue
    while IFS= read -r value; do
      IFS=: read -r -a parts <<<"$value"
      roots+=("${parts[@]}")
    done < <(sed -n -E "s/^[[:space:]]*config_path[[:space:]]*=[[:space:]]*[\"']([^\"']*)[\"'].*/\1/p" "$source")
  done
done
declare -A root_listed=()
shopt -s nullglob
for root in "${roots[@]}"; do
  [[ -n $root ]] || continue
  root=$(realpath -m -s -- "$root")
  [[ $root == "$(realpath -m -s -- "$CONFIG_PATH")" || -n ${root_listed[$root]:-} ]] && continue
  root_listed[$root]=1
  echo "previous_root=${root}"
  for dir in "$root"/*/; do
    dir=${dir%/}
    echo "previous_dir=${dir}"
    echo "previous_dir_files_b64=$(dir_files "$dir" | base64 -w 0)"
    echo "previous_dir_digest=$(dir_digest "$dir")"
    if [[ -f $dir/hosts.toml ]]; then
      echo "previous_dir_hosts_b64=$(base64 -w 0 <"$dir/hosts.toml")"
    else
      echo "previous_dir_hosts_b64="
    fi
  done
done
names=()
for dir in "$CONFIG_PATH"/*/; do
  dir=${dir%/}
  names+=("${dir##*/}")
done
shopt -u nullglob
echo "config_path_dirs=${names[*]}"
