#!/usr/bin/env bash
# Apply the vendor-data on stdin to the RUNNING registry VM with cloud-init's own modules.
#
# Why this exists: Proxmox's NoCloud instance-id is sha1(user-data . network-config); the vendor
# snippet is not part of it (qemu-server Cloudinit.pm nocloud_gen_metadata). So a changed
# snippet never runs on an existing VM: cloud-init sees the same instance and skips every
# per-instance module. Replacing the VM instead would throw the whole cache away. This step runs
# the same modules cloud-init runs at first boot, in the same order, with the new vendor-data on
# top of the VM's config (`cloud-init --file` has the highest precedence), so there is one
# interpretation of vendor-data, cloud-init's.
#
# Idempotent: it compares stdin with what was last applied (at first, with the copy cloud-init
# keeps of the vendor-data it booted with) and does nothing when they are equal.
# Prints changed=0 or changed=1; exits 1 naming the module when one fails.
set -euo pipefail

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo -n)
fi

state_dir=/var/lib/registry-mirrors
applied=$state_dir/vendor-data.applied
booted_with=/var/lib/cloud/instance/vendor-data.txt

new=$(mktemp)
trap 'rm -f "$new"' EXIT
cat >"$new"

baseline=$applied
"${sudo[@]}" test -e "$applied" || baseline=$booted_with
if "${sudo[@]}" cmp -s "$new" "$baseline"; then
    echo "changed=0"
    exit 0
fi

# The modules our vendor-data uses, in cloud-init's own order (init, config, final stages);
# runcmd only writes its script, scripts_user runs it.
for module in bootcmd write_files package_update_upgrade_install runcmd scripts_user; do
    if ! output=$("${sudo[@]}" cloud-init --file "$new" single --name "$module" --frequency always 2>&1); then
        echo "apply-vendor-data: cloud-init module $module failed on $(hostname):" >&2
        printf '%s\n' "$output" | tail -n 20 >&2
        exit 1
    fi
done
"${sudo[@]}" install -d -m 0755 "$state_dir"
"${sudo[@]}" install -m 0600 "$new" "$applied"
echo "changed=1"
