#!/usr/bin/env bash
# Bring an EXISTING Debian/Ubuntu host (settings `host:`) to the state the registry VM's
# vendor-data gives the VM: the same files, packages, services, directories and docker group,
# read from the manifest on stdin (components/renderers/cloud_init.py render_host_manifest, made
# from the same host_state the vendor-data is made from). After it, the caches and their
# maintenance cron go on this host exactly as on the VM.
#
# Refuses, before changing anything: a manifest it cannot read (naming the line), a host that is
# not Debian or Ubuntu (naming what it is), a host without systemd or apt, a user that is neither
# root nor allowed passwordless sudo. Idempotent: each item is compared with what the host has and
# only a difference is changed; a second run prints changed=0.
#
# Order as cloud-init applies vendor-data: files (the apt no-Recommends file before any install;
# daemon.json before docker first starts), packages, services, directories, the docker group.
# A changed file whose unit is already running restarts that unit (docker: the daemon's
# live-restore keeps the containers running through it).
#
# Parameters (environment): OS_RELEASE (default /etc/os-release; tests stand one in).
# Prints changed=0|1, then ready docker=<server version>. Exit 2: bad manifest; 3: refused host.
set -euo pipefail

os_release=${OS_RELEASE:-/etc/os-release}
host=$(hostname 2>/dev/null || echo unknown)

refuse() {
    echo "prepare-host: $host: $* (nothing was changed)" >&2
    exit 3
}

# --- read and check the whole manifest first --------------------------------------------------
files=() packages=() services=() directories=() docker_user=
line_no=0
header_seen=0
bad() {
    echo "prepare-host: manifest line $line_no: $1: ${line:0:80}" >&2
    exit 2
}
while IFS= read -r line || [[ -n $line ]]; do
    line_no=$((line_no + 1))
    if [[ $line_no -eq 1 ]]; then
        [[ $line == "# registry-mirrors cache host manifest 1" ]] && header_seen=1
        continue
    fi
    [[ -z $line ]] && continue
    read -r -a fields <<<"$line"
    case ${fields[0]} in
    file)
        [[ ${#fields[@]} -eq 5 ]] || bad "expected: file MODE PATH BASE64 UNIT|-"
        [[ ${fields[1]} =~ ^0[0-7]{3}$ ]] || bad "mode"
        [[ ${fields[2]} =~ ^/[A-Za-z0-9._/-]+$ ]] || bad "path"
        [[ ${fields[3]} =~ ^[A-Za-z0-9+/]*=*$ ]] || bad "base64 content"
        [[ ${fields[4]} =~ ^[A-Za-z0-9@._-]+$ ]] || bad "unit"
        files+=("${fields[1]} ${fields[2]} ${fields[3]} ${fields[4]}")
        ;;
    package)
        [[ ${#fields[@]} -eq 2 && ${fields[1]} =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || bad "package name"
        packages+=("${fields[1]}")
        ;;
    service)
        [[ ${#fields[@]} -eq 2 && ${fields[1]} =~ ^[A-Za-z0-9@._-]+$ ]] || bad "unit name"
        services+=("${fields[1]}")
        ;;
    directory)
        [[ ${#fields[@]} -eq 2 && ${fields[1]} =~ ^/[A-Za-z0-9._/-]+$ ]] || bad "path"
        directories+=("${fields[1]}")
        ;;
    docker-user)
        [[ ${#fields[@]} -eq 2 && ${fields[1]} =~ ^[a-z_][a-z0-9_-]{0,31}$ ]] || bad "user name"
        docker_user=${fields[1]}
        ;;
    *) bad "unknown item ${fields[0]}" ;;
    esac
done
if [[ $header_seen -ne 1 ]]; then
    echo "prepare-host: stdin is not a cache host manifest (first line)" >&2
    exit 2
fi
[[ -n $docker_user ]] || {
    echo "prepare-host: manifest has no docker-user line" >&2
    exit 2
}

# --- is this a host we may prepare? ------------------------------------------------------------
[[ -r $os_release ]] || refuse "no $os_release: cannot tell which system this is; only Debian and Ubuntu are supported"
# Read, not sourced: os-release is shell-compatible, but nothing here needs to run it.
os_field() { sed -n "s/^$1=//p" "$os_release" | head -n 1 | tr -d "\"'"; }
os_id=$(os_field ID)
os_name=$(os_field PRETTY_NAME)
os_name=${os_name:-${os_id:-unknown}}
case $os_id in
debian | ubuntu) ;;
*) refuse "runs $os_name (ID=${os_id:-unset}): only Debian and Ubuntu are supported" ;;
esac
[[ -d /run/systemd/system ]] || refuse "$os_name is not running systemd: docker and cron are managed as systemd units"
command -v apt-get >/dev/null || refuse "$os_name has no apt-get"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo -n)
    "${sudo[@]}" true 2>/dev/null ||
        refuse "user $(id -un) is not root and may not use sudo without a password (host.sshUser needs one of the two)"
fi

changed=0
restart_units=()

# --- files ---------------------------------------------------------------------------------------
for item in "${files[@]}"; do
    read -r mode path content unit <<<"$item"
    want=$(mktemp)
    printf '%s' "$content" | base64 -d >"$want"
    current_mode=$("${sudo[@]}" stat -c '%a' "$path" 2>/dev/null || echo none)
    if "${sudo[@]}" cmp -s "$want" "$path" && [[ $current_mode == "${mode#0}" ]]; then
        rm -f "$want"
        continue
    fi
    "${sudo[@]}" install -d -m 0755 "$(dirname "$path")"
    "${sudo[@]}" install -m "$mode" -o root -g root "$want" "$path.registry-mirrors.new"
    "${sudo[@]}" mv -f "$path.registry-mirrors.new" "$path"
    rm -f "$want"
    echo "prepare-host: wrote $path" >&2
    changed=1
    if [[ $unit != - ]] && systemctl is-active --quiet "$unit"; then
        restart_units+=("$unit")
    fi
done

# --- packages ------------------------------------------------------------------------------------
missing=()
for package in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)
    [[ $status == "install ok installed" ]] || missing+=("$package")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "prepare-host: installing ${missing[*]}" >&2
    # A freshly booted host often has unattended-upgrades holding dpkg's lock: wait for it
    # (apt 1.9.11+; older apt ignores the option) rather than fail.
    apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)
    "${sudo[@]}" "${apt[@]}" update >/dev/null
    # confold: keep a config file already there (ours, written above) instead of asking.
    "${sudo[@]}" "${apt[@]}" install -y \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" >/dev/null
    changed=1
fi

# --- services ------------------------------------------------------------------------------------
for service in "${services[@]}"; do
    if systemctl is-enabled --quiet "$service" 2>/dev/null && systemctl is-active --quiet "$service"; then
        continue
    fi
    "${sudo[@]}" systemctl enable --now "$service" >/dev/null 2>&1 || {
        echo "prepare-host: $host: could not enable and start $service:" >&2
        "${sudo[@]}" systemctl status --no-pager "$service" >&2 || true
        exit 1
    }
    echo "prepare-host: enabled and started $service" >&2
    changed=1
done
for unit in "${restart_units[@]}"; do
    "${sudo[@]}" systemctl restart "$unit"
    echo "prepare-host: restarted $unit (its file changed)" >&2
done

# --- directories and the docker group ------------------------------------------------------------
for directory in "${directories[@]}"; do
    if "${sudo[@]}" test -d "$directory" && [[ $("${sudo[@]}" stat -c '%a' "$directory") == 755 ]]; then
        continue
    fi
    "${sudo[@]}" install -d -m 0755 "$directory"
    changed=1
done
if ! id -nG "$docker_user" 2>/dev/null | tr ' ' '\n' | grep -qx docker; then
    "${sudo[@]}" usermod -aG docker "$docker_user"
    echo "prepare-host: added $docker_user to the docker group" >&2
    changed=1
fi

# --- what the caches rely on ----------------------------------------------------------------------
if ! systemctl is-active --quiet docker; then
    echo "prepare-host: $host: docker is not active; see journalctl -u docker" >&2
    exit 1
fi
version=$("${sudo[@]}" docker version --format '{{.Server.Version}}')
echo "changed=$changed"
echo "ready docker=$version"
