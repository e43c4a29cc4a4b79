"""The Distribution config renderer and its schema check (pure; the real binary runs these configs
in tests/integration/test_distribution.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from components.renderers.registry_config import (
    RegistryConfigError,
    check_registry_config,
    registry_config,
    render_registry_config,
    render_registry_files,
)
from components.settings import DEFAULT_UPSTREAMS, RegistrySettings, Upstream
from tests.sample import sample_settings


@pytest.mark.parametrize("upstream", DEFAULT_UPSTREAMS, ids=lambda u: u.host)
def test_rendered_config_per_upstream(upstream: Upstream) -> None:
    config = yaml.safe_load(render_registry_config(upstream, RegistrySettings()))
    assert config["storage"] == {
        "filesystem": {"rootdirectory": "/var/lib/registry"},
        "cache": {"blobdescriptor": "inmemory"},
        "delete": {"enabled": True},
    }
    assert config["http"]["addr"] == f":{upstream.port}"
    assert config["http"]["debug"] == {
        "addr": f":{upstream.port + 1}",
        "prometheus": {"enabled": True, "path": "/metrics"},
    }
    assert config["proxy"] == {"remoteurl": upstream.resolved_server}
    assert config["log"]["level"] == "info"
    assert config["log"]["accesslog"] == {"disabled": False}
    assert check_registry_config(config) == []


def test_docker_hub_is_proxied_from_registry_1() -> None:
    config = registry_config(DEFAULT_UPSTREAMS[0], RegistrySettings())
    assert config["proxy"]["remoteurl"] == "https://registry-1.docker.io"


def test_metrics_port_and_server_overrides() -> None:
    upstream = Upstream(
        host="harbor.lan:8443", port=5100, container="registry-harbor", metrics_port=9100,
        server="https://harbor.lan:8443/",
    )  # fmt: skip
    config = registry_config(upstream, RegistrySettings(log_level="debug"))
    assert config["http"]["debug"]["addr"] == ":9100"
    assert config["proxy"]["remoteurl"] == "https://harbor.lan:8443"
    assert config["log"]["level"] == "debug"


def test_credentials_only_where_given() -> None:
    with_creds = registry_config(DEFAULT_UPSTREAMS[0], RegistrySettings(), ("bot", "s3cret"))
    assert with_creds["proxy"]["username"] == "bot"
    assert with_creds["proxy"]["password"] == "s3cret"
    without = registry_config(DEFAULT_UPSTREAMS[1], RegistrySettings())
    assert "username" not in without["proxy"] and "password" not in without["proxy"]


def _valid() -> dict:
    return registry_config(DEFAULT_UPSTREAMS[0], RegistrySettings(), ("bot", "s3cret"))


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda c: c["proxy"].__setitem__("remoteurll", c["proxy"].pop("remoteurl")),
            "proxy.remoteurll: unknown key",
        ),
        (lambda c: c["proxy"].__setitem__("ttl", "24h"), "proxy.ttl: unknown key"),
        (lambda c: c["storage"]["delete"].__setitem__("enabled", "yes"), "storage.delete.enabled"),
        (lambda c: c["http"].__setitem__("addr", 5000), "http.addr: expected str"),
        (lambda c: c["http"]["debug"].__setitem__("addr", "localhost"), "http.debug.addr"),
        (lambda c: c["proxy"].pop("password"), "proxy: username and password go together"),
        (lambda c: c["proxy"].__setitem__("remoteurl", "https://ghcr.io/org"), "root URL"),
        (lambda c: c["log"].__setitem__("level", "verbose"), "log.level"),
        (lambda c: c["storage"]["cache"].__setitem__("blobdescriptor", "redis"), "inmemory"),
        (lambda c: c.pop("version"), "version: required key is missing"),
        (lambda c: c.__setitem__("storage", "filesystem"), "storage: expected a mapping"),
        (lambda c: c["storage"].__setitem__("filesytem", {}), "storage.filesytem: unknown key"),
    ],
)
def test_schema_reports_what_distribution_would_silently_accept(mutate, problem: str) -> None:
    config = copy.deepcopy(_valid())
    mutate(config)
    problems = check_registry_config(config)
    assert any(problem in line for line in problems), problems


def test_renderer_refuses_a_config_that_fails_the_schema() -> None:
    bad = Upstream.model_construct(host="x.io", port=5000, container="r", server="ftp://x.io")
    with pytest.raises(RegistryConfigError, match=r"proxy.remoteurl"):
        render_registry_config(bad, RegistrySettings())


def test_render_files_for_review_never_hold_secrets() -> None:
    settings = sample_settings()
    files = render_registry_files(settings, credential_hosts={"docker.io"})
    assert set(files) == {
        *(f"registries/{u.container}/config.yml" for u in settings.upstreams),
        "registries/maintenance.cron",
        "registries/registry-maintenance.sh",
    }
    hub = yaml.safe_load(files["registries/registry/config.yml"])
    assert hub["proxy"]["password"] == "<from secret upstreamCredentials.docker.io.password>"
    ghcr = yaml.safe_load(files["registries/registry-ghcr/config.yml"])
    assert "password" not in ghcr["proxy"]
    assert files["registries/registry-maintenance.sh"].startswith("#!/usr/bin/env bash")
    # Callable as scripts/render.py does: settings only.
    assert "password" not in render_registry_files(settings)["registries/registry/config.yml"]
