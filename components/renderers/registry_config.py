"""Distribution (registry 2.8) config.yml for one pull-through cache, and a schema check for it.

Pure: plain values in, YAML text out (PyYAML ``safe_dump``), no ``import pulumi``.

Distribution 2.8 silently IGNORES unknown keys: ``proxy.remoteurll`` yields a plain, empty,
writable registry and no error at all. So every rendered config is checked against an explicit
schema of the keys we allow (``check_registry_config``) before it leaves this module.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any

import yaml

from components.renderers import maintenance
from components.settings import RegistrySettings, Settings, Upstream

# Paths inside the registry container (the image's defaults; the component mounts host dirs here).
CONTAINER_CONFIG_PATH = "/etc/docker/registry/config.yml"
CONTAINER_DATA_DIR = "/var/lib/registry"
# Paths on the VM, one directory per upstream so GC and TTL cleanup of one cache never touch
# another cache's blobs.
VM_CONFIG_ROOT = "/etc/docker-registry"
VM_DATA_ROOT = "/var/lib/registry"

CREDENTIAL_PLACEHOLDER = "<from secret upstreamCredentials.{host}.{field}>"


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
            "cache": {"blobdescriptor": "inmemory"},
            # The proxy's TTL cleanup only deletes with delete enabled; enabling it later leaks
            # every blob cached before, so it is on from the very first deploy.
            "delete": {"enabled": True},
        },
        "http": {
            "addr": f":{upstream.port}",
            "debug": {
                "addr": f":{upstream.resolved_metrics_port}",
                "prometheus": {"enabled": True, "path": "/metrics"},
            },
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
        "proxy": proxy,
    }
    problems = check_registry_config(config)
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


# --- schema -------------------------------------------------------------------------------------
# A leaf is a type (or tuple of types); a dict is a section whose keys are the only ones allowed;
# ANY_KEYS allows free keys (header names, log fields). Only what this project renders, plus the
# few neighbours an operator could plausibly add; anything else is reported, not ignored.
ANY_KEYS = "*"
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
        "cache": {"blobdescriptor": str},
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
    "proxy": {"remoteurl": str, "username": str, "password": str},
}
_REQUIRED = (("version",), ("storage", "filesystem", "rootdirectory"), ("http", "addr"))
_LOG_LEVELS = {"error", "warn", "info", "debug"}
_ADDR = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[0-9A-Za-z.-]*):\d{1,5}$")
_REMOTE_URL = re.compile(r"^https?://[^\s/]+$")


def check_registry_config(data: Any) -> list[str]:
    """Problems with a Distribution 2.8 config dict, one line each (empty list: fine).

    Catches unknown keys and wrong types, which Distribution itself accepts silently.
    """
    if not isinstance(data, Mapping):
        return ["(top level): expected a mapping"]
    problems = _check_section(data, _SCHEMA, "")
    for path in _REQUIRED:
        node: Any = data
        for key in path:
            node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            problems.append(f"{'.'.join(path)}: required key is missing")
    problems += _check_values(data)
    return problems


def _check_section(data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str) -> list[str]:
    problems = []
    for key, value in data.items():
        where = f"{prefix}{key}"
        expected = schema.get(key, schema.get(ANY_KEYS))
        if expected is None:
            problems.append(f"{where}: unknown key (Distribution would silently ignore it)")
        elif isinstance(expected, dict):
            if isinstance(value, Mapping):
                problems += _check_section(value, expected, f"{where}.")
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
    storage = data.get("storage")
    if isinstance(storage, Mapping):
        cache = storage.get("cache")
        if isinstance(cache, Mapping) and cache.get("blobdescriptor") not in (None, "inmemory"):
            # redis would need a redis section this project never renders.
            problems.append(
                "storage.cache.blobdescriptor: expected 'inmemory' "
                f"(got {cache['blobdescriptor']!r})"
            )
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
