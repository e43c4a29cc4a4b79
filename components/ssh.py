"""One SSH story for every remote action: the operator's ssh-agent, and a pinned host key.

pulumi-command can take a private key, but pulumi-docker's SSH transport is the system ssh client
and takes no key: only an agent serves both. It also keeps the private key out of Pulumi state.

Every connection verifies the host it talks to (the trust model, README "Trust model"):
pulumi-command gets ``host_key`` (without it, pulumi-command ignores the host key: its
connection.go falls back to ``InsecureIgnoreHostKey``), the system ssh client a
``KnownHostsCommand`` that prints the pinned line with strict checking (components/ssh_client.py).
A target without a key cannot be built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.ssh_client import DIAL_SECONDS, ssh_client_options


class SshAgentMissing(RuntimeError):
    pass


def agent_socket() -> str:
    """The ssh-agent socket, or a clear error before anything is changed."""
    socket = os.environ.get("SSH_AUTH_SOCK", "")
    if not socket:
        raise SshAgentMissing(
            "SSH_AUTH_SOCK is not set: start an ssh-agent and add the key whose public half is in "
            "vm.sshPublicKeys and on every node"
            " (eval $(ssh-agent); ssh-add ~/.ssh/registry-mirrors)"
        )
    return socket


@dataclass(frozen=True)
class SshTarget:
    """Where and as whom to log in, and the host key the host must present. ``host`` and
    ``host_key`` may be Outputs (the VM's key is generated and kept in the state)."""

    host: pulumi.Input[str]
    user: str
    agent_socket: str
    host_key: pulumi.Input[str]
    port: int = 22

    def __post_init__(self) -> None:
        if self.host_key is None or self.host_key == "":
            raise ValueError(
                f"{self.user}@{self.host}: no host key to pin;"
                " the program never connects unverified"
            )

    def connection(
        self, dial_error_limit: int = 10, per_dial_timeout: int = DIAL_SECONDS
    ) -> remote.ConnectionArgs:
        return remote.ConnectionArgs(
            host=self.host,
            user=self.user,
            port=self.port,
            agent_socket_path=self.agent_socket,
            host_key=self.host_key,
            dial_error_limit=dial_error_limit,
            per_dial_timeout=per_dial_timeout,
        )

    def docker_host(self) -> pulumi.Output[str]:
        return pulumi.Output.from_input(self.host).apply(
            lambda host: f"ssh://{self.user}@{host}:{self.port}"
        )

    def ssh_opts(self) -> pulumi.Output[list[str]]:
        """Options for the system ssh client (pulumi-docker's ssh:// transport)."""
        return pulumi.Output.all(self.host, self.host_key).apply(
            lambda values: ssh_client_options(str(values[0]), str(values[1]), self.port)
        )
