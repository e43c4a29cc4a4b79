"""The Distribution config renderer and its schema check, for every supported major (pure; the
real binaries run these configs in tests/integration/test_distribution.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from components.renderers.registry_config import (
    CONFIG_PATH_LABEL,
    DISTRIBUTIONS,
    DRAIN_TIMEOUT_SECONDS,
    STOP_TIMEOUT_SECONDS,
    RegistryConfigError,
    check_registry_config,
    container_spec,
    registry_config,
    registry_summary,
    render_registry_config,
    render_registry_files,
)
from components.settings import (
    DEFAULT_UPSTREAMS,
    REGISTRY_MAJORS,
    RegistrySettings,
    SettingsError,
    Upstream,
    load_settings,
)
from tests.sample import REGISTRY_IMAGES as IMAGES
from tests.sample import sample_raw, sample_settings

# One image per supported major: everything below runs for both (the table of differences is
# registry_config.DISTRIBUTIONS; the real binaries run these configs in test_distribution.py).
MAJORS = pytest.mark.parametrize("major", sorted(IMAGES), ids=lambda m: f"v{m}")


def _registry(major: int, **fields: Any) -> RegistrySettings:
    return RegistrySettings(image=IMAGES[major], **fields)


def test_every_supported_major_has_a_row_and_the_default_image_is_distribution_3() -> None:
    assert sorted(DISTRIBUTIONS) == sorted(IMAGES) == list(REGISTRY_MAJORS)
    assert RegistrySettings().image == "registry:3.1.1"
    assert RegistrySettings().major == 3


@MAJORS
@pytest.mark.parametrize("upstream", DEFAULT_UPSTREAMS, ids=lambda u: u.host)
def test_rendered_config_per_upstream(upstream: Upstream, major: int) -> None:
    config = yaml.safe_load(render_registry_config(upstream, _registry(major)))
    # No blob descriptor cache (see test_the_blob_descriptor_cache_is_refused_with_the_reason).
    assert config["storage"] == {
        "filesystem": {"rootdirectory": "/var/lib/registry"},
        "delete": {"enabled": True},
    }
    assert config["http"]["addr"] == f":{upstream.port}"
    # Both majors drain on SIGTERM (test_distribution.py restarts a cache mid-pull).
    assert config["http"]["draintimeout"] == f"{DRAIN_TIMEOUT_SECONDS}s"
    assert config["http"]["debug"] == {
        "addr": f":{upstream.port + 1}",
        "prometheus": {"enabled": True, "path": "/metrics"},
    }
    # 3.x: no expiry by default (the cache budget bounds the disk); 2.x has no such key.
    ttl = {"ttl": "0"} if major == 3 else {}
    assert config["proxy"] == {"remoteurl": upstream.resolved_server, **ttl}
    assert config["log"]["level"] == "info"
    assert config["log"]["accesslog"] == {"disabled": False}
    assert check_registry_config(config, major) == []


def test_proxy_ttl_is_rendered_for_distribution_3() -> None:
    config = registry_config(DEFAULT_UPSTREAMS[1], _registry(3, proxy_ttl="72h"))
    assert config["proxy"] == {"remoteurl": "https://ghcr.io", "ttl": "72h"}
    # Unset: 0, no expiry. TTL expiry deleted layers other repositories still linked and did
    # not move on a pull (docs/measurements/cache-disk.md); the budget's eviction bounds the disk.
    assert registry_config(DEFAULT_UPSTREAMS[1], _registry(3))["proxy"]["ttl"] == "0"
    assert registry_summary(_registry(3))["proxyTtl"].startswith("0 (no expiry")
    assert registry_summary(_registry(2))["proxyTtl"] == "168h (hard-coded)"


def test_proxy_ttl_on_distribution_2_is_refused_by_settings_and_by_the_schema() -> None:
    raw = sample_raw()
    raw["registry"] = {"image": "registry:2.8.3", "proxyTtl": "24h"}
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    [line] = error.value.problems
    assert line.startswith("registry.proxyTtl: Distribution 2.x (registry:2.8.3) ignores")
    assert "registry:3" in line
    # Past the settings (model_construct skips validation): the renderer refuses it too.
    registry = RegistrySettings.model_construct(
        **{**RegistrySettings().model_dump(), "image": "registry:2.8.3", "proxy_ttl": "24h"}
    )
    with pytest.raises(RegistryConfigError, match=r"proxy.ttl: Distribution 2.x never reads it"):
        registry_config(DEFAULT_UPSTREAMS[0], registry)


@pytest.mark.parametrize(
    ("ttl", "accepted"),
    [("0", True), ("90m", True), ("1h30m", True), ("168h", True), ("7d", False), ("1 h", False),
     ("-1h", False), ("h", False)],
)  # fmt: skip
def test_proxy_ttl_is_a_go_duration(ttl: str, accepted: bool) -> None:
    raw = sample_raw()
    raw["registry"] = {"proxyTtl": ttl}
    if accepted:
        assert load_settings(raw).registry.proxy_ttl == ttl
        return
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    [line] = error.value.problems
    assert line.startswith("registry.proxyTtl: expected a Go duration"), line


@pytest.mark.parametrize(
    ("image", "major"),
    [
        ("registry:3.1.1", 3),
        ("registry:2.8.3", 2),
        ("registry:3.1.1@sha256:" + "a" * 64, 3),
        ("registry:2", 2),
        ("mirror.lan:5000/library/registry:v3.0.0", 3),
    ],
)
def test_major_version_comes_from_the_image_tag(image: str, major: int) -> None:
    assert RegistrySettings(image=image).major == major


@pytest.mark.parametrize(
    ("image", "fix"),
    [
        ("registry@sha256:" + "a" * 64, "write its version tag before the digest"),
        ("mirror.lan:5000/registry", "expected a pinned image reference"),
        ("registry:stable", "tag 'stable' is not a Distribution version"),
        ("registry:4.0.0", "Distribution 4.x is not supported"),
    ],
)
def test_an_image_without_a_usable_version_is_refused_with_the_fix(image: str, fix: str) -> None:
    raw = sample_raw()
    raw["registry"] = {"image": image}
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    [line] = error.value.problems
    assert line.startswith("registry.image: ") and fix in line, line


@pytest.mark.parametrize(
    ("image", "fix"),
    [
        ("r" * 5000 + "@sha256:" + "a" * 64, "write its version tag before the digest"),
        ("r" * 5000 + ":stable", "is not a Distribution version"),
    ],
    ids=["digest-only", "long-name"],
)
def test_an_image_refusal_echoes_its_name_cut(image: str, fix: str) -> None:
    """An error line shows a value cut to SHOWN_LENGTH, the image reference too: the line
    names the key and the fix, not 5000 characters of a pasted value."""
    raw = sample_raw()
    raw["registry"] = {"image": image}
    with pytest.raises(SettingsError) as error:
        load_settings(raw)
    [line] = error.value.problems
    assert line.startswith("registry.image: ") and fix in line, line
    assert len(line) < 400, len(line)


@MAJORS
def test_container_reads_the_config_where_its_major_looks_for_it(major: int) -> None:
    upstream = DEFAULT_UPSTREAMS[1]
    spec = container_spec(upstream, _registry(major))
    expected_path = {2: "/etc/docker/registry/config.yml", 3: "/etc/distribution/config.yml"}
    assert spec.config_container_path == expected_path[major]
    assert spec.labels == {CONFIG_PATH_LABEL: expected_path[major]}
    # v3 exports traces to localhost:4318 unless told not to; 2.x has no tracing.
    assert spec.env == {2: (), 3: ("OTEL_TRACES_EXPORTER=none",)}[major]
    # The same host paths for every major: changing the image keeps the cached data.
    assert (spec.config_host_path, spec.data_host_path) == (
        "/etc/docker-registry/registry-ghcr/config.yml",
        "/var/lib/registry/registry-ghcr",
    )
    assert spec.data_container_path == "/var/lib/registry"
    # The registry on the VM's loopback only (the front forwards to it), its metrics public.
    assert spec.published == (("127.0.0.1", 15010, 5010), ("0.0.0.0", 5011, 5011))
    assert spec.healthcheck[-1] == "http://127.0.0.1:5010/v2/"
    assert spec.stop_timeout == STOP_TIMEOUT_SECONDS


def test_docker_kills_a_cache_only_after_its_drain() -> None:
    """The SIGKILL of every stop comes after the drain: the container's StopTimeout (daemon
    shutdown, replacement) and the maintenance script's default `--time` (hourly restart, GC)."""
    from components.renderers import maintenance

    assert STOP_TIMEOUT_SECONDS > DRAIN_TIMEOUT_SECONDS
    script = maintenance.script_text()
    assert f"stop_timeout=${{REGISTRY_STOP_TIMEOUT:-{STOP_TIMEOUT_SECONDS}}}" in script


@MAJORS
def test_summary_says_what_runs_and_warns_about_2x_cold_pulls(major: int) -> None:
    summary = registry_summary(_registry(major))
    assert summary["distributionMajor"] == major
    assert summary["blobDescriptorCache"] == "off"
    assert summary["upstreamFetchesPerMiss"] == {2: 2, 3: 1}[major]
    notes = " ".join(summary["notes"])
    assert ("twice" in notes) == (major == 2)


def _valid(major: int) -> dict:
    return registry_config(DEFAULT_UPSTREAMS[0], _registry(major), ("bot", "s3cret"))


@MAJORS
@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (
            lambda c: c["proxy"].__setitem__("remoteurll", c["proxy"].pop("remoteurl")),
            "proxy.remoteurll: unknown key",
        ),
        (lambda c: c["storage"]["delete"].__setitem__("enabled", "yes"), "storage.delete.enabled"),
        (lambda c: c["http"].__setitem__("addr", 5000), "http.addr: expected str"),
        (lambda c: c["http"]["debug"].__setitem__("addr", "localhost"), "http.debug.addr"),
        (lambda c: c["proxy"].pop("password"), "proxy: username and password go together"),
        (lambda c: c["proxy"].__setitem__("remoteurl", "https://ghcr.io/org"), "root URL"),
        (lambda c: c["log"].__setitem__("level", "verbose"), "log.level"),
        (lambda c: c.pop("version"), "version: required key is missing"),
        (lambda c: c.__setitem__("storage", "filesystem"), "storage: expected a mapping"),
        (lambda c: c["storage"].__setitem__("filesytem", {}), "storage.filesytem: unknown key"),
    ],
)
def test_schema_reports_what_distribution_would_silently_accept(
    mutate, problem: str, major: int
) -> None:
    config = copy.deepcopy(_valid(major))
    mutate(config)
    problems = check_registry_config(config, major)
    assert any(problem in line for line in problems), problems


@pytest.mark.parametrize(
    ("major", "mutate", "problem"),
    [
        (2, lambda c: c["proxy"].__setitem__("ttl", "24h"), "proxy.ttl: Distribution 2.x never"),
        (3, lambda c: c.__setitem__("reporting", {}), "reporting: removed in Distribution 3"),
        (
            3,
            lambda c: c.__setitem__("compatibility", {}),
            "compatibility: removed in Distribution 3",
        ),
        (3, lambda c: c["storage"].__setitem__("swift", {}), "storage.swift: removed"),
        (3, lambda c: c["proxy"].__setitem__("ttl", 24), "proxy.ttl: expected str"),
    ],
)
def test_schema_knows_what_each_major_ignores(major: int, mutate, problem: str) -> None:
    config = copy.deepcopy(_valid(major))
    mutate(config)
    problems = check_registry_config(config, major)
    assert any(line.startswith(problem) for line in problems), problems


@MAJORS
def test_the_blob_descriptor_cache_is_refused_with_the_reason(major: int) -> None:
    config = copy.deepcopy(_valid(major))
    config["storage"]["cache"] = {"blobdescriptor": "inmemory"}
    [problem] = check_registry_config(config, major)
    assert problem.startswith("storage.cache: the in-memory blob descriptor cache stays off")
    assert "#2367" in problem


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
