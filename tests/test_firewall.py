"""RegistryFirewall under Pulumi mocks: REJECT by default, caches for nodes, SSH for admins."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_proxmoxve as proxmoxve
import pytest

from components.firewall import RegistryFirewall, cache_ports, firewall_warnings
from components.renderers.front_proxy import public_ports, settings_front
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
def test_vm_firewall_enabled_with_reject_policy_after_rules(mocks: RecordingMocks):
    component = _build(sample_settings())

    def check(_: Any) -> None:
        options = mocks.named("fw-options").inputs
        assert options["enabled"] is True
        # REJECT, not DROP: a machine the rules forgot is refused at once and containerd takes
        # the upstream, instead of waiting out its 30 s dial timeout per request.
        assert options["inputPolicy"] == "REJECT"
        assert options["outputPolicy"] == "ACCEPT"
        assert options["nodeName"] == "pve"
        assert options["vmId"] == 210.0
        assert mocks.named("fw-options").provider is not None
        # The policy before the rules exist would cut the VM off: the options wait for them.
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
        # The front's ports and the metrics port; never the registry's own (loopback only).
        front_ports = public_ports(settings_front(settings, serve_plain=True))
        expected = {
            (",".join(str(p) for p in ports), source)
            for u in settings.upstreams
            for ports in [[*(p for p in front_ports if p in (u.port, u.resolved_tls_port)),
                           u.resolved_metrics_port]]
            for source in node_sources
        }  # fmt: skip
        assert opened == expected
        backends = {str(u.resolved_backend_port) for u in settings.upstreams}
        assert not any(set(dport.split(",")) & backends for dport, _ in opened)
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


@pytest.mark.parametrize("tls", [False, True])
def test_with_tls_each_cache_opens_its_plain_https_and_metrics_ports(tls: bool) -> None:
    raw = sample_raw()
    raw["tls"] = {"enabled": tls}
    ports = cache_ports(load_settings(raw))
    assert ports["docker.io"] == ([5000, 5002, 5001] if tls else [5000, 5001])
    assert 15000 not in {p for numbers in ports.values() for p in numbers}


def test_outputs_for_machines_outside_nodes_are_warned_about_unless_allowed_cidrs_is_set() -> None:
    [warning] = firewall_warnings(sample_settings())
    assert "registry.allowedCidrs is not set" in warning and "talosPatch" in warning
    raw = sample_raw()
    raw["registry"] = {"allowedCidrs": ["10.0.20.0/24"]}
    assert firewall_warnings(load_settings(raw)) == []
    raw = sample_raw()
    raw["nodes"] = []
    assert "the caches are closed" in firewall_warnings(load_settings(raw))[0]
