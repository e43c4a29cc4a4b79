"""Distribution config.yml for one pull-through cache, the container that runs it, and a schema
check for it, for each supported major version (2.x and 3.x).

Pure: plain values in, YAML text and plain values out (PyYAML ``safe_dump``), no ``import pulumi``.

One renderer; what differs between majors is DATA in ``DISTRIBUTIONS``: where the image reads its
config, the container's environment, the allowed keys and the keys a version ignores. Both majors
silently IGNORE unknown keys (``proxy.remoteurll`` yields a plain, empty, writable registry and no
error at all), so every rendered config is checked against the schema of its major
(``check_registry_config``) before it leaves this module.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from components.renderers import maintenance
from components.settings import RegistrySettings, Settings, Upstream

CONTAINER_DATA_DIR = "/var/lib/registry"
# Paths on the VM, one directory per upstream so GC and TTL cleanup of one cache never touch
# another cache's blobs. The same for every major: an image change keeps the cached data.
VM_CONFIG_ROOT = "/etc/docker-registry"
VM_DATA_ROOT = "/var/lib/registry"
# Where this container's config.yml is mounted; the maintenance script's one-off GC container
# mounts the config at the same path (scripts/vm/registry-maintenance.sh).
CONFIG_PATH_LABEL = "registry-mirrors.config-path"
# The registry listens inside its container on the upstream's port (config unchanged) and is
# published on the VM's loopback only: nodes reach it through the front.
BACKEND_HOST = "127.0.0.1"
ALL_ADDRESSES = "0.0.0.0"  # noqa: S104 (the metrics port is public on purpose: Prometheus)

CREDENTIAL_PLACEHOLDER = "<from secret upstreamCredentials.{host}.{field}>"

# On SIGTERM (every `docker stop`/`restart`: a memory restart, the GC's stop, a `pulumi up`
# that replaces the container, the VM shutting down) Distribution without `http.draintimeout`
# exits at once and cuts every blob transfer in flight: the node's pull fails. With it, both
# majors (registry/registry.go, v2.8.2 and v3.1.1 alike) close the listener at once, so a new
# connection is refused (containerd goes to the next host, the upstream, without waiting) and
# let the transfers in flight finish, exiting as soon as the last one does, at most after the
# drain (docs/measurements/drain-and-memory.md). 60 s, not Gardener's 25 s (bound to its pods'
# 30 s grace period): the drain only lasts while a transfer is in flight, and what a longer one
# buys is a bigger layer finished: 60 s covers ~750 MB at 100 Mbit/s, a cold layer streaming
# from the upstream at a homelab's downlink; what it costs is at most 60 s of the cache's
# requests going to the upstream, once per stop.
DRAIN_TIMEOUT_SECONDS = 60
# docker's SIGKILL comes this long after SIGTERM: the drain plus time to exit (the registry's
# own shutdown after the drain). The maintenance script's REGISTRY_STOP_TIMEOUT default is the
# same number (tests/test_registry_config.py keeps them equal).
STOP_TIMEOUT_SECONDS = DRAIN_TIMEOUT_SECONDS + 15

ANY_KEYS = "*"


@dataclass(frozen=True)
class Distribution:
    """What one major version of Distribution reads, and how its proxy behaves."""

    major: int
    # The official image's CMD names this file: a config mounted anywhere else is silently unused
    # and the container runs the image's example config (a plain registry, no proxy).
    config_path: str
    # The container's environment (plain values only: it ends up in docker inspect).
    env: Mapping[str, str]
    # Schema of the ``proxy`` section (see _SCHEMA for the notation).
    proxy_schema: Mapping[str, Any]
    # Keys this version does not read, with the reason: reported instead of "unknown key".
    ignored_keys: Mapping[str, str]
    # Upstream fetches per blob on a cache miss (the benchmark counts the bytes).
    upstream_fetches_per_miss: int
    # proxy.ttl rendered when registry.proxyTtl is unset (None: the version has no such key).
    default_proxy_ttl: str | None
    # What an unset proxyTtl means, for summary.json.
    default_proxy_ttl_text: str
    # Said once per stack (summary.json, pulumi up): what an operator should know.
    notes: tuple[str, ...] = ()


_PROXY_CREDENTIALS = {"remoteurl": str, "username": str, "password": str}
DISTRIBUTIONS: dict[int, Distribution] = {
    2: Distribution(
        major=2,
        config_path="/etc/docker/registry/config.yml",
        env={},
        proxy_schema=_PROXY_CREDENTIALS,
        ignored_keys={
            "proxy.ttl": "Distribution 2.x never reads it (168h is hard-coded)",
        },
        # registry/proxy/proxyblobstore.go ServeBlob: a storeLocal goroutine AND copyContent to
        # the client, each a full upstream fetch.
        upstream_fetches_per_miss=2,
        default_proxy_ttl=None,
        default_proxy_ttl_text="168h (hard-coded)",
        notes=(
            "Distribution 2.x fetches every blob from the upstream twice on a cache miss "
            "(proxyblobstore.go ServeBlob): a cold pull through the cache costs about twice a "
            "direct pull. registry:3.1.1 fetches once (README: Benchmarks).",
        ),
    ),
    3: Distribution(
        major=3,
        config_path="/etc/distribution/config.yml",
        # Tracing is always on in v3 and exports to localhost:4318, logging an error per batch
        # when nothing listens there. The official image sets this since July 2025; images built
        # before that (3.0.0) or elsewhere do not, so the container always gets it.
        env={"OTEL_TRACES_EXPORTER": "none"},
        proxy_schema={**_PROXY_CREDENTIALS, "ttl": str},
        ignored_keys={
            "reporting": "removed in Distribution 3 (bugsnag/newrelic reporting)",
            "compatibility": "removed in Distribution 3 (schema1 manifests)",
            "storage.oss": "removed in Distribution 3",
            "storage.swift": "removed in Distribution 3",
        },
        # v3.0.0 (distribution PR #3569): one upstream fetch through an io.MultiWriter.
        upstream_fetches_per_miss=1,
        # No expiry: the cache budget's eviction bounds the disk instead. Expiry deleted layers
        # that other repositories still linked (they could no longer be served offline), did not
        # move on a pull (distribution #4659: a base image used hourly is fetched again every
        # TTL), and freed nothing GC would not (docs/measurements/cache-disk.md). With ttl 0
        # proxyregistry.go starts no scheduler at all.
        default_proxy_ttl="0",
        default_proxy_ttl_text="0 (no expiry: the cache budget's eviction bounds the disk)",
    ),
}

# Refused for every major, with the reason (decided from evidence, see the README).
_REFUSED_KEYS = {
    "storage.cache": (
        "the in-memory blob descriptor cache stays off: after another repository's copy of a "
        "shared blob expires it still serves that blob (an empty body, pulls fail with "
        "'unexpected EOF' until a restart; distribution #2367, reproduced in "
        "tests/integration/test_distribution.py)"
    ),
}


def distribution(registry: RegistrySettings) -> Distribution:
    """The table row for the configured image's major version."""
    return DISTRIBUTIONS[registry.major]


class RegistryConfigError(ValueError):
    """A rendered config failed the schema check; one problem per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def vm_config_path(upstream: Upstream) -> str:
    return f"{VM_CONFIG_ROOT}/{upstream.container}/config.yml"


def vm_data_dir(upstream: Upstream) -> str:
    return f"{VM_DATA_ROOT}/{upstream.container}"


def registry_config(
    upstream: Upstream,
    registry: RegistrySettings,
    credentials: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """The config as a dict (checked). ``credentials`` = (username, password), plain strings."""
    proxy: dict[str, Any] = {"remoteurl": upstream.resolved_server}
    if credentials is not None:
        username, password = credentials
        proxy["username"] = username
        proxy["password"] = password
    ttl = (
        registry.proxy_ttl
        if registry.proxy_ttl is not None
        else distribution(registry).default_proxy_ttl
    )
    if ttl is not None:
        # Settings refuse proxyTtl for 2.x (it would be ignored); the schema below refuses it too.
        proxy["ttl"] = ttl
    config: dict[str, Any] = {
        "version": "0.1",
        "log": {
            # Access logs are emitted at info level: a higher level would hide every pull.
            "level": registry.log_level,
            "formatter": "text",
            "accesslog": {"disabled": False},
            "fields": {"service": "registry", "upstream": upstream.host},
        },
        "storage": {
            "filesystem": {"rootdirectory": CONTAINER_DATA_DIR},
            # No `cache` section: see _REFUSED_KEYS["storage.cache"].
            # The proxy's TTL cleanup only deletes with delete enabled; enabling it later leaks
            # every blob cached before, so it is on from the very first deploy.
            "delete": {"enabled": True},
        },
        "http": {
            "addr": f":{upstream.port}",
            "draintimeout": f"{DRAIN_TIMEOUT_SECONDS}s",
            "debug": {
                "addr": f":{upstream.resolved_metrics_port}",
                "prometheus": {"enabled": True, "path": "/metrics"},
            },
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
        "proxy": proxy,
    }
    problems = check_registry_config(config, registry.major)
    if problems:
        raise RegistryConfigError(problems)
    return config


def render_registry_config(
    upstream: Upstream,
    registry: RegistrySettings,
    credentials: tuple[str, str] | None = None,
) -> str:
    """config.yml text for one upstream's cache."""
    return dump_registry_config(registry_config(upstream, registry, credentials))


def dump_registry_config(config: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)


# --- the container ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerSpec:
    """Everything the cache's container needs, as plain values: the component turns it into
    ``docker.Container`` inputs one to one, so ``docker run`` with the same values is the same
    container (no step outside these inputs)."""

    name: str
    config_host_path: str
    config_container_path: str
    data_host_path: str
    data_container_path: str
    # (host address, host port, container port): the registry itself on the VM's loopback only
    # (the front, components/renderers/front_proxy.py, is what nodes reach), its metrics on
    # every address for Prometheus.
    published: tuple[tuple[str, int, int], ...]
    env: tuple[str, ...]  # KEY=value
    healthcheck: tuple[str, ...]
    labels: Mapping[str, str]
    # Seconds docker waits after SIGTERM before SIGKILL (`docker stop`, the daemon's own
    # shutdown) and before removing it on a replacement: longer than the drain.
    stop_timeout: int


def container_spec(upstream: Upstream, registry: RegistrySettings) -> ContainerSpec:
    dist = distribution(registry)
    return ContainerSpec(
        name=upstream.container,
        config_host_path=vm_config_path(upstream),
        config_container_path=dist.config_path,
        data_host_path=vm_data_dir(upstream),
        data_container_path=CONTAINER_DATA_DIR,
        published=(
            (BACKEND_HOST, upstream.resolved_backend_port, upstream.port),
            (ALL_ADDRESSES, upstream.resolved_metrics_port, upstream.resolved_metrics_port),
        ),
        env=tuple(f"{key}={value}" for key, value in sorted(dist.env.items())),
        # /v2/ is answered locally, without a round trip to the upstream. Both majors' official
        # images are Alpine-based, and busybox's wget takes -q -O (the images' own Dockerfiles run
        # wget in the same Alpine stage to fetch the binary). During a drain /v2/ refuses (the
        # listener is closed first) and the probe fails: harmless, docker outside Swarm only
        # marks a container unhealthy, it never stops or restarts it for that.
        healthcheck=(
            "CMD",
            "wget",
            "-q",
            "-O",
            "/dev/null",
            f"http://127.0.0.1:{upstream.port}/v2/",
        ),
        labels={CONFIG_PATH_LABEL: dist.config_path},
        stop_timeout=STOP_TIMEOUT_SECONDS,
    )


def registry_summary(registry: RegistrySettings) -> dict[str, Any]:
    """The registry part of summary.json: what runs, where it reads its config, what to know."""
    dist = distribution(registry)
    return {
        "image": registry.image,
        "distributionMajor": dist.major,
        "configPath": dist.config_path,
        "env": dict(dist.env),
        "proxyTtl": registry.proxy_ttl or dist.default_proxy_ttl_text,
        "blobDescriptorCache": "off",
        "upstreamFetchesPerMiss": dist.upstream_fetches_per_miss,
        "diskUsageThresholdPercent": registry.disk_usage_threshold_percent,
        "notes": list(dist.notes),
    }


# --- schema -------------------------------------------------------------------------------------
# A leaf is a type (or tuple of types); a dict is a section whose keys are the only ones allowed;
# ANY_KEYS allows free keys (header names, log fields). Only what this project renders, plus the
# few neighbours an operator could plausibly add; anything else is reported, not ignored. The
# ``proxy`` section comes from the major's row in DISTRIBUTIONS.
_SCHEMA: dict[str, Any] = {
    "version": str,
    "log": {
        "level": str,
        "formatter": str,
        "accesslog": {"disabled": bool},
        "fields": {ANY_KEYS: (str, int, bool)},
    },
    "storage": {
        "filesystem": {"rootdirectory": str, "maxthreads": int},
        "delete": {"enabled": bool},
        "redirect": {"disable": bool},
        "maintenance": {
            "uploadpurging": {"enabled": bool, "age": str, "interval": str, "dryrun": bool},
            "readonly": {"enabled": bool},
        },
    },
    "http": {
        "addr": str,
        "net": str,
        "host": str,
        "prefix": str,
        "secret": str,
        "relativeurls": bool,
        "draintimeout": str,
        "headers": {ANY_KEYS: list},
        "debug": {"addr": str, "prometheus": {"enabled": bool, "path": str}},
        "http2": {"disabled": bool},
    },
    "health": {
        "storagedriver": {"enabled": bool, "interval": str, "threshold": int},
    },
}
_REQUIRED = (("version",), ("storage", "filesystem", "rootdirectory"), ("http", "addr"))
_LOG_LEVELS = {"error", "warn", "info", "debug"}
_ADDR = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.-]*):\d{1,5}$")
_REMOTE_URL = re.compile(r"^https?://[^\s/]+$")


def check_registry_config(data: Any, major: int) -> list[str]:
    """Problems with a config dict for Distribution ``major``, one line each (empty list: fine).

    Catches unknown keys and wrong types, which Distribution itself accepts silently.
    """
    if not isinstance(data, Mapping):
        return ["(top level): expected a mapping"]
    dist = DISTRIBUTIONS[major]
    schema = {**_SCHEMA, "proxy": dist.proxy_schema}
    refused = {**_REFUSED_KEYS, **dist.ignored_keys}
    problems = _check_section(data, schema, "", refused)
    for path in _REQUIRED:
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            problems.append(f"{'.'.join(path)}: required key is missing")
    problems += _check_values(data)
    return problems


def _check_section(
    data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str, refused: Mapping[str, str]
) -> list[str]:
    problems = []
    for key, value in data.items():
        where = f"{prefix}{key}"
        expected = schema.get(key, schema.get(ANY_KEYS))
        if where in refused:
            problems.append(f"{where}: {refused[where]}")
        elif expected is None:
            problems.append(f"{where}: unknown key (Distribution would silently ignore it)")
        elif isinstance(expected, dict):
            if isinstance(value, Mapping):
                problems += _check_section(value, expected, f"{where}.", refused)
            else:
                problems.append(f"{where}: expected a mapping (got {type(value).__name__})")
        elif isinstance(value, bool) and bool not in _as_tuple(expected):
            problems.append(f"{where}: expected {_type_names(expected)} (got bool)")
        elif not isinstance(value, expected):
            problems.append(
                f"{where}: expected {_type_names(expected)} (got {type(value).__name__})"
            )
    return problems


def _check_values(data: Mapping[str, Any]) -> list[str]:
    problems = []
    if data.get("version") not in (None, "0.1"):
        problems.append(f"version: expected '0.1' (got {data.get('version')!r})")
    log = data.get("log")
    if isinstance(log, Mapping) and log.get("level") not in (None, *_LOG_LEVELS):
        problems.append(f"log.level: expected one of {sorted(_LOG_LEVELS)} (got {log['level']!r})")
    http = data.get("http")
    if isinstance(http, Mapping):
        for where, addr in (
            ("http.addr", http.get("addr")),
            ("http.debug.addr", (http.get("debug") or {}).get("addr")),
        ):
            if isinstance(addr, str) and not _ADDR.match(addr):
                problems.append(f"{where}: expected [HOST]:PORT (got {addr!r})")
    proxy = data.get("proxy")
    if isinstance(proxy, Mapping):
        url = proxy.get("remoteurl")
        if url is None:
            problems.append("proxy.remoteurl: required in a proxy section")
        elif isinstance(url, str) and not _REMOTE_URL.match(url):
            # Distribution proxies the root of one registry, never a path below it.
            problems.append(f"proxy.remoteurl: expected the root URL of a registry (got {url!r})")
        if ("username" in proxy) != ("password" in proxy):
            problems.append("proxy: username and password go together")
    return problems


def _as_tuple(expected: Any) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _type_names(expected: Any) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(expected))


# --- files for scripts/render.py ----------------------------------------------------------------
def render_registry_files(
    settings: Settings, credential_hosts: Collection[str] = ()
) -> dict[str, str]:
    """What the stack puts on the VM, for review: relative path -> text.

    Credentials are never real: an upstream in ``credential_hosts`` shows a placeholder instead.
    """
    files: dict[str, str] = {}
    for upstream in settings.upstreams:
        credentials = None
        if upstream.host in credential_hosts:
            credentials = (
                CREDENTIAL_PLACEHOLDER.format(host=upstream.host, field="username"),
                CREDENTIAL_PLACEHOLDER.format(host=upstream.host, field="password"),
            )
        files[f"registries/{upstream.container}/config.yml"] = render_registry_config(
            upstream, settings.registry, credentials
        )
    files["registries/maintenance.cron"] = maintenance.render_cron(settings)
    files["registries/registry-maintenance.sh"] = maintenance.script_text()
    return files
