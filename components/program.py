"""The whole program: config -> components -> exports. ``__main__.py`` only calls ``run()``."""

from __future__ import annotations

import pulumi

from components import stack_config
from components.registry_vm import RegistryVm, RegistryVmArgs
from components.ssh import SshAgentMissing, agent_socket


def run() -> dict[str, pulumi.Output]:
    config = stack_config.load()
    settings, secrets = config.settings, config.secrets
    try:
        socket = agent_socket()
    except SshAgentMissing as error:
        raise pulumi.RunError(str(error)) from None

    registry_vm = RegistryVm(
        "registry-vm",
        RegistryVmArgs(
            settings=settings,
            api_token=pulumi.Output.secret(secrets.proxmox_api_token.get_secret_value()),
            agent_socket=socket,
        ),
    )

    exports: dict[str, pulumi.Output] = {
        "registryVm": pulumi.Output.all(
            registry_vm.vm_id, registry_vm.address, registry_vm.ssh_user
        ).apply(
            lambda values: {
                "vmId": values[0],
                "address": values[1],
                "sshUser": values[2],
                "proxmoxNode": settings.vm.proxmox_node,
            }
        ),
    }
    for key, value in exports.items():
        pulumi.export(key, value)
    return exports
