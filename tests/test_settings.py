"""The settings model: every bad input is rejected with a line naming its key."""

from __future__ import annotations

from typing import Any

import pytest

from components.settings import (
    DEFAULT_UPSTREAMS,
    SettingsError,
    load_secrets,
    load_settings,
)
from tests.sample import sample_raw, sample_settings


def _set(raw: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target: Any = raw
    for part in parents:
        target = target[int(part)] if part.isdigit() else target.setdefault(part, {})
    if value is _DELETE:
        del target[int(last) if last.isdigit() else last]
    elif last.isdigit():
        target[int(last)] = value
    else:
        target[last] = value


_DELETE = object()
UP = [u.model_dump(by_alias=True, exclude_none=True) for u in DEFAULT_UPSTREAMS]

# (id, changes {dotted.path: value}, key expected at the start of a problem line, text in it)
BAD_INPUTS = [
    ("address-not-ip", {"vm.address": "10.0.20.300/24"}, "vm.address", "CIDR"),
    ("address-no-prefix", {"vm.address": "10.0.20.10"}, "vm.address", "no prefix"),
    ("address-network", {"vm.address": "10.0.20.0/24"}, "vm.address", "network address"),
    ("address-broadcast", {"vm.address": "10.0.20.255/24"}, "vm.address", "broadcast"),
    ("address-hostname", {"vm.address": "registry.lan/24"}, "vm.address", "CIDR"),
    ("gateway-outside", {"vm.gateway": "10.0.21.1"}, "vm.gateway", "outside"),
    ("gateway-is-address", {"vm.gateway": "10.0.20.10"}, "vm.gateway", "own address"),
    ("gateway-not-ip", {"vm.gateway": "gw.lan"}, "vm.gateway", "not an IPv4"),
    ("vm-id-low", {"vm.vmId": 99}, "vm.vmId", "greater than or equal to 100"),
    ("vlan-range", {"vm.vlan": 4095}, "vm.vlan", "less than or equal to 4094"),
    ("no-source", {"vm.templateVmId": _DELETE}, "vm", "got neither"),
    ("two-sources", {"vm.cloudImage": {"url": "https://x.org/a.qcow2"}}, "vm", "got both"),
    (
        "bad-image-url",
        {"vm.templateVmId": _DELETE, "vm.cloudImage": {"url": "ftp://x"}},
        "vm.cloudImage.url",
        "URL",
    ),
    ("vm-name", {"vm.name": "Registry_VM"}, "vm.name", "hostname"),
    ("ssh-key", {"vm.sshPublicKeys": ["not a key"]}, "vm.sshPublicKeys", "not an SSH public key"),
    ("no-ssh-keys", {"vm.sshPublicKeys": []}, "vm.sshPublicKeys", "at least 1"),
    ("dns-not-ip", {"vm.dnsServers": ["dns.lan"]}, "vm.dnsServers", "IP"),
    ("vm-typo", {"vm.adress": "10.0.20.10/24"}, "vm.adress", "unknown key"),
    ("top-level-typo", {"upstream": []}, "upstream", "unknown key"),
    ("missing-vm", {"vm": _DELETE}, "vm", "required key is missing"),
    ("missing-node-name", {"vm.proxmoxNode": _DELETE}, "vm.proxmoxNode", "required"),
    ("endpoint-http", {"proxmox.endpoint": "http://pve:8006"}, "proxmox.endpoint", "https://"),
    ("port-range", {"upstreams": [{**UP[0], "port": 70000}]}, "upstreams[0].port", "65535"),
    ("port-dup", {"upstreams": [UP[0], {**UP[1], "port": 5000}]}, "upstreams[1].port", "clashes"),
    (
        "port-metrics-clash",
        {"upstreams": [UP[0], {**UP[1], "port": 5001}]},
        "upstreams[1].port",
        "metricsPort",
    ),
    (
        "metrics-clash-port",
        {"upstreams": [UP[0], {**UP[1], "metricsPort": 5000}]},
        "upstreams[1].metricsPort",
        "clashes",
    ),
    ("port-ssh", {"upstreams": [{**UP[0], "port": 22}]}, "upstreams[0].port", "SSH"),
    (
        "dup-host",
        {"upstreams": [UP[0], {**UP[1], "host": "docker.io"}]},
        "upstreams[1].host",
        "duplicates",
    ),
    (
        "dup-container",
        {"upstreams": [UP[0], {**UP[1], "container": "registry"}]},
        "upstreams[1].container",
        "duplicates",
    ),
    ("bad-host", {"upstreams": [{**UP[0], "host": "ghcr io"}]}, "upstreams[0].host", "hostname"),
    (
        "bad-container",
        {"upstreams": [{**UP[0], "container": "-registry"}]},
        "upstreams[0].container",
        "container name",
    ),
    (
        "upstream-typo",
        {"upstreams": [{**UP[0], "remoteurl": "https://x"}]},
        "upstreams[0].remoteurl",
        "unknown key",
    ),
    (
        "server-path",
        {"upstreams": [{**UP[0], "server": "https://x.io/v2/"}]},
        "upstreams[0].server",
        "root URL",
    ),
    ("no-upstreams", {"upstreams": []}, "upstreams", "at least 1"),
    ("node-dup-name", {"nodes.1.name": "k8s-cp-1"}, "nodes[1].name", "duplicates"),
    ("node-dup-address", {"nodes.2.address": "10.0.20.31"}, "nodes[2].address", "duplicates"),
    ("node-is-vm", {"nodes.0.address": "10.0.20.10"}, "nodes[0].address", "registry VM"),
    ("node-bad-address", {"nodes.0.address": "10.0.20"}, "nodes[0].address", "IPv4"),
    ("node-missing-address", {"nodes.0.address": _DELETE}, "nodes[0].address", "required"),
    (
        "node-config-relative",
        {"nodes.0.configFile": "config.toml"},
        "nodes[0].configFile",
        "absolute",
    ),
    (
        "node-containerd-address-relative",
        {"nodes.1.containerdAddress": "run/containerd/containerd.sock"},
        "nodes[1].containerdAddress",
        "absolute",
    ),
    (
        "node-containerd-address-space",
        {"nodes.0.containerdAddress": "/run/containerd/containerd .sock"},
        "nodes[0].containerdAddress",
        "without spaces",
    ),
    (
        "config-path-list",
        {"containerd": {"configPath": "/etc/containerd/certs.d:/etc/docker/certs.d"}},
        "containerd.configPath",
        "ONE",
    ),
    (
        "batch-zero",
        {"containerd": {"batchSize": 0}},
        "containerd.batchSize",
        "greater than or equal to 1",
    ),
    ("image-latest", {"registry": {"image": "registry:latest"}}, "registry.image", "pinned"),
    ("cidr", {"registry": {"allowedCidrs": ["10.0.20.0/33"]}}, "registry.allowedCidrs", "CIDR"),
    (
        "cron",
        {"registry": {"gc": {"minute": "x", "staggerMinutes": 5}}},
        "registry.gc.minute",
        "cron",
    ),
    (
        "gc-not-plain",
        {"registry": {"gc": {"minute": "*/5", "hour": "3", "staggerMinutes": 5}}},
        "registry.gc.minute",
        "plain number",
    ),
    (
        "gc-overlap",
        {"registry": {"gc": {"minute": "0", "hour": "3", "staggerMinutes": 0}}},
        "registry.gc.staggerMinutes",
        "overlap",
    ),
]


@pytest.mark.parametrize(
    ("changes", "key", "text"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_rejected_naming_the_key(changes: dict, key: str, text: str):
    raw = sample_raw()
    for path, value in changes.items():
        _set(raw, path, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    matching = [line for line in caught.value.problems if line.startswith(f"{key}:")]
    assert matching, f"no problem names {key}: {caught.value.problems}"
    assert any(text in line for line in matching), matching


def test_at_least_25_bad_inputs():
    assert len(BAD_INPUTS) >= 25


def test_every_problem_is_reported_at_once():
    raw = sample_raw()
    _set(raw, "vm.gateway", "10.0.99.1")
    _set(raw, "vm.vmId", 5)
    _set(raw, "nodes.1.name", "k8s-cp-1")
    _set(raw, "vm.tyop", 1)
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    keys = {line.split(":")[0] for line in caught.value.problems}
    assert {"vm.gateway", "vm.vmId", "nodes[1].name", "vm.tyop"} <= keys


def test_problem_line_shows_the_bad_value():
    raw = sample_raw()
    _set(raw, "vm.vmId", 5)
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    assert "(got 5)" in str(caught.value)


def test_defaults_are_the_five_upstreams():
    settings = sample_settings()
    assert [(u.host, u.port, u.container) for u in settings.upstreams] == [
        ("docker.io", 5000, "registry"),
        ("ghcr.io", 5010, "registry-ghcr"),
        ("quay.io", 5020, "registry-quay"),
        ("registry.k8s.io", 5030, "registry-k8s"),
        ("reg.kyverno.io", 5040, "registry-kyverno"),
    ]
    docker_hub = settings.upstreams[0]
    assert docker_hub.resolved_server == "https://registry-1.docker.io"
    assert docker_hub.resolved_metrics_port == 5001
    assert settings.upstreams[1].resolved_server == "https://ghcr.io"
    assert settings.endpoint(docker_hub) == "http://10.0.20.10:5000"


def test_allowed_cidrs_default_to_the_nodes():
    assert sample_settings().allowed_cidrs == ["10.0.20.21/32", "10.0.20.31/32", "10.0.20.32/32"]


def test_adding_an_upstream_is_one_entry():
    raw = sample_raw()
    raw["upstreams"] = [*UP, {"host": "gcr.io", "port": 5050, "container": "registry-gcr"}]
    settings = load_settings(raw)
    assert settings.upstreams[-1].resolved_server == "https://gcr.io"


@pytest.mark.parametrize(
    ("secrets", "key"),
    [
        ({}, "proxmoxApiToken"),
        ({"proxmoxApiToken": "not-a-token"}, "proxmoxApiToken"),
        (
            {
                "proxmoxApiToken": "a@pve!t=s3cr3t",
                "upstreamCredentials": {"dockerhub.io": {"username": "u", "password": "p"}},
            },
            "upstreamCredentials.dockerhub.io",
        ),
        (
            {
                "proxmoxApiToken": "a@pve!t=s3cr3t",
                "upstreamCredentials": {"docker.io": {"username": "u"}},
            },
            "upstreamCredentials.docker.io.password",
        ),
    ],
)
def test_bad_secrets_named_without_their_value(secrets: dict, key: str):
    with pytest.raises(SettingsError) as caught:
        load_secrets(secrets, sample_settings())
    assert any(line.startswith(f"{key}:") for line in caught.value.problems), caught.value.problems
    assert "s3cr3t" not in str(caught.value) and "not-a-token" not in str(caught.value)


def test_good_secrets():
    secrets = load_secrets(
        {
            "proxmoxApiToken": "pulumi@pve!registry=abc",
            "upstreamCredentials": {"docker.io": {"username": "u", "password": "p"}},
        },
        sample_settings(),
    )
    assert secrets.upstream_credentials["docker.io"].password.get_secret_value() == "p"
