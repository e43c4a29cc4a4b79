"""What to change, decided on plain data: the mirrors and TLS settings a config.toml holds in
every TOML form (and which of them containerd never read), what is removed, what is carried over
to hosts.toml (:class:`MigratedRegistry`), and what the edited file must parse to.
Pure: no ``import pulumi``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import tomlkit

from components.renderers.containerd_config.versions import REGISTRY_PATHS, _lookup

DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"


_TLS_KEYS = ("ca_file", "cert_file", "key_file", "insecure_skip_verify")


# Keys of a node's old registry.mirrors that name no registry: 1.x's wildcard "*", and "_default",
# which as a certs.d directory is the hosts.toml of EVERY registry without its own (containerd
# docs/hosts.md). The migration drops both, saying so.
NOT_A_REGISTRY = frozenset({"*", "_default"})


@dataclass(frozen=True)
class TlsSettings:
    """TLS settings of one endpoint host, from ``registry.configs.<host>.tls``."""

    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    skip_verify: bool | None = None

    def __bool__(self) -> bool:
        return bool(self.ca or self.client or self.skip_verify is not None)


@dataclass(frozen=True)
class MigratedRegistry:
    """One registry whose mirrors/TLS settings were carried over (to become a hosts.toml).

    ``ca``/``client``/``skip_verify`` apply to the registry's own server (hosts.toml top level);
    ``endpoint_tls`` holds TLS settings of mirror endpoints, keyed by the endpoint URL, because
    1.x looked ``configs.<host>.tls`` up by the host of each endpoint it contacted.
    """

    host: str
    endpoints: tuple[str, ...] = ()
    server: str | None = None
    ca: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    skip_verify: bool | None = None
    endpoint_tls: tuple[tuple[str, TlsSettings], ...] = field(default=())

    @property
    def default_server(self) -> str:
        """The URL containerd contacts for this registry when no mirror answers."""
        return default_server(self.host)


def default_server(host: str) -> str:
    return DOCKER_HUB_SERVER if host == DOCKER_HUB else f"https://{host}"


# --- what to change (decided on plain data) ------------------------------------------------------


def _strip_scheme_host(url: str) -> str | None:
    match = re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]+)", url)
    return match[1].lower() if match else None


def _quoted(key: str) -> str:
    return tomlkit.key(key).as_string()


def _is_http(url: str | None) -> bool:
    return url is not None and url.lower().startswith("http://")


def _dropped_tls(host: str, url: str) -> str:
    return (
        f"dropped configs.{_quoted(host)}.tls for {url}: TLS settings mean nothing to plain "
        "HTTP (they never applied to it under `mirrors`) and would make containerd 1.7+ try "
        "HTTPS first on every connection"
    )


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/").lower() == b.rstrip("/").lower()


def _tls_of(config: Any) -> TlsSettings:
    tls = config.get("tls") if isinstance(config, dict) else None
    if not isinstance(tls, dict):
        return TlsSettings()
    ca = (tls["ca_file"],) if isinstance(tls.get("ca_file"), str) and tls["ca_file"] else ()
    cert, key = tls.get("cert_file"), tls.get("key_file")
    client = ((cert, key),) if isinstance(cert, str) and cert and isinstance(key, str) else ()
    skip = tls.get("insecure_skip_verify")
    return TlsSettings(ca=ca, client=client, skip_verify=skip if isinstance(skip, bool) else None)


@dataclass
class _Plan:
    removals: list[tuple[str, ...]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    migrated: list[MigratedRegistry] = field(default_factory=list)
    # The wildcard mirror ("*", or a "_default" key), as a registry named "_default": the
    # planner decides whether it is our cache (dropped) or a route of the node's own (carried to
    # _default/hosts.toml, issue 27).
    wildcard: MigratedRegistry | None = None


def _plan(plain: dict[str, Any], version: int) -> _Plan:
    plan = _Plan()
    active = REGISTRY_PATHS[version]
    for other_version, path in REGISTRY_PATHS.items():
        registry = _lookup(plain, path)
        if not isinstance(registry, dict):
            continue
        where = ".".join(_quoted(p) for p in path)
        if "mirrors" in registry:
            plan.removals.append((*path, "mirrors"))
            if path != active:
                # containerd never read these (wrong plugin name for this file version).
                plan.summary.append(
                    f"removed {where}.mirrors: ignored by containerd in a version {version} file "
                    f"(it is the version {other_version} layout), not carried over"
                )
        configs = registry.get("configs")
        if isinstance(configs, dict):
            for host, config in configs.items():
                if isinstance(config, dict) and "tls" in config:
                    only_tls = set(config) == {"tls"}
                    plan.removals.append(
                        (*path, "configs", host) if only_tls else (*path, "configs", host, "tls")
                    )
                    if path != active:
                        plan.summary.append(
                            f"removed {where}.configs.{_quoted(host)}.tls: ignored by "
                            f"containerd in a version {version} file, not carried over"
                        )
    registry = _lookup(plain, active)
    if isinstance(registry, dict):
        plan.migrated = _carry_over(registry, plan)
    return plan


def _carry_over(registry: dict[str, Any], plan: _Plan) -> list[MigratedRegistry]:
    mirrors = registry.get("mirrors")
    mirrors = mirrors if isinstance(mirrors, dict) else {}
    configs = registry.get("configs")
    configs = configs if isinstance(configs, dict) else {}
    tls_by_host = {host.lower(): _tls_of(cfg) for host, cfg in configs.items()}
    tls_by_host = {host: tls for host, tls in tls_by_host.items() if tls}
    used_tls: set[str] = set()  # hosts whose configs.<host>.tls some mirror or server used
    carried_tls: set[str] = set()  # ... and of those, the ones written to a hosts.toml
    result: list[MigratedRegistry] = []

    for host, mirror in mirrors.items():
        raw = mirror.get("endpoint", []) if isinstance(mirror, dict) else []
        raw = [e for e in raw if isinstance(e, str)] if isinstance(raw, list) else []
        if host in NOT_A_REGISTRY:
            # 1.x used "*" for every registry without its own entry, and a `_default` directory
            # is the hosts.toml of every such registry: carried over, either would send every
            # registry to one proxy. Our per-upstream hosts.toml replace them.
            what = "wildcard mirror" if host == "*" else "mirror"
            usable = [e.rstrip("/") for e in raw if _strip_scheme_host(e) is not None]
            tls = [
                (e, tls_by_host[h])
                for e in usable
                if not _is_http(e) and (h := _strip_scheme_host(e) or "") in tls_by_host
            ]
            plan.wildcard = MigratedRegistry(
                host="_default", endpoints=tuple(usable), endpoint_tls=tuple(tls)
            )
            plan.summary.append(
                f'dropped {what} "{host}" -> {", ".join(raw) or "(no endpoints)"}: '
                "not carried over (no _default); each upstream gets its own hosts.toml"
            )
            continue
        upstream = default_server(host)
        endpoints: list[str] = []
        server: str | None = None
        for position, endpoint in enumerate(raw):
            # The registry itself (any scheme: http://host is the old "insecure registry"
            # trick) is containerd's fallback `server`, not a mirror.
            if _strip_scheme_host(endpoint) in {_strip_scheme_host(upstream), host.lower()}:
                server = endpoint.rstrip("/")
                if position != len(raw) - 1:
                    plan.summary.append(
                        f"{host}: upstream {endpoint} was listed before other mirrors; "
                        "hosts.toml tries `server` last"
                    )
                continue
            if _strip_scheme_host(endpoint) is None:
                # containerd cannot use an endpoint without a scheme (it was skipped before too).
                plan.warnings.append(
                    f"{host}: dropped mirror endpoint {endpoint!r} (no http:// or https://)"
                )
                continue
            if not any(_same_url(endpoint, seen) for seen in endpoints):
                endpoints.append(endpoint.rstrip("/"))
        server_host = _strip_scheme_host(server or upstream) or host
        own_tls = tls_by_host.get(server_host, TlsSettings())
        if own_tls:
            used_tls.add(server_host)
            if _is_http(server):
                plan.summary.append(_dropped_tls(server_host, server or upstream))
                own_tls = TlsSettings()
            else:
                carried_tls.add(server_host)
        endpoint_tls = []
        for endpoint in endpoints:
            endpoint_host = _strip_scheme_host(endpoint) or ""
            if endpoint_host in tls_by_host:
                used_tls.add(endpoint_host)
                if _is_http(endpoint):
                    plan.summary.append(_dropped_tls(endpoint_host, endpoint))
                    continue
                endpoint_tls.append((endpoint, tls_by_host[endpoint_host]))
                carried_tls.add(endpoint_host)
        result.append(
            MigratedRegistry(
                host=host,
                endpoints=tuple(endpoints),
                server=server,
                ca=own_tls.ca,
                client=own_tls.client,
                skip_verify=own_tls.skip_verify,
                endpoint_tls=tuple(endpoint_tls),
            )
        )
        plan.summary.append(
            f"removed mirrors.{_quoted(host)}: carried over to {host}/hosts.toml "
            f"({', '.join(endpoints) or 'no mirror endpoints'})"
        )

    for host, config in configs.items():
        if not (isinstance(config, dict) and "tls" in config):
            continue
        tls = tls_by_host.get(host.lower())
        if host in NOT_A_REGISTRY:
            plan.summary.append(f'dropped configs."{host}".tls: not carried over (no _default)')
            continue
        kept = " (auth kept)" if "auth" in config else ""
        if tls and host.lower() not in used_tls:
            # 1.x applied configs.<host>.tls to requests to <host> itself: a registry of its own
            # (its server is https://<host>, where TLS settings mean something).
            result.append(
                MigratedRegistry(
                    host=host, ca=tls.ca, client=tls.client, skip_verify=tls.skip_verify
                )
            )
        elif host.lower() in used_tls and host.lower() not in carried_tls:
            plan.summary.append(
                f"removed configs.{_quoted(host)}.tls: not carried over, it applied only to "
                f"http:// hosts{kept}"
            )
            continue
        plan.summary.append(
            f"removed configs.{_quoted(host)}.tls: carried over to hosts.toml{kept}"
        )
    return result


def _pruned(data: dict[str, Any]) -> dict[str, Any]:
    result = {}
    for key, value in data.items():
        if isinstance(value, dict):
            value = _pruned(value)
            if not value:
                continue
        result[key] = value
    return result


def _expected(
    plain: dict[str, Any], plan: _Plan, path: tuple[str, ...], value: str | None
) -> dict[str, Any]:
    expected = copy.deepcopy(plain)
    for removal in plan.removals:
        parent = _lookup(expected, removal[:-1])
        if isinstance(parent, dict):
            parent.pop(removal[-1], None)
    if value is None:
        return expected
    node = expected
    for part in path:
        node = node.setdefault(part, {})
    node["config_path"] = value
    return expected
