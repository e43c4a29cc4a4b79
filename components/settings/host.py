"""Section ``host``: an existing Debian/Ubuntu host for the caches, instead of the Proxmox VM.

The program does not create this host: it logs in over SSH (the operator's agent, port 22),
pinned to the key the host presents (``sshHostPublicKey``, the host's own:
``scripts/pin_host_keys.py --vm`` writes it; unset, nothing is sent to the host), prepares it
(scripts/vm/prepare-host.sh: the packages, files and services the VM's vendor-data gives the VM)
and runs the caches there exactly as on the VM.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from components.settings.checks import PublicKey, _check_user, _Model
from components.settings.errors import shown


class HostSettings(_Model):
    """An existing cache host reachable over SSH."""

    address: str = Field(
        description="The host's IPv4 address, as every node reaches it (each hosts.toml names "
        "the cache by this address), e.g. 10.0.30.5."
    )
    ssh_user: str = Field(
        default="debian",
        description="User the program logs in as: root, or a user with passwordless sudo.",
    )
    ssh_host_public_key: PublicKey | None = Field(
        default=None,
        description="The host key the host presents ('TYPE BASE64': scripts/pin_host_keys.py "
        "--vm writes it, after you compare its fingerprint with the host's own). Every "
        "connection pins it; unset, the program stops before any change, as for a node.",
    )
    disk_gb: int = Field(
        ge=10,
        le=65_536,
        description="Size in GiB of the file system that holds /var/lib/registry (the caches' "
        "budgets are shares of it, as of vm.diskGb on the VM).",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(
                f"{shown(value)} is not an IPv4 address (expected e.g. 10.0.30.5, no prefix)"
            ) from None
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{shown(value)} cannot be a host's address")
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        return _check_user(value, "host.address")
