"""Proxmox firewall of the registry VM: caches and metrics for the cluster, SSH for admins only.

Distribution in proxy mode has no auth of its own: anyone who reaches a cache port can make the
VM pull (and store) arbitrary images under our upstream credentials, so reach is the control.

Open: the front's ports (each cache's plain port and, with TLS, its HTTPS port) and each
registry's metrics port; never a registry's own port (it listens on the VM's loopback only,
behind the front). What is not open is REJECTED, not dropped: a node, a Talos machine fed by
the ``talosPatch`` output or a Prometheus the list forgot then gets a refusal at once and
containerd takes the upstream, instead of waiting out containerd's 30 s dial timeout per request.
Proxmox applies a VM's rules only while the datacenter firewall is on (README: Prerequisites).
"""

from __future__ import annotations

import pulumi
import pulumi_proxmoxve as proxmoxve

from components.renderers.front_proxy import public_ports, settings_front
from components.settings import Settings

SSH_PORT = 22
# What the VM answers a packet no rule accepts with (ICMP port unreachable / TCP reset).
INPUT_POLICY = "REJECT"


def cache_ports(settings: Settings) -> dict[str, list[int]]:
    """Per upstream host, the VM's ports its consumers reach: the front's (plain, and HTTPS with
    TLS on: ``public_ports`` of the front) and the registry's metrics port."""
    front = settings_front(settings, serve_plain=True)
    listening = set(public_ports(front))
    return {
        upstream.host: [
            *(p for p in (upstream.port, upstream.resolved_tls_port) if p in listening),
            upstream.resolved_metrics_port,
        ]
        for upstream in settings.upstreams
    }


def firewall_rules(settings: Settings) -> list[proxmoxve.firewall.RulesLegacyRuleArgs]:
    """Accept rules in order; the REJECT input policy refuses the rest."""
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
    for host, numbers in cache_ports(settings).items():
        ports = ",".join(str(port) for port in numbers)
        for cidr in settings.allowed_cidrs:
            rules.append(
                proxmoxve.firewall.RulesLegacyRuleArgs(
                    type="in",
                    action="ACCEPT",
                    proto="tcp",
                    dport=ports,
                    source=cidr,
                    comment=f"{host} cache and metrics (pulumi)",
                )
            )
    return rules


def firewall_warnings(settings: Settings) -> list[str]:
    """What the operator should know about who the firewall refuses."""
    if not settings.allowed_cidrs:
        return ["registry firewall: no nodes and no registry.allowedCidrs: the caches are closed"]
    if settings.registry.allowed_cidrs is None:
        return [
            "registry firewall: registry.allowedCidrs is not set, so only the listed nodes may "
            "reach the caches; the talosPatch, containerd and registriesYaml outputs are meant "
            "for machines outside `nodes` (Talos, nodes made from the outputs), and Prometheus "
            "and scripts/verify.py need the ports too: they are refused (and pull from the "
            "upstream) until registry.allowedCidrs covers them"
        ]
    return []


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
        for warning in firewall_warnings(settings):
            pulumi.log.warn(warning, resource=self)
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
            input_policy=INPUT_POLICY,
            output_policy="ACCEPT",
            # Turn on the policy only after the accept rules exist, or SSH is cut off in between.
            opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[self.rules]),
        )
        self.register_outputs({"rule_count": len(firewall_rules(settings))})
