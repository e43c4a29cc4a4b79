"""Section ``proxmox``: the Proxmox VE API, and SSH from the provider to the Proxmox host."""

from __future__ import annotations

import re
import urllib.parse

from pydantic import Field, field_validator

from components.settings.checks import _check_address, _check_user, _Model, _no_credentials
from components.settings.errors import key_text


class ProxmoxSsh(_Model):
    """SSH from the Pulumi provider to the Proxmox host (needed to upload snippets)."""

    username: str = Field(default="root", description="SSH user on the Proxmox host.")
    agent: bool = Field(default=True, description="Use the local ssh-agent.")
    node_address: str | None = Field(
        default=None, description="Address of the Proxmox node if its name does not resolve."
    )

    @field_validator("username")
    @classmethod
    def _user(cls, value: str) -> str:
        # root@pam is the API user's form (realm), not an SSH login.
        return _check_user(value, "proxmox.endpoint, or proxmox.ssh.nodeAddress")

    @field_validator("node_address")
    @classmethod
    def _node_address(cls, value: str | None) -> str | None:
        return None if value is None else _check_address(value)


class ProxmoxSettings(_Model):
    endpoint: str = Field(description="Proxmox API URL, e.g. https://pve.lan:8006/.")
    insecure: bool = Field(default=False, description="Skip TLS verification (not recommended).")
    ssh: ProxmoxSsh = Field(default_factory=ProxmoxSsh, description="Provider SSH settings.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        _no_credentials(
            value, "https://HOST[:PORT]/", "the API token as the secret proxmoxApiToken"
        )
        if not re.match(r"^https://[^\s/@?#]+/?$", value):
            raise ValueError("expected https://HOST[:PORT]/")
        url = urllib.parse.urlsplit(value)
        try:
            port = url.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ValueError("the port is out of range 1-65535 (Proxmox listens on 8006)")
        host = url.hostname or ""
        try:
            _check_address(host)
        except ValueError as error:
            raise ValueError(f"host {key_text(host)}: {error}") from None
        return value
