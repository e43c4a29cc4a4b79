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
        "package_update": True,
        "packages": ["docker.io", "qemu-guest-agent", "cron", "util-linux", "curl"],
        "write_files": [
            {
                "path": "/etc/docker/daemon.json",
                "permissions": "0644",
                "content": json.dumps(DOCKER_DAEMON_CONFIG, indent=2) + "\n",
            },
        ],
        "runcmd": [
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
