"""cloud-init for the registry VM: the Proxmox ipconfig0 string and the vendor-data snippet.

The address is static on purpose: every node's hosts.toml names the VM by IP, so a DHCP lease
that moves breaks every mirror at once. The user and SSH keys travel through Proxmox's own
cloud-init user (``user_account``), which is why packages and commands live in vendor data
(Proxmox forbids ``user_account`` together with a user-data snippet). Nothing secret goes here:
snippets sit in plain text on the Proxmox datastore.
"""

from __future__ import annotations

import json
import shlex

import yaml

from components.settings import Settings, VmSettings

# Debian 12's cloud images ship a netplan default that runs DHCP on every en*/eth* interface
# (measured in the VM tier: its ``all-eth`` entry sorts before cloud-init's ``eth0`` and wins, so
# the VM gets a DHCP lease and NOT the static ipconfig0 address). cloud-init writes its own file
# (50-cloud-init.yaml) but never removes the image's; bootcmd is the earliest point vendor-data
# runs, so it removes that file and re-applies netplan before anything else happens.
IMAGE_DHCP_DEFAULT = "/etc/netplan/90-default.yaml"
REMOVE_IMAGE_DHCP = (
    f"if [ -e {IMAGE_DHCP_DEFAULT} ]; then rm -f {IMAGE_DHCP_DEFAULT} && netplan apply; fi"
)

APT_NO_RECOMMENDS = "/etc/apt/apt.conf.d/90registry-mirrors-no-recommends"

DOCKER_DAEMON_CONFIG = {
    # Registry containers log every pull at info level; rotate so the disk holds cache, not logs.
    "log-driver": "json-file",
    "log-opts": {"max-size": "50m", "max-file": "5"},
    "live-restore": True,
}


def ipconfig0(vm: VmSettings) -> str:
    """Proxmox's form, e.g. ``ip=10.0.20.10/24,gw=10.0.20.1``."""
    return f"ip={vm.ip}/{vm.prefix},gw={vm.gateway}"


def vendor_data(settings: Settings) -> dict:
    registry_dirs = [f"/etc/docker-registry/{u.container}" for u in settings.upstreams]
    data_dirs = [f"/var/lib/registry/{u.container}" for u in settings.upstreams]
    return {
        "bootcmd": [REMOVE_IMAGE_DHCP],
        "package_update": True,
        "packages": [
            "docker.io",
            # The front of the caches (components/renderers/front_proxy.py): Debian's package
            # starts it with its own defaults; scripts/vm/front.sh configures and restarts it.
            "trafficserver",
            "apparmor",
            "ca-certificates",
            "qemu-guest-agent",
            "cron",
            "util-linux",
            "curl",
        ],
        "write_files": [
            # An appliance gets exactly the packages it needs. With apt's default, Recommends add
            # ~40 more at first boot (git and perl from docker.io, an exim4 mail daemon from cron,
            # needrestart): minutes in the VM tier's QEMU. apparmor is named in `packages`:
            # Docker loads its default container profile with it. A file, not the `apt:` key:
            # that key makes cloud-init rewrite the image's apt sources.
            {
                "path": APT_NO_RECOMMENDS,
                "permissions": "0644",
                "content": 'APT::Install-Recommends "false";\n',
            },
            {
                "path": "/etc/docker/daemon.json",
                "permissions": "0644",
                "content": json.dumps(DOCKER_DAEMON_CONFIG, indent=2) + "\n",
            },
        ],
        "runcmd": [
            # cloud-init runs these as one /bin/sh script and judges it by its LAST command: a
            # failure in the middle (docker not enabled, a directory missing) would be reported
            # as success. With -e the first failure fails the module, which cloud-init status
            # and scripts/vm/wait-cloud-init.sh report.
            "set -e",
            # Needs the virtio-serial channel Proxmox adds with `agent: 1` (the VM resource
            # enables it): without it this unit waits for a device that never appears.
            "systemctl enable --now qemu-guest-agent",
            "systemctl enable --now docker",
            "systemctl enable --now cron",
            shlex.join(["install", "-d", "-m", "0755", "/etc/docker-registry", *registry_dirs]),
            shlex.join(["install", "-d", "-m", "0755", "/var/lib/registry", *data_dirs]),
            shlex.join(["usermod", "-aG", "docker", settings.vm.ssh_user]),
        ],
    }


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as ``|`` blocks, so a reviewer reads files as files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def dump_yaml(data: object) -> str:
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False)


def render_vendor_data(settings: Settings) -> str:
    return "#cloud-config\n" + dump_yaml(vendor_data(settings))
