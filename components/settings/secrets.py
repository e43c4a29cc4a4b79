"""The secret config: read as Pulumi secrets, never rendered, logged or put into cloud-init."""

from __future__ import annotations

import re

from pydantic import Field, SecretStr, field_validator

from components.settings.checks import _Model


class UpstreamCredentials(_Model):
    username: str = Field(min_length=1)
    password: SecretStr


class Secrets(_Model):
    """Secret config, read as Pulumi secrets. Never rendered, logged or put into cloud-init."""

    proxmox_api_token: SecretStr | None = Field(
        default=None,
        description="Proxmox API token: 'USER@REALM!TOKENID=UUID' (with proxmox; not with host).",
    )
    upstream_credentials: dict[str, UpstreamCredentials] = Field(
        default_factory=dict, description="Per upstream host: {username, password}."
    )

    @field_validator("proxmox_api_token")
    @classmethod
    def _token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.match(
            r"^[^@\s]+@[^!\s]+![^=\s]+=\S+$", value.get_secret_value()
        ):
            raise ValueError("expected USER@REALM!TOKENID=SECRET (value hidden)")
        return value
