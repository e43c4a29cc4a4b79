"""RegistryFirewall under Pulumi mocks: DROP by default, caches for nodes, SSH for admins."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_proxmoxve as proxmoxve

from components.firewall import RegistryFirewall
from components.settings import Settings, load_settings
from tests.mocks import RecordingMocks, plain
from tests.sample import sample_raw, sample_settings


def _build(settings: Settings) -> RegistryFirewall:
    provider = proxmoxve.Provider("pve", endpoint="https://pve.lan:8006/")
    return RegistryFirewall(
        "fw",
        provider=provider,
        node_name="pve",
        vm_id=pulumi.Output.from_input(210),
        settings=settings,
    )


def _rules(mocks: RecordingMocks) -> list[dict[str, Any]]:
    return plain(mocks.named("fw-rules").inputs["rules"])


@pulumi.runtime.test
def test_vm_firewall_enabled_with_drop_policy_after_rules(mocks: RecordingMocks):
    component = _build(sample_settings())

    def check(_: Any) -> None:
        options = mocks.named("fw-options").inputs
        assert options["enabled"] is True
        assert options["inputPolicy"] == "DROP"
        assert options["outputPolicy"] == "ACCEPT"
        assert options["nodeName"] == "pve"
        assert options["vmId"] == 210.0
        assert mocks.named("fw-options").provider is not None
        # DROP before the rules exist would cut the VM off: the options wait for the rules.
        assert mocks.named("fw-options").depends_on == ["fw-rules"]

    return pulumi.Output.all(component.rules.id, component.options.id).apply(check)


@pulumi.runtime.test
def test_caches_open_only_to_nodes_and_ssh_only_to_admins(mocks: RecordingMocks):
    settings = sample_settings()
    component = _build(settings)

    def check(_: Any) -> None:
        rules = _rules(mocks)
        assert all(r["type"] == "in" and r["action"] == "ACCEPT" for r in rules)
        assert all(r["proto"] == "tcp" for r in rules)
        ssh = [r for r in rules if r["dport"] == "22"]
        assert [r["source"] for r in ssh] == ["10.0.0.0/8"]
        node_sources = {"10.0.20.21/32", "10.0.20.31/32", "10.0.20.32/32"}
        opened = {(r["dport"], r["source"]) for r in rules if r["dport"] != "22"}
        expected = {
            (f"{u.port},{u.resolved_metrics_port}", source)
            for u in settings.upstreams
            for source in node_sources
        }
        assert opened == expected
        assert all(r.get("source") for r in rules), "a rule without source opens to everyone"

    return pulumi.Output.all(component.rules.id, component.options.id).apply(check)


@pulumi.runtime.test
def test_allowed_cidrs_replace_the_node_addresses(mocks: RecordingMocks):
    raw = sample_raw()
    raw["registry"] = {"allowedCidrs": ["10.0.30.0/24"], "adminCidrs": ["192.168.1.0/24"]}
    component = _build(load_settings(raw))

    def check(_: Any) -> None:
        rules = _rules(mocks)
        assert {r["source"] for r in rules if r["dport"] != "22"} == {"10.0.30.0/24"}
        assert {r["source"] for r in rules if r["dport"] == "22"} == {"192.168.1.0/24"}

    return pulumi.Output.all(component.rules.id, component.options.id).apply(check)
