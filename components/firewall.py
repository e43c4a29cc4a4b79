"""Proxmox firewall of the registry VM: caches and metrics for the cluster, SSH for admins only.

Distribution in proxy mode has no auth of its own: anyone who reaches a cache port can make the
VM pull (and store) arbitrary images under our upstream credentials, so reach is the control.
"""

from __future__ import annotations

import pulumi
import pulumi_proxmoxve as proxmoxve

from components.settings import Settings

SSH_PORT = 22


def firewall_rules(settings: Settings) -> list[proxmoxve.firewall.RulesLegacyRuleArgs]:
    """Accept rules in order; the DROP input policy rejects the rest."""
    rules: list[proxmoxve.firewall.RulesLegacyRuleArgs] = []
    for cidr in settings.registry.admin_cidrs:
        rules.append(
            proxmoxve.firewall.RulesLegacyRuleArgs(
                type="in",
                action="ACCEPT",
                proto="tcp",
                dport=str(SSH_PORT),
                source=cidr,
                comment="ssh from admins (pulumi)",
            )
        )
    for upstream in settings.upstreams:
        ports = f"{upstream.port},{upstream.resolved_metrics_port}"
        for cidr in settings.allowed_cidrs:
            rules.append(
                proxmoxve.firewall.RulesLegacyRuleArgs(
                    type="in",
                    action="ACCEPT",
                    proto="tcp",
                    dport=ports,
                    source=cidr,
                    comment=f"{upstream.host} cache and metrics (pulumi)",
                )
            )
    return rules


class RegistryFirewall(pulumi.ComponentResource):
    def __init__(
        self,
        name: str,
        *,
        provider: proxmoxve.Provider,
        node_name: str,
        vm_id: pulumi.Input[int],
        settings: Settings,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("registry-mirrors:vm:RegistryFirewall", name, None, opts)
        if not settings.allowed_cidrs:
            pulumi.log.warn(
                "registry firewall: no nodes and no registry.allowedCidrs: the caches are closed",
                resource=self,
            )
        self.rules = proxmoxve.firewall.RulesLegacy(
            f"{name}-rules",
            node_name=node_name,
            vm_id=vm_id,
            rules=firewall_rules(settings),
            opts=pulumi.ResourceOptions(parent=self, provider=provider),
        )
        self.options = proxmoxve.firewall.OptionsLegacy(
            f"{name}-options",
            node_name=node_name,
            vm_id=vm_id,
            enabled=True,
            input_policy="DROP",
            output_policy="ACCEPT",
            # Turn on DROP only after the accept rules exist, or SSH is cut off in between.
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[self.rules]),
        )
        self.register_outputs({"rule_count": len(firewall_rules(settings))})
