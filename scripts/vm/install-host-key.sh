#!/usr/bin/env bash
# Install the registry VM's SSH host key (stdin: the OpenSSH private key the program generated)
# on the RUNNING VM, and make sshd present it.
#
# Why: a VM made from the program's vendor-data already presents that key from its first boot
# (cloud-init's ssh_keys), and then this is a no-op. A VM made before the program generated its
# key, or one whose key is being rotated, presents another key: the program logs in pinned to
# that one (vm.sshHostPublicKey), runs this, and pins the generated key from then on.
#
# Parameters (exported by components/renderers/shell.remote_command; the defaults are the VM's):
#   HOST_KEY_FILE    where sshd reads the Ed25519 host key (/etc/ssh/ssh_host_ed25519_key)
#   SSHD_CONFIG      sshd's config file (/etc/ssh/sshd_config)
#   RELOAD_COMMAND   makes the running sshd read its host keys again (systemctl reload ssh:
#                    SIGHUP; sessions already open, this one included, go on)
# Prints changed=0 (the key was there) or changed=1, and the new key's public half; never the
# private key. Nothing is changed when anything is wrong (not a key, sshd would not load it).
set -euo pipefail

: "${HOST_KEY_FILE:=/etc/ssh/ssh_host_ed25519_key}" "${SSHD_CONFIG:=/etc/ssh/sshd_config}"
: "${RELOAD_COMMAND:=systemctl reload ssh}"

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo -n)
fi

umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat >"$work/key"

if ! public=$(ssh-keygen -y -f "$work/key" 2>/dev/null); then
    echo "install-host-key: stdin is not an unencrypted OpenSSH private key" >&2
    exit 2
fi
public=$(printf '%s\n' "$public" | awk '{print $1 " " $2}')
if [[ $public != "ssh-ed25519 "* ]]; then
    echo "install-host-key: expected an Ed25519 key, got ${public%% *}" >&2
    exit 2
fi

current=$("${sudo[@]}" ssh-keygen -y -f "$HOST_KEY_FILE" 2>/dev/null | awk '{print $1 " " $2}' || true)
if [[ $current == "$public" ]]; then
    echo "changed=0"
    echo "public=$public"
    exit 0
fi

# sshd must read this file, or installing it would change nothing it presents. Its effective
# config is read whole first, then searched: `sshd -T | grep -q` under pipefail fails at random
# (grep quits at the hostkey line while sshd still writes the acceptenv/subsystem lines after
# it: SIGPIPE, 141), which a slow VM hit more often than not. sshd's own error (a config it
# refuses, a missing /run/sshd) is reported as such, not as a missing HostKey line.
if ! effective=$("${sudo[@]}" sshd -T -f "$SSHD_CONFIG" 2>"$work/sshd-T.err"); then
    # One line: sshd ends its stderr lines with \r\n.
    reason=$(tr -s '\r\n' ' ' <"$work/sshd-T.err")
    echo "install-host-key: 'sshd -T -f $SSHD_CONFIG' failed (${reason% }) so it cannot be told" \
        "which host keys sshd loads: nothing was changed" >&2
    exit 3
fi
if ! grep -qxF "hostkey $HOST_KEY_FILE" <<<"$effective"; then
    echo "install-host-key: sshd ($SSHD_CONFIG) does not load $HOST_KEY_FILE as a host key" \
        "(HostKey lines): nothing was changed" >&2
    exit 3
fi

printf '%s\n' "$public" >"$work/key.pub"
previous="$HOST_KEY_FILE.registry-mirrors.previous"
had_key=0
if "${sudo[@]}" test -e "$HOST_KEY_FILE"; then
    had_key=1
    "${sudo[@]}" cp -p "$HOST_KEY_FILE" "$previous"
    "${sudo[@]}" cp -p "$HOST_KEY_FILE.pub" "$previous.pub" 2>/dev/null || true
fi
restore() {
    if [[ $had_key == 1 ]]; then
        "${sudo[@]}" mv -f "$previous" "$HOST_KEY_FILE"
        "${sudo[@]}" mv -f "$previous.pub" "$HOST_KEY_FILE.pub" 2>/dev/null || true
    fi
}
# Each file whole or not at all: install beside it, then rename. Private key 0600, root's.
"${sudo[@]}" install -m 0600 -o root -g root "$work/key" "$HOST_KEY_FILE.registry-mirrors.new"
"${sudo[@]}" install -m 0644 -o root -g root "$work/key.pub" "$HOST_KEY_FILE.pub.registry-mirrors.new"
"${sudo[@]}" mv -f "$HOST_KEY_FILE.registry-mirrors.new" "$HOST_KEY_FILE"
"${sudo[@]}" mv -f "$HOST_KEY_FILE.pub.registry-mirrors.new" "$HOST_KEY_FILE.pub"

if ! errors=$("${sudo[@]}" sshd -t -f "$SSHD_CONFIG" 2>&1); then
    restore
    echo "install-host-key: sshd refuses the new key, the previous one is back: $errors" >&2
    exit 4
fi
if ! errors=$("${sudo[@]}" bash -c "$RELOAD_COMMAND" 2>&1); then
    restore
    "${sudo[@]}" bash -c "$RELOAD_COMMAND" >/dev/null 2>&1 || true
    echo "install-host-key: '$RELOAD_COMMAND' failed, the previous key is back: $errors" >&2
    exit 5
fi
"${sudo[@]}" rm -f "$previous" "$previous.pub"
echo "changed=1"
echo "public=$public"
