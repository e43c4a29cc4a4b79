"""Section ``vm``: the registry VM on Proxmox VE, cloned from a template or imported from a cloud
image, with a static address."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator

from components.settings.checks import Hostname, PublicKey, _check_user, _Model
from components.settings.errors import shown


class CloudImage(_Model):
    """Import the VM's disk from a downloaded cloud image (alternative to a template clone)."""

    url: str = Field(description="Cloud image URL, e.g. a Debian 12 genericcloud qcow2.")
    checksum: str | None = Field(default=None, description="Expected checksum of the image.")
    checksum_algorithm: Literal["sha256", "sha512"] = Field(
        default="sha512", description="Algorithm of `checksum`."
    )
    datastore: str = Field(
        default="local", description="Datastore with the 'import' content type for the image."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^\s/]+/\S+$", value):
            raise ValueError("expected an http(s) URL of an image file")
        return value


class VmSettings(_Model):
    """The registry VM on Proxmox VE."""

    proxmox_node: Hostname = Field(description="Proxmox node the VM runs on, e.g. 'pve'.")
    vm_id: int = Field(ge=100, le=999_999_999, description="Proxmox VM id.")
    name: Hostname = Field(default="registry", description="VM name and hostname.")
    template_vm_id: int | None = Field(
        default=None, ge=100, le=999_999_999, description="Clone this cloud-init template VM."
    )
    cloud_image: CloudImage | None = Field(
        default=None, description="Or import the disk from this cloud image."
    )
    cores: int = Field(default=2, ge=1, le=128, description="vCPUs.")
    memory_mb: int = Field(default=4096, ge=1024, le=1_048_576, description="Memory in MiB.")
    disk_gb: int = Field(default=100, ge=10, le=65_536, description="Disk size in GiB (cache).")
    datastore: str = Field(default="local-lvm", description="Datastore for the VM disk.")
    snippets_datastore: str = Field(
        default="local", description="Datastore with the 'snippets' content type enabled."
    )
    bridge: str = Field(default="vmbr0", description="Proxmox bridge for the NIC.")
    vlan: int | None = Field(default=None, ge=1, le=4094, description="VLAN tag, if any.")
    address: str = Field(description="Static address in CIDR form, e.g. 10.0.20.10/24.")
    gateway: str = Field(description="Default gateway, inside the address's subnet.")
    dns_servers: list[str] = Field(
        default_factory=lambda: ["10.0.20.1"], min_length=1, description="DNS servers."
    )
    search_domain: Hostname | None = Field(default=None, description="DNS search domain.")
    ssh_user: str = Field(default="debian", description="Cloud-init user the program logs in as.")
    ssh_public_keys: list[PublicKey] = Field(
        min_length=1, description="Authorized SSH public keys."
    )
    ssh_host_public_key: PublicKey | None = Field(
        default=None,
        description="Only for an upgrade or a rotation: the host key the running VM presents "
        "NOW, when that is not the program's generated key. The program logs in with it once to "
        "install its own key (registry-vm-host-key-install); remove it afterwards. Unset: the VM "
        "presents the generated key (the registryVm output's sshHostPublicKey).",
    )
    cloud_init_timeout_seconds: int = Field(
        default=900, ge=30, le=7200, description="How long to wait for cloud-init to finish."
    )

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        return _check_user(value, "vm.address")

    @field_validator("dns_servers")
    @classmethod
    def _dns(cls, value: list[str]) -> list[str]:
        for server in value:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise ValueError(
                    f"{shown(server)} is not an IP address (expected e.g. 10.0.20.1)"
                ) from None
        return value

    @property
    def interface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(self.address)

    @property
    def ip(self) -> str:
        return str(self.interface.ip)

    @property
    def prefix(self) -> int:
        return self.interface.network.prefixlen
