"""Section ``containerd``: what every node's containerd shares (config_path, rollout pace)."""

from __future__ import annotations

from pydantic import Field, field_validator

from components.settings.checks import _Model


class ContainerdSettings(_Model):
    """containerd-side settings shared by all nodes."""

    config_path: str = Field(
        default="/etc/containerd/certs.d", description="Directory containerd reads hosts.toml from."
    )
    batch_size: int = Field(
        default=5, ge=1, le=1000, description="Nodes per batch after the canary."
    )
    restart_timeout_seconds: int = Field(
        default=60,
        ge=5,
        le=600,
        description="Time limit of the restart command, then of the wait for the CRI plugin.",
    )
    health_timeout_seconds: int = Field(
        default=300,
        ge=10,
        le=3600,
        description="How long a control-plane node has, after its CRI plugin is ok, to be healthy "
        "as a cluster member (else the change is rolled back).",
    )
    probe_concurrency: int = Field(
        default=32,
        ge=1,
        le=256,
        description="Nodes read at once over SSH while the program runs (preview included).",
    )

    @field_validator("config_path")
    @classmethod
    def _dir(cls, value: str) -> str:
        if not value.startswith("/") or ":" in value or any(c.isspace() for c in value):
            raise ValueError("expected ONE absolute directory (no ':' list, no spaces)")
        return value.rstrip("/") or "/"
