#!/usr/bin/env bash
# The VM tier's guest (tests/vm): a Debian bookworm disk that boots under QEMU (TCG) the way a
# Debian 12 cloud image boots on Proxmox: cloud-init, netplan + systemd-networkd +
# systemd-resolved, openssh-server, sudo, the cloud kernel. Built once with debootstrap and cached:
#
#   $TESTENV_CACHE/vm-guest/<recipe>/disk.img     the guest's ext4 root file system, made with
#                                                 `mkfs.ext4 -d` (no loop mount); every boot
#                                                 gets a throw-away qcow2 overlay on it
#   $TESTENV_CACHE/vm-guest/<recipe>/vmlinuz, initrd.img   the kernel and initramfs from the
#                                                 guest's own /boot (the cloud kernel package)
#
# <recipe> is a hash of this file: changing the recipe builds a new guest. It is NOT the official
# cloud image (that is a download from outside the package registries); what differs and what the
# tier cannot prove is in the README ("The VM tier").
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/testenv/lib.sh
. scripts/testenv/lib.sh

if ! can_install; then
  log "not root: skipping the VM guest (the VM tier will skip; fails under CI=true)"
  exit 0
fi

apt_install qemu-system-x86 qemu-utils debootstrap genisoimage e2fsprogs busybox-static

recipe=$(sha256sum "$0" | cut -c1-12)
guest="$TESTENV_CACHE/vm-guest/$recipe"
if [[ -s $guest/disk.img && -s $guest/vmlinuz && -s $guest/initrd.img ]]; then
  log "VM guest: cached ($guest)"
  exit 0
fi

# What the Debian 12 cloud images install (debian-cloud-images, classes SYSTEM_BOOT and CLOUD),
# reduced to what boots and what cloud-init and our vendor-data use. debootstrap does not resolve
# virtual dependencies: python3-cffi-backend (cloud-init's cryptography) must be named. The
# locale is generated below: cloud-init 22.4's locale module fails without en_US.UTF-8.
PACKAGES=(
  systemd-sysv udev dbus libpam-systemd kmod procps iproute2 iputils-ping less
  netplan.io systemd-resolved
  cloud-init python3-cffi-backend locales
  openssh-server sudo ca-certificates
  linux-image-cloud-amd64 initramfs-tools
)

# The host's own Debian mirror (the guest installs docker.io from it at first boot, as the
# vendor-data does in production): the first deb822 URIs line naming the debian archive.
mirror=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$TESTENV_CACHE"
work=$(mktemp -d "$TESTENV_CACHE/vm-guest-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
started=$(date +%s)
log "VM guest: debootstrap bookworm from $mirror (a few minutes, once)"
debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 40 "$work/debootstrap.log" >&2
  exit 1
}

# The same apt sources and options as this host, so the guest's `apt-get install` (vendor-data)
# uses the mirror the host uses.
rm -f "$rootfs/etc/apt/sources.list"
cp /etc/apt/sources.list.d/*.sources "$rootfs/etc/apt/sources.list.d/" 2>/dev/null || true
for conf in /etc/apt/apt.conf.d/99*; do
  [[ -f $conf ]] && cp "$conf" "$rootfs/etc/apt/apt.conf.d/"
done
[[ -n $(ls "$rootfs/etc/apt/sources.list.d/" 2>/dev/null) ]] ||
  echo "deb $mirror bookworm main" >"$rootfs/etc/apt/sources.list"

echo "en_US.UTF-8 UTF-8" >"$rootfs/etc/locale.gen"
chroot "$rootfs" locale-gen >/dev/null
echo 'LANG=en_US.UTF-8' >"$rootfs/etc/default/locale"

cat >"$rootfs/etc/fstab" <<'EOF'
LABEL=guest-root / ext4 rw,discard,errors=remount-ro 0 1
EOF
# A cloud image ships no identity: cloud-init sets the hostname and makes the SSH host keys.
: >"$rootfs/etc/machine-id"
rm -f "$rootfs"/etc/ssh/ssh_host_*
echo localhost >"$rootfs/etc/hostname"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$rootfs/etc/resolv.conf"
chroot "$rootfs" systemctl enable systemd-networkd systemd-resolved serial-getty@ttyS0 >/dev/null 2>&1
# Debian 12's cloud images ship this DHCP default for every en*/eth* interface, beside the file
# cloud-init writes (50-cloud-init.yaml): the tier boots with it, as a Proxmox VM cloned from
# such an image would.
install -d -m 0755 "$rootfs/etc/netplan"
cat >"$rootfs/etc/netplan/90-default.yaml" <<'EOF'
network:
    version: 2
    ethernets:
        all-en:
            match:
                name: en*
            dhcp4: true
            dhcp4-overrides:
                use-domains: true
            dhcp6: true
            dhcp6-overrides:
                use-domains: true
        all-eth:
            match:
                name: eth*
            dhcp4: true
            dhcp4-overrides:
                use-domains: true
            dhcp6: true
            dhcp6-overrides:
                use-domains: true
EOF
chmod 0600 "$rootfs/etc/netplan/90-default.yaml"
chroot "$rootfs" apt-get clean

kernel=$(find "$rootfs/boot" -name 'vmlinuz-*-cloud-amd64' | sort | tail -n 1)
initrd=$(find "$rootfs/boot" -name 'initrd.img-*-cloud-amd64' | sort | tail -n 1)
[[ -n $kernel && -n $initrd ]] || {
  echo "setup-vm-guest: no cloud kernel/initrd in the guest's /boot" >&2
  exit 1
}

mkdir -p "$work/out"
cp "$kernel" "$work/out/vmlinuz"
cp "$initrd" "$work/out/initrd.img"
# 8 GiB sparse: Docker, two registry images and the caches fit; only written blocks use space.
truncate -s 8G "$work/out/disk.img"
mkfs.ext4 -q -L guest-root -d "$rootfs" "$work/out/disk.img"

mkdir -p "$(dirname "$guest")"
rm -rf "$guest"
mv "$work/out" "$guest"
# Guests of older recipes are never booted again.
find "$(dirname "$guest")" -mindepth 1 -maxdepth 1 -type d ! -name "$recipe" -exec rm -rf {} +
log "VM guest: built in $(($(date +%s) - started))s ($guest)"
