#!/usr/bin/env bash
# Write one <CONFIG_PATH>/<registry>/hosts.toml per upstream we manage. containerd re-reads
# hosts.toml on every pull, so there is NO restart here.
# stdin: the files, each after a header line "# registry-mirrors: <dir_name>/hosts.toml" (plain
# text, so a reviewer reads the change in the preview); the header is not written. An empty stdin
# removes everything we manage.
# We track our directories in <CONFIG_PATH>/.registry-mirrors-managed, so an upstream dropped from
# the settings is removed while directories written by others (certs, hand-made hosts.toml) stay.
# A hand-made hosts.toml we replace is kept as hosts.toml.registry-mirrors.orig and put back when
# we stop managing that registry (here or in restore.sh): nothing of the node's is lost.
# TLS on: stdin starts with the CA certificates of our caches (lib.sh, take_trust_section),
# written to CA_FILE before any hosts.toml that names it (a hosts.toml naming a missing CA file
# fails every pull, with no fallback); without them CA_FILE is removed once no file we write
# names it.
# CARRY (issue 27, item 5): directories of a previous config_path that containerd read before,
# one "<digest> <name> <source dir>" a line (components/plan/node_routes.py): every regular file of
# <source dir> is copied into CONFIG_PATH/<name> (a relative ca/client path in its hosts.toml
# resolves there as it did in the source; the source is never touched), its file names kept in
# CONFIG_PATH/<name>/.registry-mirrors-carried, and <name> managed like our own directories (so
# REMOVE_ALL, or a later run without it, removes the copies). A source whose files are no longer
# what the probe read (digest) stops the step before anything is written (exit 3).
# What we left is recorded in <CONFIG_PATH>/.registry-mirrors-applied: "mark <APPLY_MARK>", then
# one sha256sum line per file written (each hosts.toml, each carried file, CA_FILE). probe.sh
# checks the files against it: while they are as we left them the program sends the same mark
# again (no diff); otherwise a new one (the step shows a change and runs): a CA file removed or
# changed on the node is drift like a hosts.toml.
# Params (env): CONFIG_PATH; CA_FILE (where the CA certificates go, an absolute path); CARRY;
# APPLY_MARK; REMOVE_ALL=1 ignores stdin and CARRY and lets go of every registry we manage and of
# CA_FILE (nodes[].state: restored).
# stdin: after the script itself (renderers/shell.py stdin_command).
# Output: key=value lines: trust=..., written=<dir>, unchanged=<dir>, removed=<dir>, changed=0|1.
#   On failure: a summary first, then all of it on stderr.
set -euo pipefail

: "${CONFIG_PATH:?CONFIG_PATH is required}"
: "${CA_FILE:=}"
: "${CARRY:=}"
: "${APPLY_MARK:=}"
: "${REMOVE_ALL:=0}"

# shellcheck source=scripts/node/lib.sh
. "$(dirname "$0")/lib.sh"
# shellcheck source=scripts/node/step.sh
. "$(dirname "$0")/step.sh"
hold_output
require_root
# Whatever stops it from here on: every hosts.toml is replaced whole (rename), so each one is the
# old or the new file, and containerd reads them per pull.
fail_with "it stopped at an error it does not expect while writing hosts.toml files (the lines below say where)" \
  "nothing: the hosts.toml files written before it stay (each one whole, the old or the new one)" \
  "fix what the lines below say (a full disk?), then run pulumi up again"

manifest="${CONFIG_PATH}/.registry-mirrors-managed"
record="${CONFIG_PATH}/.registry-mirrors-applied"
mkdir -p "$CONFIG_PATH"
work=$(mktemp -d "${CONFIG_PATH}/.registry-mirrors.XXXXXX")
cleanup+=("$work")

valid_dir() {
  # A registry host[:port] or _default; never a path: stdin must not be able to escape CONFIG_PATH.
  [[ $1 =~ ^[A-Za-z0-9_][A-Za-z0-9._-]*(:[0-9]+)?$ && $1 != *..* ]]
}

managed_before() { [[ -f $manifest ]] && grep -qxF "$1" "$manifest"; }

changed=0
: >"$work/wanted"

# stdin, staged: the CA section first (installed once every input is checked, before the files
# that name it).
staged="$work/stdin"
if [[ $REMOVE_ALL == 1 ]]; then : >"$staged"; else cat >"$staged"; fi
take_trust_section "$staged"
update_trust() {
  [[ -n $CA_FILE ]] || return 0
  local trust
  trust=$(install_trust "$CA_FILE")
  echo "$trust"
  [[ $trust == trust=unchanged || $trust == trust=none ]] || changed=1
}

# Split stdin into $work/files/<dir> (one file per header), checking every name first.
mkdir "$work/files"
current=""
while IFS= read -r line || [[ -n $line ]]; do
  if [[ $line =~ ^#\ registry-mirrors:\ (.*)/hosts\.toml$ ]]; then
    current=${BASH_REMATCH[1]}
    if ! valid_dir "$current"; then
      fail_with "it refuses a registry directory name in its stdin" "nothing: nothing was changed" \
        "report it: the program should never send such a name"
      echo "hosts.sh: refusing registry directory name ${current@Q}" >&2
      exit 4
    fi
    echo "$current" >>"$work/wanted"
    : >"$work/files/$current"
  elif [[ -n $current ]]; then
    printf '%s\n' "$line" >>"$work/files/$current"
  elif [[ -n $line ]]; then
    fail_with "its stdin does not start with a '# registry-mirrors: <dir>/hosts.toml' line" \
      "nothing: nothing was changed" "report it: the program should never send this"
    echo "hosts.sh: stdin does not start with a '# registry-mirrors: <dir>/hosts.toml' line" >&2
    exit 4
  fi
done <"$staged"

# The directories to carry: every one checked before anything is written.
carry=()
[[ $REMOVE_ALL == 1 ]] && CARRY=""
while read -r digest name source; do
  [[ -z ${digest:-} ]] && continue
  if ! valid_dir "$name" || [[ $name == _default || $source != /* ]]; then
    fail_with "it refuses a directory to carry (${source@Q} as ${name@Q})" \
      "nothing: nothing was changed" "report it: the program should never send this"
    echo "hosts.sh: refusing to carry ${source@Q} as ${name@Q}" >&2
    exit 4
  fi
  if grep -qxF "$name" "$work/wanted"; then
    fail_with "${name} is both written and carried" "nothing: nothing was changed" \
      "report it: the program should never send this"
    echo "hosts.sh: ${name} is both written and carried" >&2
    exit 4
  fi
  if [[ ! -d $source || $(dir_digest "$source") != "$digest" ]]; then
    fail_with "${source} (a directory of the previous config_path, to carry) changed since the program read it" \
      "nothing: nothing was changed" \
      "run pulumi up again (it reads the node again and plans from what is there now)"
    echo "hosts.sh: ${source} changed since it was probed; nothing changed, run pulumi up again" >&2
    exit 3
  fi
  target="${CONFIG_PATH}/${name}"
  if [[ -e $target ]] && ! managed_before "$name"; then
    fail_with "${target} exists and is not ours: ${source} cannot be carried there" \
      "nothing: nothing was changed" \
      "move ${target} out of the way, or put what ${source} holds there yourself, then run pulumi up again"
    echo "hosts.sh: ${target} exists and is not ours: cannot carry ${source} there; nothing changed" >&2
    exit 4
  fi
  carry+=("${name} ${source}")
done <<<"$CARRY"

# Certificates to trust: in place before any hosts.toml naming them.
[[ -z $trust_pem ]] || update_trust

while read -r dir; do
  [[ -z $dir ]] && continue
  mkdir -p "${CONFIG_PATH}/${dir}"
  target="${CONFIG_PATH}/${dir}/hosts.toml"
  tmp="${CONFIG_PATH}/${dir}/.hosts.toml.registry-mirrors.tmp"
  cp "$work/files/$dir" "$tmp"
  if [[ -f $target ]] && cmp -s "$tmp" "$target"; then
    rm -f "$tmp"
    echo "unchanged=${dir}"
  else
    if [[ -f $target && ! -e $target.registry-mirrors.orig ]] && ! managed_before "$dir"; then
      # Whole or not at all (a full disk): a half copy would be put back as the person's file.
      cp -p "$target" "$target.registry-mirrors.orig.tmp"
      mv -f "$target.registry-mirrors.orig.tmp" "$target.registry-mirrors.orig"
      echo "backed_up=${dir}"
    fi
    chmod 0644 "$tmp"
    # rename(2) in the same directory: a concurrent pull sees the old or the new file, never half.
    mv -f "$tmp" "$target"
    echo "written=${dir}"
    changed=1
  fi
done <"$work/wanted"

# carry_files SOURCE TARGET: TARGET's files become SOURCE's (each renamed into place: a pull never
# reads half a CA), our list of them updated, files we carried before and SOURCE no longer has
# removed. Sets carry_same=1 when nothing changed.
carry_same=1
carry_files() {
  local source=$1 target=$2 list="$2/.registry-mirrors-carried" name tmp
  carry_same=1
  mkdir -p "$target"
  while IFS= read -r name; do
    [[ -n $name ]] || continue
    if [[ -f $target/$name ]] && cmp -s "$source/$name" "$target/$name"; then continue; fi
    tmp=$(mktemp "${target}/.${name}.registry-mirrors.XXXXXX")
    if ! cp -p "$source/$name" "$tmp" || ! mv -f "$tmp" "$target/$name"; then
      rm -f "$tmp"
      fail_with "it could not copy ${source}/${name} into ${target}" \
        "nothing: the files written before it stay (each one whole, the old or the new one)" \
        "fix what the lines below say (a full disk?), then run pulumi up again"
      echo "hosts.sh: cannot copy ${source}/${name} into ${target}" >&2
      exit 5
    fi
    carry_same=0
  done < <(dir_files "$source")
  if [[ -f $list ]]; then
    while IFS= read -r name; do
      [[ -n $name && ! -f $source/$name ]] || continue
      rm -f "${target:?}/${name}"
      carry_same=0
    done <"$list"
  fi
  dir_files "$source" >"$list.tmp"
  mv -f "$list.tmp" "$list"
}

for entry in "${carry[@]}"; do
  name=${entry%% *}
  source=${entry#* }
  carry_files "$source" "${CONFIG_PATH}/${name}"
  if ((carry_same)); then
    echo "unchanged=${name}"
  else
    echo "written=${name}"
    changed=1
  fi
  echo "$name" >>"$work/wanted"
  echo "$name" >>"$work/carried"
done

if [[ -f $manifest ]]; then
  while read -r old; do
    [[ -z $old ]] && continue
    valid_dir "$old" || continue
    grep -qxF "$old" "$work/wanted" && continue
    carried_list="${CONFIG_PATH}/${old}/.registry-mirrors-carried"
    if [[ -f $carried_list ]]; then
      # A carried directory: only the files we copied (the source stays where it was).
      while IFS= read -r name; do
        [[ -n $name && $name != */* ]] && rm -f "${CONFIG_PATH:?}/${old}/${name}"
      done <"$carried_list"
      rm -f "$carried_list"
      rmdir "${CONFIG_PATH}/${old}" 2>/dev/null || true
    elif [[ -f ${CONFIG_PATH}/${old}/hosts.toml.registry-mirrors.orig ]]; then
      mv -f "${CONFIG_PATH}/${old}/hosts.toml.registry-mirrors.orig" "${CONFIG_PATH}/${old}/hosts.toml"
    else
      rm -f "${CONFIG_PATH}/${old}/hosts.toml"
      # Only an empty directory goes: someone may have put a CA file next to our hosts.toml.
      rmdir "${CONFIG_PATH}/${old}" 2>/dev/null || true
    fi
    echo "removed=${old}"
    changed=1
  done <"$manifest"
fi

# No certificates: CA_FILE goes once the files that named it are rewritten or removed.
[[ -n $trust_pem ]] || update_trust

if [[ -s "$work/wanted" ]]; then
  sort -u "$work/wanted" >"$work/manifest"
  mv -f "$work/manifest" "$manifest"
else
  rm -f "$manifest"
fi
if [[ $REMOVE_ALL == 1 ]]; then
  rm -f "$record"
else
  # Every file we left, carried ones included: a carried CA deleted or edited is a change too.
  {
    echo "mark ${APPLY_MARK}"
    while read -r dir; do
      [[ -n $dir ]] || continue
      if [[ -f $work/carried ]] && grep -qxF "$dir" "$work/carried"; then
        while IFS= read -r name; do
          [[ -n $name ]] && (cd "$CONFIG_PATH" && sha256sum "${dir}/${name}")
        done <"${CONFIG_PATH}/${dir}/.registry-mirrors-carried"
      else
        (cd "$CONFIG_PATH" && sha256sum "${dir}/hosts.toml")
      fi
    done <"$work/wanted"
    # The CA file the hosts.toml files name: without it every pull through them fails.
    if [[ -n $CA_FILE && -f $CA_FILE ]]; then sha256sum "$CA_FILE"; fi
  } >"$work/record"
  mv -f "$work/record" "$record"
fi
echo "changed=${changed}"
