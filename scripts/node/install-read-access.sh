#!/usr/bin/env bash
# Install the read identity on this node (README "The read identity"), or remove it (REMOVE=1).
# Runs as root with the apply identity: the read access step of the rollout
# (containerd-<node>-read-access). What it installs, all root-owned, nothing writable by the
# read user:
#   /usr/local/lib/registry-mirrors/          0755: read-gate.sh, probe.sh, verify-node.sh (0755),
#                                             read-access.conf (0644: the parameters the gate
#                                             runs them with), session-path (this session's
#                                             PATH, so the probe finds the same containerd)
#   /etc/sudoers.d/<READ_USER>                0440: READ_USER may run read-gate.sh as root, nothing
#                                             else (checked with visudo before it is put in place)
#   READ_USER                                 a system user, shell /bin/sh (sshd runs the forced
#                                             command with it), no password, home /var/lib/<user>
#   /var/lib/<user>/.ssh/authorized_keys      0644, dirs 0755: one `restrict,command="..."` line
#                                             per read key (written LAST: the key opens nothing
#                                             until everything behind it is in place)
# A user of that name that is not ours (another comment) is refused: never take over an account.
# Params (env): READ_USER; REMOVE=1 removes all of the above (the delete step).
# stdin (install): the files, each after a line "# registry-mirrors-read-file: <name> <bytes>" and
#   exactly <bytes> bytes: read-gate.sh, probe.sh, verify-node.sh, read-access.conf,
#   authorized_keys, sudoers.
# Output: key=value lines: changed=0|1 (install), removed=0|1 (remove).
# Exit: 0 ok; 2 not root or a tool missing; 3 the user exists and is not ours; 4 bad stdin or
#   sudoers rejected; 5 the sudo rule does not take effect (nothing of the read key installed).
set -euo pipefail

: "${READ_USER:?READ_USER is required}"
: "${REMOVE:=0}"

me=install-read-access.sh
dir=/usr/local/lib/registry-mirrors
home=/var/lib/${READ_USER}
sudoers=/etc/sudoers.d/${READ_USER}
marker="registry-mirrors read identity"
files=(read-gate.sh probe.sh verify-node.sh read-access.conf authorized_keys sudoers)

if [[ $(id -u) -ne 0 ]]; then
  echo "${me}: must run as root (log in as root or give the SSH user passwordless sudo)" >&2
  exit 2
fi
# sudoers.d skips names with a '.', and a name must never be a path.
if [[ ! $READ_USER =~ ^[a-z_][a-z0-9_-]{0,31}$ || $READ_USER == root ]]; then
  echo "${me}: refusing READ_USER ${READ_USER@Q}" >&2
  exit 2
fi

# user_state: "absent", "ours" (our comment, not uid 0) or "foreign".
user_state() {
  local entry
  if ! entry=$(getent passwd "$READ_USER"); then
    echo absent
  elif [[ $(cut -d: -f3 <<<"$entry") != 0 && $(cut -d: -f5 <<<"$entry") == "$marker" ]]; then
    echo ours
  else
    echo foreign
  fi
}

# no_symlink PATH: an install target must not lead elsewhere (a link in place of a directory).
no_symlink() {
  if [[ -L $1 ]]; then
    echo "${me}: ${1} is a symbolic link; refusing to install through it" >&2
    exit 4
  fi
}

if [[ $REMOVE == 1 ]]; then
  removed=0
  # The key first: from here on no read session starts.
  for path in "${home}/.ssh/authorized_keys" "$sudoers"; do
    [[ -e $path ]] && removed=1
    rm -f "$path"
  done
  for name in read-gate.sh probe.sh verify-node.sh read-access.conf session-path; do
    [[ -e ${dir}/${name} ]] && removed=1
    rm -f "${dir:?}/${name}"
  done
  rmdir "$dir" 2>/dev/null || true
  # Only our own user (a foreign one of that name was never ours to remove); -f: a read session
  # still running must not make the delete fail.
  if [[ $(user_state) == ours ]]; then
    userdel -f "$READ_USER"
    removed=1
  fi
  if [[ -d $home && ! -L $home ]]; then
    rm -rf "${home:?}/.ssh"
    rmdir "$home" 2>/dev/null || true
  fi
  echo "removed=${removed}"
  exit 0
fi

for tool in sudo visudo useradd usermod getent; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "${me}: ${tool} is not installed on this node (the read identity runs the probe through one sudo rule: apt install sudo / dnf install sudo)" >&2
    exit 2
  fi
done
state=$(user_state)
if [[ $state == foreign ]]; then
  echo "${me}: user ${READ_USER} exists on this node and is not the registry-mirrors read identity (comment '${marker}'); nothing changed: choose another nodeAccess.readUser" >&2
  exit 3
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for name in "${files[@]}"; do
  IFS= read -r header || header=""
  if [[ ! $header =~ ^#\ registry-mirrors-read-file:\ ([a-z_.-]+)\ ([0-9]+)$ || ${BASH_REMATCH[1]} != "$name" ]]; then
    echo "${me}: stdin is not the read access bundle (expected ${name}, got ${header@Q}); nothing changed" >&2
    exit 4
  fi
  # GNU head -c reads no byte past its count, even from a pipe: the next header is next.
  head -c "${BASH_REMATCH[2]}" >"${work}/${name}"
  if (($(stat -c %s "${work}/${name}") != BASH_REMATCH[2])); then
    echo "${me}: ${name} is cut short in stdin; nothing changed" >&2
    exit 4
  fi
done
if ! check=$(visudo -c -q -f "${work}/sudoers" 2>&1); then
  echo "${me}: visudo rejects the sudoers rule; nothing changed: ${check}" >&2
  exit 4
fi
printf '%s\n' "$PATH" >"${work}/session-path"

changed=0
# put NAME TARGET MODE: the staged file into place (same directory, one rename) unless identical.
put() {
  local source=${work}/$1 target=$2 mode=$3 tmp
  no_symlink "$target"
  if [[ -f $target ]] && cmp -s "$source" "$target" &&
    [[ $(stat -c '%u:%g %a' "$target") == "0:0 ${mode#0}" ]]; then
    return 0
  fi
  # A leading '.' and an inner '.': sudo skips such names in sudoers.d while staged.
  tmp=$(mktemp "$(dirname "$target")/.${target##*/}.registry-mirrors.XXXXXX")
  cp "$source" "$tmp"
  chown root:root "$tmp"
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$target"
  changed=1
}

for path in "$dir" "$home" "${home}/.ssh"; do
  no_symlink "$path"
done
install -d -o root -g root -m 0755 "$dir"
for name in read-gate.sh probe.sh verify-node.sh; do
  put "$name" "${dir}/${name}" 0755
done
put read-access.conf "${dir}/read-access.conf" 0644
put session-path "${dir}/session-path" 0644
put sudoers "$sudoers" 0440

if [[ $state == absent ]]; then
  # No password ('*', not '!': sshd without PAM refuses a '!'-locked account even for keys),
  # no home of its own to write in, /bin/sh for sshd to run the forced command with.
  useradd --system --user-group --no-create-home --home-dir "$home" --shell /bin/sh \
    --comment "$marker" --password '*' "$READ_USER"
  changed=1
else
  entry=$(getent passwd "$READ_USER")
  if [[ $(cut -d: -f6 <<<"$entry") != "$home" || $(cut -d: -f7 <<<"$entry") != /bin/sh ]]; then
    usermod --home "$home" --shell /bin/sh "$READ_USER"
    changed=1
  fi
fi
install -d -o root -g root -m 0755 "$home" "${home}/.ssh"

# The rule must really take effect (an /etc/sudoers without @includedir /etc/sudoers.d, say)
# before the key opens the door: otherwise no key, and a clear error.
if ! sudo -n -l -U "$READ_USER" "${dir}/read-gate.sh" probe >/dev/null 2>&1; then
  rm -f "${home}/.ssh/authorized_keys"
  echo "${me}: the sudo rule in ${sudoers} does not let ${READ_USER} run ${dir}/read-gate.sh (does /etc/sudoers include /etc/sudoers.d?); the read key is not installed" >&2
  exit 5
fi
put authorized_keys "${home}/.ssh/authorized_keys" 0644

# One read identity per node: a read user of ours under another name (nodeAccess.readUser was
# changed) goes, with its key and its rule.
while IFS=: read -r name _ uid _ comment _; do
  [[ $comment == "$marker" && $uid != 0 && $name != "$READ_USER" ]] || continue
  [[ $name =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || continue
  rm -f "/var/lib/${name}/.ssh/authorized_keys" "/etc/sudoers.d/${name}"
  userdel -f "$name"
  rm -rf "/var/lib/${name:?}/.ssh"
  rmdir "/var/lib/${name}" 2>/dev/null || true
  echo "removed_user=${name}"
  changed=1
done < <(getent passwd)
echo "changed=${changed}"
