"""An existing cache host (settings ``host``): prepared over SSH, not created.

The program logs in with the operator's agent, pinned to the key the host presents
(``host.sshHostPublicKey``: the host's own, never replaced by the program), and runs
scripts/vm/prepare-host.sh with the host's desired state on stdin: the manifest rendered from the
same ``host_state`` as the VM's vendor-data (components/renderers/cloud_init.py). ``ready`` is that
step; the caches, their maintenance and the nodes depend on it exactly as on the VM's ``ready``.

Nothing here is Proxmox: no provider, no VM, no firewall (the host's own firewall is the
operator's). Deleting the stack removes the caches and their files (their own delete steps) and
leaves Docker installed.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_command import remote

from components.renderers.cloud_init import host_state, render_host_manifest
from components.renderers.shell import remote_command
from components.settings import Settings
from components.ssh import SshTarget


@dataclass(frozen=True)
class CacheHostArgs:
    settings: Settings
    agent_socket: str


class CacheHost(pulumi.ComponentResource):
    """The prepare step on an existing host (``ready``: the host is usable)."""

    ready: remote.Command
    ssh: SshTarget
    address: pulumi.Output[str]
    ssh_user: pulumi.Output[str]
    host_public_key: pulumi.Output[str]
    vm_id: pulumi.Output[int | None]

    def __init__(
        self, name: str, args: CacheHostArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("registry-mirrors:host:CacheHost", name, None, opts)
        host = args.settings.host
        if host is None or not host.ssh_host_public_key:
            # components/program.py refuses an unpinned host before any resource.
            raise ValueError("CacheHost needs settings.host with sshHostPublicKey")
        self.ssh = SshTarget(
            host=host.address,
            user=host.ssh_user,
            agent_socket=args.agent_socket,
            host_key=host.ssh_host_public_key,
        )
        self.ready = self._create_prepare(name, args.settings)
        self.address = pulumi.Output.from_input(host.address)
        self.ssh_user = pulumi.Output.from_input(host.ssh_user)
        self.host_public_key = pulumi.Output.from_input(host.ssh_host_public_key)
        self.vm_id = pulumi.Output.from_input(None)
        self.register_outputs(
            {
                "address": self.address,
                "ssh_user": self.ssh_user,
                "host_public_key": self.host_public_key,
            }
        )

    def _create_prepare(self, name: str, settings: Settings) -> remote.Command:
        prepare = remote_command("vm/prepare-host.sh")
        return remote.Command(
            f"{name}-prepare",
            remote.CommandArgs(
                connection=self.ssh.connection(),
                create=prepare,
                # A changed manifest (stdin) or script is an in-place update: the script applies
                # only the difference.
                update=prepare,
                stdin=render_host_manifest(host_state(settings, created=False)),
                add_previous_output_in_env=False,
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
