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
from tests.sample import TEST_KEY, sample_raw, sample_settings


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
    ("ssh-key", {"vm.sshPublicKeys": ["not a key"]}, "vm.sshPublicKeys[0]", "TYPE BASE64"),
    (
        # Cut short when pasted: the same check as a pinned host key, naming the list item.
        "ssh-key-cut",
        {"vm.sshPublicKeys": [TEST_KEY, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ"]},
        "vm.sshPublicKeys[1]",
        "cut short when pasted",
    ),
    ("no-ssh-keys", {"vm.sshPublicKeys": []}, "vm.sshPublicKeys", "at least 1"),
    ("dns-not-ip", {"vm.dnsServers": ["dns.lan"]}, "vm.dnsServers", "IP"),
    ("vm-typo", {"vm.adress": "10.0.20.10/24"}, "vm.adress", "unknown key"),
    ("top-level-typo", {"upstream": []}, "upstream", "unknown key"),
    (
        "missing-vm",
        {"vm": _DELETE},
        "vm",
        "vm: required with proxmox (or replace proxmox with host",
    ),
    ("missing-node-name", {"vm.proxmoxNode": _DELETE}, "vm.proxmoxNode", "required"),
    ("endpoint-http", {"proxmox.endpoint": "http://pve:8006"}, "proxmox.endpoint", "https://"),
    ("port-range", {"upstreams": [{**UP[0], "port": 70000}]}, "upstreams[0].port", "65535"),
    (
        "port-inf",
        {"upstreams": [{**UP[0], "port": float("inf")}]},
        "upstreams[0].port",
        "finite number",
    ),
    (
        "port-nan",
        {"upstreams": [{**UP[0], "port": float("nan")}]},
        "upstreams[0].port",
        "finite number",
    ),
    (
        "port-huge",
        {"upstreams": [{**UP[0], "metricsPort": 10**30}]},
        "upstreams[0].metricsPort",
        "65535",
    ),
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
    # Cron fields: range-checked per field (cron would read 60 as 0 or refuse the line).
    ("gc-day-8", {"registry.gc.dayOfWeek": "8"}, "registry.gc.dayOfWeek", "out of range 0-7"),
    ("gc-day-8-int", {"registry.gc.dayOfWeek": 8}, "registry.gc.dayOfWeek", "out of range 0-7"),
    ("gc-minute-60", {"registry.gc.minute": 60}, "registry.gc.minute", "out of range 0-59"),
    ("gc-hour-24", {"registry.gc.hour": "24"}, "registry.gc.hour", "out of range 0-23"),
    ("gc-hour-negative", {"registry.gc.hour": -1}, "registry.gc.hour", "cron field"),
    ("gc-day-name", {"registry.gc.dayOfWeek": "someday"}, "registry.gc.dayOfWeek", "cron field"),
    ("gc-day-prefix", {"registry.gc.dayOfWeek": "sunflower"}, "registry.gc.dayOfWeek", "cron"),
    ("gc-bool", {"registry.gc.minute": True}, "registry.gc.minute", "string"),
    ("gc-float", {"registry.gc.minute": 1.5}, "registry.gc.minute", "string"),
    ("gc-list", {"registry.gc.hour": [1, 2]}, "registry.gc.hour", "string"),
    ("gc-empty", {"registry.gc.minute": ""}, "registry.gc.minute", "cron field"),
    ("restart-minute-60", {"registry.restart.minute": "60"}, "registry.restart.minute", "0-59"),
    ("restart-hour-25", {"registry.restart.hour": "25"}, "registry.restart.hour", "0-23"),
    ("restart-hour-range", {"registry.restart.hour": "1-25"}, "registry.restart.hour", "0-23"),
    ("restart-hour-list", {"registry.restart.hour": "1,2,99"}, "registry.restart.hour", "0-23"),
    ("restart-backwards", {"registry.restart.hour": "5-2"}, "registry.restart.hour", "backwards"),
    ("restart-step-0", {"registry.restart.hour": "*/0"}, "registry.restart.hour", "step"),
    ("restart-step-big", {"registry.restart.hour": "*/24"}, "registry.restart.hour", "step"),
    ("restart-step-bare", {"registry.restart.hour": "3/2"}, "registry.restart.hour", "step"),
    ("restart-day-9", {"registry.restart.dayOfWeek": "1-9"}, "registry.restart.dayOfWeek", "0-7"),
    ("restart-junk", {"registry.restart.minute": "7 * * *"}, "registry.restart.minute", "cron"),
    (
        "stagger-60",
        {"registry.restart.staggerMinutes": 60},
        "registry.restart.staggerMinutes",
        "59",
    ),
    # Values that were not validated at all.
    ("endpoint-port", {"proxmox.endpoint": "https://pve:80060/"}, "proxmox.endpoint", "1-65535"),
    ("endpoint-port-0", {"proxmox.endpoint": "https://pve:0/"}, "proxmox.endpoint", "1-65535"),
    ("endpoint-port-text", {"proxmox.endpoint": "https://pve:x/"}, "proxmox.endpoint", "1-65535"),
    (
        "endpoint-bad-ip",
        {"proxmox.endpoint": "https://10.0.0.300:8006/"},
        "proxmox.endpoint",
        "IPv4",
    ),
    ("endpoint-user", {"proxmox.endpoint": "https://root@pve:8006/"}, "proxmox.endpoint", "https"),
    ("endpoint-path", {"proxmox.endpoint": "https://pve:8006/api2/json"}, "proxmox.endpoint", "/"),
    (
        "node-address-300",
        {"proxmox.ssh": {"nodeAddress": "10.0.0.300"}},
        "proxmox.ssh.nodeAddress",
        "IPv4",
    ),
    (
        "node-address-3-parts",
        {"proxmox.ssh": {"nodeAddress": "10.0.1"}},
        "proxmox.ssh.nodeAddress",
        "IPv4",
    ),
    (
        "node-address-space",
        {"proxmox.ssh": {"nodeAddress": "pve 1"}},
        "proxmox.ssh.nodeAddress",
        "hostname",
    ),
    ("pve-ssh-realm", {"proxmox.ssh": {"username": "root@pam"}}, "proxmox.ssh.username", "'@"),
    (
        "pve-ssh-user",
        {"proxmox.ssh": {"username": "Root User"}},
        "proxmox.ssh.username",
        "user name",
    ),
    (
        "node-user-at-host",
        {"nodes.0.sshUser": "root@10.0.20.21"},
        "nodes[0].sshUser",
        "nodes[].address",
    ),
    ("node-user-upper", {"nodes.1.sshUser": "Admin"}, "nodes[1].sshUser", "user name"),
    ("vm-user-at-host", {"vm.sshUser": "debian@registry"}, "vm.sshUser", "vm.address"),
    (
        "known-hosts-line",
        {"nodes.0.sshHostPublicKey": f"10.0.20.21 {TEST_KEY}"},
        "nodes[0].sshHostPublicKey",
        "drop the leading host name 10.0.20.21",
    ),
    (
        "known-hosts-port",
        {"vm.sshHostPublicKey": f"[10.0.20.10]:2222 {TEST_KEY}"},
        "vm.sshHostPublicKey",
        "known_hosts",
    ),
    (
        "known-hosts-hashed",
        {"vm.sshHostPublicKey": f"|1|abc=|def= {TEST_KEY}"},
        "vm.sshHostPublicKey",
        "known_hosts",
    ),
    ("host-key-cut", {"vm.sshHostPublicKey": TEST_KEY[:60]}, "vm.sshHostPublicKey", "whole"),
    ("host-key-type", {"vm.sshHostPublicKey": "ed25519 AAAA"}, "vm.sshHostPublicKey", "TYPE"),
    (
        "host-key-only-b64",
        {"nodes.2.sshHostPublicKey": TEST_KEY.split()[1]},
        "nodes[2].sshHostPublicKey",
        "TYPE",
    ),
    (
        "host-key-wrong-type",
        {"vm.sshHostPublicKey": "ssh-rsa " + TEST_KEY.split()[1]},
        "vm.sshHostPublicKey",
        "whole ssh-rsa",
    ),
    (
        "host-key-two-lines",
        {"vm.sshHostPublicKey": f"{TEST_KEY}\n{TEST_KEY}"},
        "vm.sshHostPublicKey",
        "one line",
    ),
    ("restart-empty", {"nodes.0.restartCommand": ""}, "nodes[0].restartCommand", "empty"),
    ("restart-blank", {"nodes.1.restartCommand": "   "}, "nodes[1].restartCommand", "empty"),
    # The front's ports: HTTPS (port + 2) and the registry behind it (port + 10000).
    (
        "tls-port-clash",
        {"upstreams": [UP[0], {**UP[1], "port": 5002}], "tls": {"enabled": True}},
        "upstreams[1].port",
        "upstreams[0].tlsPort",
    ),
    (
        "backend-port-clash",
        {"upstreams": [UP[0], {**UP[1], "port": 15000}]},
        "upstreams[1].port",
        "upstreams[0].backendPort",
    ),
    (
        "backend-default-out-of-range",
        {"upstreams": [{**UP[0], "port": 60000}]},
        "upstreams[0].backendPort",
        "default port+10000",
    ),
    ("tls-typo", {"tls": {"enable": False}}, "tls.enable", "did you mean enabled"),
    (
        "tls-renew-after-expiry",
        {"tls": {"certificateDays": 30, "renewBeforeDays": 30}},
        "tls",
        "must be below certificateDays",
    ),
    ("tls-previous-ca-1", {"tls": {"trustPreviousCa": True}}, "tls", "caGeneration 2"),
    ("tls-dns-name", {"tls": {"dnsNames": ["not a name"]}}, "tls.dnsNames[0]", "hostname"),
    ("front-store-small", {"front": {"storageMb": 32}}, "front.storageMb", "64"),
    ("role", {"nodes.0.role": "master"}, "nodes[0].role", "control-plane"),
    ("health-blank", {"nodes.0.healthCommand": " "}, "nodes[0].healthCommand", "empty"),
    (
        "health-timeout",
        {"containerd.healthTimeoutSeconds": 5},
        "containerd.healthTimeoutSeconds",
        "10",
    ),
    # Unknown keys name the closest known key.
    ("typo-hint", {"vm.adress": "10.0.20.10/24"}, "vm.adress", "did you mean address"),
    ("typo-hint-gc", {"registry.gc.dayofweek": 1}, "registry.gc.dayofweek", "dayOfWeek"),
    ("typo-hint-top", {"node": []}, "node", "did you mean nodes"),
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


@pytest.mark.parametrize(
    ("gc", "restart", "expected"),
    [
        # What a person writes: YAML ints, day names, 7 for Sunday, ranges and steps.
        ({"minute": 30, "hour": 2, "dayOfWeek": 6}, {}, ("30", "2", "6", "7", "*", "*")),
        ({"dayOfWeek": "sat"}, {"minute": 0}, ("0", "3", "6", "0", "*", "*")),
        ({"dayOfWeek": 7, "hour": 23}, {"hour": "*/2"}, ("0", "23", "7", "7", "*/2", "*")),
        ({"dayOfWeek": "*"}, {"dayOfWeek": "Mon-Fri"}, ("0", "3", "*", "7", "*", "1-5")),
        ({"dayOfWeek": "Saturday"}, {"dayOfWeek": "sun,wed"}, ("0", "3", "6", "7", "*", "0,3")),
        ({"minute": " 15 "}, {"hour": "0-6,18-23"}, ("15", "3", "0", "7", "0-6,18-23", "*")),
    ],
)
def test_cron_fields_accept_what_a_person_writes(gc: dict, restart: dict, expected: tuple):
    raw = sample_raw()
    raw["registry"] = {"gc": gc, "restart": restart}
    registry = load_settings(raw).registry
    fields = (registry.gc, registry.restart)
    assert tuple(getattr(s, f) for s in fields for f in ("minute", "hour", "day_of_week")) == (
        expected
    )
    assert (registry.gc.stagger_minutes, registry.restart.stagger_minutes) == (20, 5)


def test_sunday_7_is_the_same_gc_slot_as_sunday_0():
    from components.settings.schedule import gc_jobs

    def jobs(day: int) -> list:
        raw = sample_raw()
        raw["registry"] = {"gc": {"dayOfWeek": day}}
        return gc_jobs(load_settings(raw))

    assert jobs(7) == jobs(0)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("proxmox.endpoint", "https://[fd00::1]:8006/"),
        ("proxmox.endpoint", "https://pve.lan/"),
        ("proxmox.ssh", {"nodeAddress": "10.0.20.2", "username": "pulumi-ssh"}),
        ("proxmox.ssh", {"nodeAddress": "pve1.lan"}),
        ("proxmox.ssh", {"nodeAddress": "fd00::2"}),
        ("nodes.0.sshHostPublicKey", TEST_KEY),
        ("nodes.0.sshHostPublicKey", TEST_KEY.rsplit(" ", 1)[0]),
        ("nodes.0.sshUser", "ops_user"),
        ("nodes.0.restartCommand", "rc-service containerd restart"),
    ],
)
def test_good_values_of_the_newly_checked_keys(path: str, value: Any):
    raw = sample_raw()
    _set(raw, path, value)
    load_settings(raw)


SECRET = "hunter2-s3cr3t"
# (id, changes, key named): a secret under a key it does not belong to, or a secret-sounding key.
SECRET_PLACES = [
    ("top-level", {"password": SECRET}, "password"),
    ("vm", {"vm.password": SECRET}, "vm.password"),
    ("upstream", {"upstreams": [{**UP[0], "password": SECRET}]}, "upstreams[0].password"),
    ("upstream-token", {"upstreams": [{**UP[0], "token": SECRET}]}, "upstreams[0].token"),
    ("node", {"nodes.0.sshPassword": SECRET}, "nodes[0].sshPassword"),
    ("proxmox", {"proxmox.apiToken": SECRET}, "proxmox.apiToken"),
    ("proxmox-ssh", {"proxmox.ssh": {"privateKey": SECRET}}, "proxmox.ssh.privateKey"),
    ("registry", {"registry": {"secret": SECRET}}, "registry.secret"),
    ("containerd", {"containerd": {"auth": SECRET}}, "containerd.auth"),
    ("gc", {"registry": {"gc": {"apikey": SECRET}}}, "registry.gc.apikey"),
    ("int-secret", {"vm.pin": 123456789}, "vm.pin"),
    ("unknown-under-list", {"nodes.1.credentials": {"password": SECRET}}, "nodes[1].credentials"),
]


@pytest.mark.parametrize(
    ("changes", "key"), [c[1:] for c in SECRET_PLACES], ids=[c[0] for c in SECRET_PLACES]
)
def test_a_value_under_an_unknown_key_is_never_echoed(changes: dict, key: str):
    raw = sample_raw()
    for path, value in changes.items():
        _set(raw, path, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    assert any(line.startswith(f"{key}: unknown key") for line in caught.value.problems)
    assert SECRET not in str(caught.value) and "123456789" not in str(caught.value)


# (id, changes, key named, text in its line): a password in a URL's user-info, refused.
URL_CREDENTIALS = [
    (
        "endpoint",
        {"proxmox.endpoint": f"https://root:{SECRET}@pve.lan:8006/"},
        "proxmox.endpoint",
        "credentials do not belong in the URL",
    ),
    (
        # The password runs past SHOWN_LENGTH: cutting alone would still show most of it.
        "endpoint-long",
        {"proxmox.endpoint": f"https://root:{SECRET * 5}@pve.lan:8006/"},
        "proxmox.endpoint",
        "proxmoxApiToken",
    ),
    (
        "cloud-image",
        {"vm.templateVmId": _DELETE, "vm.cloudImage": {"url": f"https://u:{SECRET}@img.lan"}},
        "vm.cloudImage.url",
        "'https://***@img.lan'",
    ),
    (
        "upstream-server",
        {"upstreams": [{**UP[0], "server": f"https://u:{SECRET}@ghcr.io/v2"}]},
        "upstreams[0].server",
        "'https://***@ghcr.io/v2'",
    ),
    (
        # Valid otherwise: refused for the password, which would land in hosts.toml and outputs.
        "upstream-server-root",
        {"upstreams": [{**UP[0], "server": f"https://u:{SECRET}@ghcr.io"}]},
        "upstreams[0].server",
        "upstreamCredentials",
    ),
]


@pytest.mark.parametrize(
    ("changes", "key", "text"),
    [c[1:] for c in URL_CREDENTIALS],
    ids=[c[0] for c in URL_CREDENTIALS],
)
def test_a_password_in_a_url_is_never_echoed(changes: dict, key: str, text: str):
    raw = sample_raw()
    for path, value in changes.items():
        _set(raw, path, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    matching = [line for line in caught.value.problems if line.startswith(f"{key}:")]
    assert any(text in line for line in matching), caught.value.problems
    assert SECRET[:6] not in str(caught.value)


def test_echoed_values_are_cut_and_on_one_line():
    raw = sample_raw()
    _set(raw, "vm.address", "10.0.20.10/24" + "9" * 5_000_000)
    _set(raw, "vm.name", "two\nlines")
    _set(raw, "nodes.0.address", "x" * 1000)
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    for line in caught.value.problems:
        assert "\n" not in line and len(line) < 300, line[:300]
    assert any(
        line.startswith("vm.name:") and "'two\\nlines'" in line for line in caught.value.problems
    )


def test_the_value_of_a_secret_named_key_is_never_echoed():
    """No settings key has a secret-sounding name today; the rule must hold for the next one."""
    from pydantic import ValidationError

    from components.settings.checks import _Model
    from components.settings.errors import _format_error

    class Future(_Model):
        upstream_password: int
        ca_key_file: int
        ssh_public_keys: int

    with pytest.raises(ValidationError) as caught:
        Future.model_validate(
            {"upstreamPassword": SECRET, "caKeyFile": SECRET, "sshPublicKeys": "public-x"}
        )
    lines = _format_error(caught.value)
    assert [line.split(":")[0] for line in lines] == [
        "upstreamPassword",
        "caKeyFile",
        "sshPublicKeys",
    ]
    assert SECRET not in str(lines)
    assert "public-x" in lines[2]  # public key material stays visible: it helps and is public


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
    # TLS on by default: the front's HTTPS port; the plain one still exists (the switch).
    assert settings.endpoint(docker_hub) == "https://10.0.20.10:5002"
    assert settings.plain_endpoint(docker_hub) == "http://10.0.20.10:5000"
    assert (docker_hub.resolved_tls_port, docker_hub.resolved_backend_port) == (5002, 15000)


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
