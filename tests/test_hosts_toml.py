"""hosts.toml renderer: parsed back, structure asserted (order, capabilities, no _default)."""

from __future__ import annotations

import tomllib

import pytest

from components.renderers.containerd_config import MigratedRegistry, TlsSettings
from components.renderers.hosts_toml import (
    HostEntry,
    registry_dir_name,
    render_hosts_toml,
    render_node_hosts,
)
from components.settings import Settings, load_settings
from tests.sample import sample_raw, sample_settings


def _hosts(text: str) -> list[str]:
    return list(tomllib.loads(text)["host"])


def _plain_settings() -> Settings:
    raw = sample_raw()
    raw["tls"] = {"enabled": False}
    return load_settings(raw)


def test_one_file_per_upstream_with_our_cache_first_and_upstream_as_server() -> None:
    settings = _plain_settings()
    files = render_node_hosts(settings)
    assert set(files) == {u.host for u in settings.upstreams}
    assert "_default" not in files
    hub = tomllib.loads(files["docker.io"])
    assert hub["server"] == "https://registry-1.docker.io"
    assert list(hub["host"]) == ["http://10.0.20.10:5000"]
    assert hub["host"]["http://10.0.20.10:5000"]["capabilities"] == ["pull", "resolve"]
    ghcr = tomllib.loads(files["ghcr.io"])
    assert ghcr["server"] == "https://ghcr.io"
    assert list(ghcr["host"]) == ["http://10.0.20.10:5010"]


def test_never_push_and_every_mirror_has_a_scheme() -> None:
    for text in render_node_hosts(sample_settings()).values():
        for url, host in tomllib.loads(text)["host"].items():
            assert url.startswith(("http://", "https://"))
            assert "push" not in host["capabilities"]


def test_migrated_mirrors_come_after_ours_in_their_order_with_tls() -> None:
    corp_tls = TlsSettings(ca=("/etc/ca.pem",), client=(("/c.pem", "/k.pem"),))
    migrated = [
        MigratedRegistry(
            host="docker.io",
            endpoints=("https://mirror.corp:5443", "http://10.0.20.10:5000", "http://b:1"),
            endpoint_tls=(("https://mirror.corp:5443", corp_tls),),
        ),
        MigratedRegistry(host="harbor.corp", skip_verify=True),
        MigratedRegistry(host="myreg:5000", server="http://myreg:5000"),
    ]
    files = render_node_hosts(_plain_settings(), migrated)
    hub = tomllib.loads(files["docker.io"])
    # ours first, the node's own after it, our own endpoint not repeated
    assert list(hub["host"]) == ["http://10.0.20.10:5000", "https://mirror.corp:5443", "http://b:1"]
    assert hub["host"]["https://mirror.corp:5443"]["ca"] == ["/etc/ca.pem"]
    assert hub["host"]["https://mirror.corp:5443"]["client"] == [["/c.pem", "/k.pem"]]
    # a registry that is not one of our upstreams gets its own file, never _default
    harbor = tomllib.loads(files["harbor.corp"])
    assert harbor["server"] == "https://harbor.corp"
    assert harbor["skip_verify"] is True
    assert list(harbor["host"]) == ["https://harbor.corp"]  # at least one [host] table
    myreg = tomllib.loads(files["myreg:5000"])
    assert myreg["server"] == "http://myreg:5000"
    assert list(myreg["host"]) == ["http://myreg:5000"]
    assert "_default" not in files


def test_wildcard_migrated_entry_never_becomes_a_file() -> None:
    files = render_node_hosts(
        sample_settings(), [MigratedRegistry(host="*", endpoints=("http://x:1",))]
    )
    assert "*" not in files and "_default" not in files


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        (None, False),
        ("1.6.20~ds1", False),
        ("1.7.27", False),
        ("2.0.5", False),
        ("2.0.6", False),
        # Backported to the 2.0 line in 2.0.7 (core/remotes/docker/config/hosts.go).
        ("2.0.7", True),
        ("v2.0.8", True),
        ("2.1.0", True),
        ("v2.2.1", True),
        ("2.3.7", True),
    ],
)
def test_dial_timeout_for_containerd_2_0_7_and_later(version: str | None, expected: bool) -> None:
    text = render_hosts_toml(
        "https://ghcr.io", ["http://10.0.20.10:5010"], containerd_version=version
    )
    host = tomllib.loads(text)["host"]["http://10.0.20.10:5010"]
    assert ("dial_timeout" in host) is expected
    if expected:
        assert host["dial_timeout"] == "3s"


def test_dial_timeout_can_be_turned_off() -> None:
    text = render_hosts_toml(
        "https://ghcr.io", ["http://m:1"], containerd_version="2.1.0", dial_timeout=None
    )
    assert "dial_timeout" not in text


def test_server_only_file_still_gets_a_host_table() -> None:
    data = tomllib.loads(
        render_hosts_toml("https://r.example", [], ca=["/ca.pem"], skip_verify=False)
    )
    assert data["server"] == "https://r.example"
    assert data["ca"] == ["/ca.pem"]
    assert data["host"]["https://r.example"]["ca"] == ["/ca.pem"]
    assert data["host"]["https://r.example"]["skip_verify"] is False


def test_tls_settings_are_never_written_for_http_hosts() -> None:
    # containerd 1.7+ would try HTTPS first on every connection to such a host.
    text = render_hosts_toml(
        "http://r.example:5000",
        [HostEntry("http://m:1", TlsSettings(skip_verify=True)),
         HostEntry("https://m:2", TlsSettings(ca=("/ca.pem",)))],
        skip_verify=True,
        ca=["/ca.pem"],
    )  # fmt: skip
    data = tomllib.loads(text)
    assert "skip_verify" not in data and "ca" not in data
    assert data["host"]["http://m:1"] == {"capabilities": ["pull", "resolve"]}
    assert data["host"]["https://m:2"]["ca"] == ["/ca.pem"]


def test_host_entries_keep_order() -> None:
    mirrors = ["http://c:1", HostEntry("http://a:1"), "https://b:2/prefix"]
    assert _hosts(render_hosts_toml("https://r.example", mirrors)) == [
        "http://c:1",
        "http://a:1",
        "https://b:2/prefix",
    ]


@pytest.mark.parametrize("bad", ["10.0.20.10:5000", "ftp://x", "http://", "http://a b"])
def test_mirror_without_http_scheme_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        render_hosts_toml("https://r.example", [bad])


def test_duplicate_mirror_is_rejected() -> None:
    with pytest.raises(ValueError, match="twice"):
        render_hosts_toml("https://r.example", ["http://a:1", "http://a:1/"])


@pytest.mark.parametrize("good", ["docker.io", "myreg:5000", "10.0.0.1:5000", "[::1]:5000"])
def test_registry_dir_name_accepts_hosts(good: str) -> None:
    assert registry_dir_name(good) == good


@pytest.mark.parametrize("bad", ["", "_default", "*", "..", "a/b", "http://a", "a b"])
def test_registry_dir_name_rejects_non_hosts(bad: str) -> None:
    with pytest.raises(ValueError, match="not a registry host"):
        registry_dir_name(bad)


def test_with_tls_our_cache_is_https_trusting_exactly_our_ca_and_our_plain_port_is_gone() -> None:
    """TLS on (the default): our cache is ``https://IP:tlsPort`` with ``ca`` = the file the hosts
    step writes, no skip_verify; any other endpoint on the VM's address (our plain port, carried
    over from the node's old config) is dropped: after a failed https:// host it would let
    whoever answers for the VM's address serve the tags in plain text."""
    migrated = [
        MigratedRegistry(
            host="docker.io",
            endpoints=("http://10.0.20.10:5000", "https://mirror.corp:5443"),
        )
    ]
    files = render_node_hosts(sample_settings(), migrated)
    hub = tomllib.loads(files["docker.io"])
    assert list(hub["host"]) == ["https://10.0.20.10:5002", "https://mirror.corp:5443"]
    ours = hub["host"]["https://10.0.20.10:5002"]
    assert ours["ca"] == ["/etc/containerd/certs.d/registry-mirrors-ca.pem"]
    assert "skip_verify" not in ours
    for text in files.values():
        assert "skip_verify" not in text


def test_a_foreign_wildcard_becomes_default_and_follows_our_cache() -> None:
    """A wildcard mirror of the node's own (not on the registry VM) is carried: _default/hosts.toml
    (no server: the registry the pull names is the fallback) and, after our cache, in each
    upstream's file the node had no mirror of its own for. One on the VM's address is ours:
    dropped."""
    settings = sample_settings()
    nexus = "https://nexus.corp.example:8443"
    wildcard = MigratedRegistry(
        host="_default",
        endpoints=(nexus, f"http://{settings.cache_host.address}:5000"),
        endpoint_tls=((nexus, TlsSettings(ca=("/etc/ssl/corp.pem",))),),
    )
    own_ghcr = MigratedRegistry(host="ghcr.io", endpoints=("http://ghcr-mirror.example",))
    files = render_node_hosts(settings, [own_ghcr], "2.1.9", wildcard)
    default = tomllib.loads(files["_default"])
    assert "server" not in default
    corp = {"capabilities": ["pull", "resolve"], "ca": ["/etc/ssl/corp.pem"], "dial_timeout": "3s"}
    assert default["host"] == {nexus: corp}
    docker = tomllib.loads(files["docker.io"])
    assert list(docker["host"]) == [settings.endpoint(settings.upstreams[0]), nexus]
    # ghcr.io had a mirror of its own: under `mirrors` the wildcard never applied to it.
    assert nexus not in tomllib.loads(files["ghcr.io"])["host"]
    ours_only = MigratedRegistry(
        host="_default", endpoints=(f"http://{settings.cache_host.address}:5000",)
    )
    assert "_default" not in render_node_hosts(settings, [], "2.1.9", ours_only)
