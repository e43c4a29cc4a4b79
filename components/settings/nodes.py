"""Section ``nodes``: the cluster nodes whose containerd the program switches to hosts.toml."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from components.renderers.flavours import FlavourName
from components.settings.checks import Hostname, Port, PublicKey, _check_user, _Model

# What the program does with a node. Every node step is kept on delete (retain_on_delete, no delete
# command): removing a node from `nodes`, renaming it or setting skipConfigPath never runs
# anything on it; putting its original files back is this explicit state.
NodeState = Literal["managed", "held", "restored"]


class Node(_Model):
    """A cluster node whose containerd is switched to config_path + hosts.toml."""

    name: Hostname = Field(description="Node name (unique).")
    address: str = Field(description="Address the program reaches the node at over SSH.")
    ssh_user: str = Field(default="root", description="SSH user (root or passwordless sudo).")
    ssh_port: Port = Field(default=22, description="SSH port.")
    ssh_host_public_key: PublicKey | None = Field(default=None, description="Host key to pin.")
    config_file: str = Field(
        default="/etc/containerd/config.toml", description="containerd config.toml path."
    )
    restart_command: str = Field(
        default="systemctl restart containerd", description="How to restart containerd."
    )
    containerd_address: str = Field(
        default="/run/containerd/containerd.sock",
        description="containerd's socket, where the CRI plugin is checked after a restart.",
    )
    skip_config_path: bool = Field(
        default=False,
        description="Opt out: leave config.toml as it is (only hosts.toml is written; reported). "
        "Setting it on a migrated node does not restore anything (see state: restored).",
    )
    state: NodeState = Field(
        default="managed",
        description="managed: read, planned and changed as needed. held: not read, nothing runs "
        "on it, its steps stay in the state as they are (a node that is down). restored: its "
        "original files are put back once (then remove it from nodes: nothing runs).",
    )
    flavour: FlavourName | None = Field(
        default=None,
        description="Force the node's flavour (containerd, k3s-server, k3s-agent, rke2-server, "
        "rke2-agent); default: detected by the probe. A mismatch with the node is an error.",
    )

    role: Literal["control-plane", "worker"] | None = Field(
        default=None,
        description="control-plane: restarted alone, before the workers, and only done once the "
        "node is healthy as a cluster member (healthCommand); default: control-plane for "
        "k3s-server and rke2-server, worker for everything else.",
    )
    health_command: str | None = Field(
        default=None,
        description="A control-plane node's check that it is healthy as a cluster member (exit "
        "0), run on the node; default per flavour (the local API server's /readyz).",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError("expected an IPv4 address such as 10.0.20.21") from None
        return value

    @field_validator("ssh_user")
    @classmethod
    def _user(cls, value: str) -> str:
        return _check_user(value, "nodes[].address")

    @field_validator("restart_command")
    @classmethod
    def _restart(cls, value: str) -> str:
        # Refused here, not on the node after config.toml has already been changed.
        if not value.strip():
            raise ValueError("must not be empty: the command that restarts containerd")
        return value

    @field_validator("health_command")
    @classmethod
    def _health(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty: leave it out for the flavour's default check")
        return value

    @field_validator("config_file", "containerd_address")
    @classmethod
    def _abs(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() for c in value):
            raise ValueError("expected an absolute path without spaces")
        return value
