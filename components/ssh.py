"""One SSH story for every remote action: the operator's ssh-agent.

pulumi-command can take a private key, but pulumi-docker's SSH transport is the system ssh client
and takes no key: only an agent serves both. It also keeps the private key out of Pulumi state.
Host keys are pinned where configured (``host_key`` for pulumi-command; for the ssh client a
``KnownHostsCommand`` that prints the pinned line, so no known_hosts file is needed).
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
    """Where and as whom to log in. ``host`` may be an Output (the VM's address)."""

    host: pulumi.Input[str]
    user: str
    agent_socket: str
    port: int = 22
    host_key: str | None = None

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
        """Options for the system ssh client (pulumi-docker)."""
        return pulumi.Output.from_input(self.host).apply(
            lambda host: ssh_client_options(host, self.host_key, self.port)
        )
