"""The whole program: config -> components -> exports. ``__main__.py`` only calls ``run()``.

Before any resource: the settings are validated and every node is read and planned
(components/fleet.py); a bad setting or a node that does not answer stops the program there.
Order on ``pulumi up``: VM (and its firewall) -> wait for cloud-init -> one cache per upstream,
the CA and the front -> nodes (canary, then batches) -> with TLS, the certificate from the CA the
nodes now trust and plain HTTP refused (FrontSwitch). With ``host`` (an existing cache host) the
first steps are one: the host is prepared (components/cache_host.py); from the caches on, the
same components run. Nodes come after the caches so a node never points at a cache that is not
up; even so, containerd falls back to the upstream (``server``) while a cache is down.
"""

from __future__ import annotations

import gc
from typing import Any

import pulumi

from components import fleet, stack_config
from components.cache_host import CacheHost, CacheHostArgs
from components.containerd_mirrors import ContainerdMirrors
from components.firewall import RegistryFirewall
from components.fleet import (
    FleetReadError,
    NodeRead,
    ReadMode,
    StepRunner,
    plan_fleet,
    read_summary,
)
from components.front_switch import FrontSwitch
from components.registry_mirrors import RegistryMirrors
from components.registry_vm import RegistryVm, RegistryVmArgs
from components.renderers.bundle import containerd_export, tls_export
from components.renderers.registries_yaml import render_registries_yaml
from components.renderers.talos import render_talos_patch
from components.settings import Secrets, Settings
from components.settings.budget import cache_budgets
from components.ssh import SshAgentMissing, agent_socket
from components.ssh_client import unpinned_cache_host, unpinned_nodes


def tune_gc() -> None:
    """Make CPython's cyclic garbage collector run rarely, for this short-lived process.

    A Pulumi program builds many long-lived objects (resources, Outputs, futures) and frees
    almost none before it exits; with the default thresholds the collector rescans all of them
    again and again (bench/program_cost.py measures the difference per fleet size). Reference
    counting still frees everything acyclic at once; cycles are collected, only less often.
    """
    gc.freeze()  # what the imports built is never garbage
    gc.set_threshold(100_000, 50, 100)


def rendered_exports(settings: Settings, ca_pem: str | None = None) -> dict[str, Any]:
    """The outputs computed by pure renderers from the settings and, TLS on, the CA certificates
    the VM made (``ca_pem``; public): the engine tier's StackReference test exports exactly these
    from a producer stack."""
    return {
        "containerd": containerd_export(settings, ca_pem),
        "registriesYaml": render_registries_yaml(settings),
        "talosPatch": render_talos_patch(settings, ca_pem),
        "tls": tls_export(settings, ca_pem),
    }


def create_cache_host(settings: Settings, secrets: Secrets, socket: str) -> RegistryVm | CacheHost:
    """The host the caches run on: the Proxmox VM and its firewall (the default), or an existing
    host, prepared. Both give ``ssh`` (pinned), ``ready`` (the step the caches depend on),
    ``vm_id``, ``address`` and ``host_public_key``."""
    if settings.host is not None:
        return CacheHost("cache-host", CacheHostArgs(settings=settings, agent_socket=socket))
    assert settings.vm is not None and secrets.proxmox_api_token is not None  # load checked
    registry_vm = RegistryVm(
        "registry-vm",
        RegistryVmArgs(
            settings=settings,
            api_token=pulumi.Output.secret(secrets.proxmox_api_token.get_secret_value()),
            agent_socket=socket,
        ),
    )
    RegistryFirewall(
        "registry-firewall",
        provider=registry_vm.provider,
        node_name=settings.vm.proxmox_node,
        vm_id=registry_vm.vm_id,
        settings=settings,
    )
    return registry_vm


def run(runner: StepRunner | None = None) -> dict[str, pulumi.Output[Any]]:
    """Validate, read every node, then register everything. ``runner`` runs a node step (the
    probe) and defaults to the system ssh client with the operator's agent; tests pass their own.
    """
    config = stack_config.load()
    settings, secrets = config.settings, config.secrets
    try:
        socket = agent_socket()
    except SshAgentMissing as error:
        raise pulumi.RunError(str(error)) from None
    # Before any resource: the engine starts creating resources as soon as they are registered,
    # so a node that does not answer must stop the program before the first one. Nothing is sent
    # to a node whose host key is not pinned (README "Trust model").
    unpinned_host = unpinned_cache_host(settings, pulumi.get_stack())
    if unpinned_host:
        raise pulumi.RunError(f"{unpinned_host[0]} (nothing was changed)")
    unpinned = unpinned_nodes(settings.nodes, pulumi.get_stack())
    if unpinned:
        raise pulumi.RunError(
            f"{len(unpinned)} of {len(settings.nodes)} node(s) have no pinned host key "
            "(nothing was changed):\n" + "\n".join(f"  {line}" for line in unpinned)
        )
    # A preview reads with the read identity when the stack has one (README "The read
    # identity"): a pull request's preview gets only the read key. `pulumi up` itself reads with
    # the apply identity, which sends the program's own probe: what it applies is planned from
    # exactly that, and it installs the read access a preview will use next.
    mode: ReadMode = (
        "read-first" if settings.node_access.enabled and pulumi.runtime.is_dry_run() else "apply"
    )
    reads: dict[str, NodeRead] = {}
    try:
        plans = plan_fleet(settings, runner or fleet.ssh_runner(socket), mode, reads)
    except FleetReadError as error:
        raise pulumi.RunError(str(error)) from None
    notes, warnings = read_summary(settings, reads)
    for line in notes:
        pulumi.log.info(line)
    for line in warnings:
        pulumi.log.warn(line)

    cache_host = create_cache_host(settings, secrets, socket)
    # The VM resource's id: a new VM has none of what the steps on the old one made (the CA, the
    # front), so they run again there. An existing host is never replaced by the program.
    recreated = cache_host.vm.id if isinstance(cache_host, RegistryVm) else None
    credentials = pulumi.Output.secret(
        {
            host: {"username": c.username, "password": c.password.get_secret_value()}
            for host, c in secrets.upstream_credentials.items()
        }
    )
    mirrors = RegistryMirrors(
        "registry-mirrors",
        settings=settings,
        ssh=cache_host.ssh,
        ready=cache_host.ready,
        credentials=credentials,
        vm_id=recreated,
    )
    nodes = ContainerdMirrors(
        "containerd",
        settings=settings,
        plans=plans,
        agent_socket=socket,
        depends_on=[mirrors],
        trust_bundle=mirrors.trust_bundle,
    )
    if settings.tls.enabled:
        # Only once every node step succeeded: the certificate from the CA they now trust, and
        # plain HTTP refused.
        FrontSwitch(
            "registry-front-switch",
            settings=settings,
            ssh=cache_host.ssh,
            after=nodes.last_steps,
            vm_id=recreated,
        )

    # The CA certificates the cache host made (TLS on): public, in the outputs consumers read.
    trust: pulumi.Output[str | None] = (
        mirrors.trust_bundle if mirrors.trust_bundle is not None else pulumi.Output.from_input(None)
    )
    rendered = trust.apply(lambda pem: rendered_exports(settings, pem))
    exports: dict[str, pulumi.Output[Any]] = {
        # The same shape in both modes: an existing host has no vmId or proxmoxNode (null).
        "registryVm": pulumi.Output.all(
            cache_host.vm_id, cache_host.address, cache_host.host_public_key
        ).apply(
            lambda values: {
                "vmId": values[0],
                "address": values[1],
                "sshUser": settings.cache_host.ssh_user,
                "proxmoxNode": settings.vm.proxmox_node if settings.vm is not None else None,
                # scripts/verify.py compares the cache disk's usage against it.
                "diskUsageThresholdPercent": settings.registry.disk_usage_threshold_percent,
                # verify.py reports each cache's size against it (bytes).
                "cacheBudgets": cache_budgets(settings),
                # The VM's generated host key (public half): verify.py and other stacks pin it.
                "sshHostPublicKey": values[2],
            }
        ),
        "mirrors": mirrors.mirrors,
        **{key: rendered.apply(lambda r, key=key: r[key]) for key in rendered_exports(settings)},
        "nodes": pulumi.Output.from_input(nodes.nodes),
        "rollout": pulumi.Output.from_input(nodes.batches),
    }
    for key, value in exports.items():
        pulumi.export(key, value)
    return exports
