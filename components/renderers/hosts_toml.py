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
- ``_default`` only for a wildcard mirror of the node's own (a corporate proxy): never for one
  upstream's cache, which would send every registry to it.
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
from components.renderers.tls import containerd_ca_file
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


def foreign_wildcard(
    settings: Settings, wildcard: MigratedRegistry | None
) -> tuple[tuple[HostEntry, ...], tuple[str, ...]]:
    """A node's wildcard mirror split into the endpoints that are a route of its own (a corporate
    proxy, a Nexus: carried) and those that point at our registry VM (dropped: each upstream gets
    its own cache)."""
    if wildcard is None:
        return (), ()
    vm = settings.cache_host.address.lower()
    foreign, ours = [], []
    for entry in _entries_of(wildcard, set()):
        host = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", entry.url).split("/")[0]
        (ours if host.rsplit(":", 1)[0].lower() == vm else foreign).append(entry)
    return tuple(foreign), tuple(entry.url for entry in ours)


def render_default_hosts(
    entries: Sequence[HostEntry], containerd_version: str | None = None
) -> str:
    """``_default/hosts.toml``: the hosts.toml of every registry WITHOUT a directory of its own
    (containerd looks for ``<host>`` first, then ``_default``). No ``server``: containerd then
    falls back to the registry the pull names, as the old wildcard mirror did."""
    if not entries:
        raise ValueError("_default/hosts.toml needs at least one mirror")
    timeout = "3s" if supports_dial_timeout(containerd_version) else None
    document = tomlkit.document()
    hosts = tomlkit.table(is_super_table=True)
    for entry in entries:
        url = _check_url(entry.url, "mirror")
        host = tomlkit.table()
        host["capabilities"] = list(CAPABILITIES)
        _tls_items(host, entry.tls, url)
        if timeout:
            host["dial_timeout"] = timeout
        hosts.append(url, host)
    document["host"] = hosts
    return document.as_string()


def render_node_hosts(
    settings: Settings,
    migrated: Sequence[MigratedRegistry] = (),
    containerd_version: str | None = None,
    wildcard: MigratedRegistry | None = None,
) -> dict[str, str]:
    """Every hosts.toml one node needs: directory name -> file text.

    One per upstream (our cache first, the node's own mirrors for that registry after it), plus
    one per registry the node had mirrors or TLS settings for that is not one of our upstreams.
    A ``wildcard`` mirror of the node's own (not our cache) becomes ``_default/hosts.toml`` (the
    registries without a directory of their own) and, as under ``mirrors`` where it applied to
    every registry without its own entry, comes after our cache for each upstream the node had
    no mirror of its own for.
    """
    # The migration drops them already; a list from elsewhere must not make them files either.
    by_host = {m.host.lower(): m for m in migrated if m.host not in NOT_A_REGISTRY}
    by_host.pop("_default", None)
    foreign, _ = foreign_wildcard(settings, wildcard)
    files: dict[str, str] = {}
    # TLS on: our cache over https, trusting exactly our CA (the file the hosts step writes).
    our_tls = TlsSettings(ca=(containerd_ca_file(settings),)) if settings.tls.enabled else None
    # Every endpoint of our caches, either scheme: only ours is kept, first. Our plain one kept
    # after our https:// host (carried over from the node's old config) would let whoever
    # answers for the VM's address serve the tags in plain text once the https:// host fails.
    all_ours = {
        url.lower()
        for u in settings.upstreams
        for url in (settings.plain_endpoint(u), settings.tls_endpoint(u))
    }
    for upstream in settings.upstreams:
        ours = settings.endpoint(upstream)
        node = by_host.pop(upstream.host.lower(), None)
        # The foreign wildcard names no address of the VM (foreign_wildcard drops those).
        own = _entries_of(node, all_ours) if node else list(foreign)
        mirrors = [HostEntry(ours, our_tls or TlsSettings()), *own]
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
    if foreign:
        files["_default"] = render_default_hosts(foreign, containerd_version)
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
