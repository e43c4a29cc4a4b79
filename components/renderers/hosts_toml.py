"""containerd hosts.toml, one per registry: ``<config_path>/<host[:port]>/hosts.toml``.

Pure (tomlkit, no ``import pulumi``). Facts that shape the output (FIELD-NOTES, containerd
docs/hosts.md):
- Hosts are tried in order, then ``server``: our cache comes first, mirrors the node already had
  (carried over by the config.toml migration) after it, the upstream last.
- A mirror without ``http://`` is skipped, and a file with only ``server`` (no ``[host]`` table)
  is rejected ("invalid `host` tree") -- both silently bypass the cache. So every mirror carries
  its scheme and every file has at least one ``[host]`` table.
- ``capabilities = ["pull", "resolve"]``: a pull-through cache must never receive a push.
- ``dial_timeout`` exists from containerd 2.1 and 2.0.7; older versions do not know it, so it is
  only written when the node's version is known to support it. Without it a mirror that does
  not answer costs up to 30 s per request before the fallback (containerd #4861).
- Never ``_default``: it would send every registry to one upstream's cache.
- TLS settings (``ca``, ``client``, ``skip_verify``) only for ``https://`` hosts: on an
  ``http://`` host any of them makes containerd 1.7+ try HTTPS first on every connection
  (remotes/docker/config/hosts.go: "host will try HTTPS first since it is configured for HTTP
  with a TLS configuration"). The migration already drops them, and says so; this is the guard
  for a ``server`` the settings give as ``http://``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import tomlkit
from tomlkit.items import Table

from components.renderers.containerd_config import (
    NOT_A_REGISTRY,
    MigratedRegistry,
    TlsSettings,
    default_server,
    parse_containerd_version,
)
from components.settings import Settings

CAPABILITIES = ("pull", "resolve")
_URL = re.compile(r"^https?://[^\s/?#]+(/[^\s?#]*)?$")


@dataclass(frozen=True)
class HostEntry:
    """One ``[host."URL"]`` table: a mirror and the TLS settings for reaching it."""

    url: str
    tls: TlsSettings = field(default_factory=TlsSettings)


# containerd reads hosts.toml `dial_timeout` from 2.1.0, and from 2.0.7 in the 2.0 line (a
# backport; core/remotes/docker/config/hosts.go): every version from 2.0.7 on.
DIAL_TIMEOUT_SINCE = (2, 0, 7)


def supports_dial_timeout(containerd_version: str | None) -> bool:
    if containerd_version is None:
        return False  # unknown version: an unknown key is the safer omission
    return parse_containerd_version(containerd_version) >= DIAL_TIMEOUT_SINCE


def registry_dir_name(host: str) -> str:
    """The directory containerd looks up for a registry: its host[:port], exactly."""
    if (
        not host
        or host in {"_default", "*", ".", ".."}
        or "/" in host
        or "://" in host
        or any(c.isspace() for c in host)
        or not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", host)
    ):
        raise ValueError(f"not a registry host[:port] for a hosts.toml directory: {host!r}")
    return host


def _check_url(url: str, what: str) -> str:
    if not _URL.match(url):
        raise ValueError(
            f"{what} {url!r} needs http:// or https:// (containerd skips it otherwise)"
        )
    return url.rstrip("/")


def _tls_items(table: Table | tomlkit.TOMLDocument, tls: TlsSettings, url: str) -> None:
    if url.lower().startswith("http://"):
        return
    if tls.ca:
        table["ca"] = list(tls.ca)
    if tls.client:
        table["client"] = [[cert, key] for cert, key in tls.client]
    if tls.skip_verify is not None:
        table["skip_verify"] = tls.skip_verify


def render_hosts_toml(
    server: str,
    mirrors: Sequence[str | HostEntry],
    *,
    containerd_version: str | None = None,
    dial_timeout: str | None = "3s",
    ca: Sequence[str] = (),
    client: Sequence[tuple[str, str]] = (),
    skip_verify: bool | None = None,
) -> str:
    """One registry's hosts.toml: ``server`` as the last resort, ``mirrors`` tried in order.

    ``ca``/``client``/``skip_verify`` apply to ``server``. With no mirrors, ``server`` itself
    becomes the one ``[host]`` table (containerd rejects a file without any).
    """
    server = _check_url(server, "server")
    server_tls = TlsSettings(tuple(ca), tuple(client), skip_verify)
    entries = [m if isinstance(m, HostEntry) else HostEntry(m) for m in mirrors]
    if not entries:
        entries = [HostEntry(server, server_tls)]
    seen: set[str] = set()
    timeout = dial_timeout if dial_timeout and supports_dial_timeout(containerd_version) else None

    document = tomlkit.document()
    document["server"] = server
    _tls_items(document, server_tls, server)
    # A super table: only its children get headers, [host."http://..."].
    hosts = tomlkit.table(is_super_table=True)
    for entry in entries:
        url = _check_url(entry.url, "mirror")
        if url.lower() in seen:
            raise ValueError(f"mirror {url!r} is listed twice")
        seen.add(url.lower())
        host = tomlkit.table()
        host["capabilities"] = list(CAPABILITIES)
        _tls_items(host, entry.tls, url)
        if timeout:
            host["dial_timeout"] = timeout
        hosts.append(url, host)
    document.add(tomlkit.nl())
    document["host"] = hosts
    return document.as_string()


def _entries_of(migrated: MigratedRegistry | None, skip: set[str]) -> list[HostEntry]:
    if migrated is None:
        return []
    tls = dict(migrated.endpoint_tls)
    return [
        HostEntry(url, tls.get(url, TlsSettings()))
        for url in migrated.endpoints
        if url.rstrip("/").lower() not in skip
    ]


def render_node_hosts(
    settings: Settings,
    migrated: Sequence[MigratedRegistry] = (),
    containerd_version: str | None = None,
) -> dict[str, str]:
    """Every hosts.toml one node needs: directory name -> file text.

    One per upstream (our cache first, the node's own mirrors for that registry after it), plus
    one per registry the node had mirrors or TLS settings for that is not one of our upstreams.
    """
    # The migration drops them already; a list from elsewhere must not make them files either.
    by_host = {m.host.lower(): m for m in migrated if m.host not in NOT_A_REGISTRY}
    files: dict[str, str] = {}
    for upstream in settings.upstreams:
        ours = settings.endpoint(upstream)
        node = by_host.pop(upstream.host.lower(), None)
        mirrors = [HostEntry(ours), *_entries_of(node, {ours.lower()})]
        files[registry_dir_name(upstream.host)] = render_hosts_toml(
            upstream.resolved_server,
            mirrors,
            containerd_version=containerd_version,
            ca=node.ca if node else (),
            client=node.client if node else (),
            skip_verify=node.skip_verify if node else None,
        )
    for node in by_host.values():
        files[registry_dir_name(node.host)] = render_migrated_hosts(node, containerd_version)
    return files


def render_migrated_hosts(registry: MigratedRegistry, containerd_version: str | None = None) -> str:
    """hosts.toml for a registry the node had mirrors/TLS for, as the node had it (no cache)."""
    return render_hosts_toml(
        registry.server or default_server(registry.host),
        _entries_of(registry, set()),
        containerd_version=containerd_version,
        ca=registry.ca,
        client=registry.client,
        skip_verify=registry.skip_verify,
    )
