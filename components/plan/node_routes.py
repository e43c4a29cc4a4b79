"""Routes of a previous ``config_path`` carried into the one directory the program uses (issue 27,
item 5): the node's ``<dir>/<host>/`` directories (hosts.toml, CA files, client certificates) that
containerd read before, copied on the node into ``containerd.configPath``, or the node refused with
one line saying why. Never silently dropped.

What containerd read before (``core/remotes/docker/config/hosts.go``, the CRI plugin's
``hostDirFromRoots``): ``config_path`` is a list of roots (``:``-separated); for a registry
``host[:port]`` each root in turn is asked for ``host_port_/``, ``host:port/``, then ``_default/``,
and the first directory that exists is the registry's, whatever the later roots hold. In it,
``hosts.toml`` (relative ``ca``/``client`` paths are relative to that directory), or without one
Docker's layout: ``*.crt`` CA files, ``*.cert``/``*.key`` client pairs. containerd 2.2+ with no
``config_path`` and no ``mirrors`` uses ``/etc/containerd/certs.d:/etc/docker/certs.d``
(``plugins/cri/images/plugin.go``).

How they are carried: every regular file of such a directory is copied, on the node, into
``<configPath>/<same name>/`` by hosts.sh (``CARRY``: the source, the name and a digest of the
files probe.sh read, refused if it changed since); a relative path inside the directory resolves
in the copy as it did in the original, an absolute one still names the original file, which is
never touched. The content never leaves the node (client keys). Refused, naming the directory:
a ``_default`` (it would stand in for every registry without a directory of its own, ours
included: not done), a registry this program caches (merge it by hand), a name already in
``configPath`` that is not ours, a relative ``ca``/``client`` path that leaves its directory.

Pure: no ``import pulumi``.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components.plan.node_probe import ProbeResult
from components.renderers.containerd_config import REGISTRY_PATHS, parse_containerd_version
from components.renderers.containerd_config.versions import _file_version, _lookup, _parse
from components.settings import Settings

# containerd 2.2+: config_path when the file sets neither config_path nor mirrors.
DEFAULT_CONFIG_PATH_SINCE = (2, 2, 0)
DEFAULT_ROOTS = "/etc/containerd/certs.d:/etc/docker/certs.d"
_PORT_FORM = re.compile(r"^(?P<host>.+)_(?P<port>[0-9]+)_$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*(:[0-9]+)?$")


class RoutesError(ValueError):
    """A previous config_path directory that cannot be carried: one line, naming it."""


@dataclass(frozen=True)
class CarriedDir:
    """One directory copied into configPath: ``source`` (``<root>/<name>``), ``name``, the digest
    of its files as probe.sh read them (hosts.sh refuses a source that changed since)."""

    source: str
    name: str
    digest: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class CarriedRoutes:
    previous: str | None  # the config_path containerd used before ("" / None: none)
    dirs: tuple[CarriedDir, ...]
    summary: tuple[str, ...]


def _config_path_of(text: str) -> tuple[str | None, bool]:
    """(config_path, has mirrors) of one config file, in its own version's layout."""
    plain, _ = _parse(text)
    if not plain:
        return None, False
    path = REGISTRY_PATHS[_file_version(plain, text)]
    value = _lookup(plain, (*path, "config_path"))
    mirrors = _lookup(plain, (*path, "mirrors"))
    return (value if isinstance(value, str) else None), bool(mirrors)


def previous_config_path(probe: ProbeResult) -> str | None:
    """The config_path the node's containerd used before the program first changed it: from the
    saved originals (config.toml and its drop-ins, a later file winning), else the files as they
    are; containerd 2.2+'s default when none sets it and none has mirrors."""

    def before(text: str, saved: bool, original: str | None) -> str:
        return (original or "") if saved else text

    texts = [before(probe.config_text, probe.original_saved, probe.original_text)]
    texts += [
        before(d.text, d.original_saved, d.original_text) for d in probe.dropins
    ]  # fmt: skip
    value: str | None = None
    mirrors = False
    for text in texts:
        path, has_mirrors = _config_path_of(text)
        value = path if path else value
        mirrors = mirrors or has_mirrors
    if value:
        return value
    version = probe.containerd_version
    if version and not mirrors and parse_containerd_version(version) >= DEFAULT_CONFIG_PATH_SINCE:
        return DEFAULT_ROOTS
    return None


def _key(name: str) -> str:
    """The registry a directory name stands for (``host_port_`` is containerd's ``host:port``)."""
    match = _PORT_FORM.match(name)
    return f"{match['host']}:{match['port']}" if match else name


def _candidates(key: str) -> list[str]:
    host, sep, port = key.rpartition(":")
    alt = [f"{host}_{port}_"] if sep and port.isdigit() else []
    return [*alt, key, "_default"]


def _effective(roots: Sequence[str], listing: dict[str, set[str]]) -> dict[str, tuple[str, str]]:
    """registry key -> (root, directory name) containerd picked for it; ``_default`` too."""
    keys = {_key(name) for root in roots for name in listing.get(root, set())}
    chosen: dict[str, tuple[str, str]] = {}
    for key in keys | {"_default"}:
        for root in roots:
            names = listing.get(root, set())
            found = next((n for n in _candidates(key) if n in names), None)
            if found is not None:
                chosen[key] = (root, found)
                break
    return chosen


def _paths_in(hosts: dict[str, Any]) -> list[tuple[str, str]]:
    """(key, path) of every ca/client path in a hosts.toml, top level and per host."""
    tables = [hosts, *[t for t in (hosts.get("host") or {}).values() if isinstance(t, dict)]]
    found: list[tuple[str, str]] = []
    for table in tables:
        for key in ("ca", "client"):
            value = table.get(key)
            items = value if isinstance(value, list) else [value]
            for item in items:
                for path in item if isinstance(item, list) else [item]:
                    if isinstance(path, str):
                        found.append((key, path))
    return found


def plan_routes(
    settings: Settings, probe: ProbeResult, where: str, rendered: Sequence[str]
) -> CarriedRoutes:
    """What to carry from the previous config_path into ``containerd.configPath``; RoutesError
    (one line) for a directory that cannot be. ``rendered``: the hosts.toml directories the
    program writes anyway (ours, the node's carried mirrors)."""
    ours = settings.containerd.config_path
    previous = previous_config_path(probe)
    if not previous:
        return CarriedRoutes(previous, (), ())
    roots = [posixpath.normpath(root) for root in previous.split(":") if root]
    listing: dict[str, set[str]] = {}
    for entry in probe.previous_dirs:
        root, name = posixpath.split(entry.path)
        listing.setdefault(root, set()).add(name)
    missing = [r for r in roots if r != ours and r not in probe.previous_roots]
    if missing:
        raise RoutesError(
            f"{where}: config_path was {previous!r} but probe.sh did not read {missing[0]} "
            "(write config_path as a plain string), so its routes cannot be carried; nothing "
            "was changed"
        )
    upstreams = {upstream.host.lower() for upstream in settings.upstreams}
    taken = {name.lower() for name in rendered}
    by_path = {entry.path: entry for entry in probe.previous_dirs}
    dirs: list[CarriedDir] = []
    for key, (root, name) in sorted(_effective(roots, listing).items()):
        if root == ours:
            continue  # already where containerd will read it
        source = f"{root}/{name}"
        entry = by_path[source]
        if name == "_default":
            raise RoutesError(
                f"{where}: {source} was the route of every registry without a directory of its "
                f"own (config_path {previous!r}); carrying a _default into {ours} is not done: "
                f"move its hosts into per-registry directories, or into {ours}/_default by hand "
                "(then the program leaves it alone); nothing was changed"
            )
        if key.lower() in upstreams:
            raise RoutesError(
                f"{where}: {source} configures {key}, which this program caches: merge it into "
                "the node's own mirrors (or remove it), then run again; nothing was changed"
            )
        if name.lower() in taken or (
            name in probe.config_path_dirs and name not in probe.managed_dirs
        ):
            raise RoutesError(
                f"{where}: {source} and {ours}/{name} both configure {key}; containerd read "
                f"{source} (config_path {previous!r}): merge them into one, then run again; "
                "nothing was changed"
            )
        bad = [f for f in entry.files if not f or any(c.isspace() for c in f)]
        if not _NAME.match(name) or bad or any(c.isspace() for c in source):
            raise RoutesError(
                f"{where}: {source}: names with spaces cannot be carried; nothing was changed"
            )
        if entry.hosts_toml is not None:
            try:
                hosts = tomllib.loads(entry.hosts_toml)
            except tomllib.TOMLDecodeError:
                hosts = {}  # containerd falls back to the certificate files: so does the copy
            for field, path in _paths_in(hosts):
                if not posixpath.isabs(path) and "/" in posixpath.normpath(path):
                    raise RoutesError(
                        f"{where}: {source}/hosts.toml: {field} path {path!r} leaves its "
                        "directory and would not resolve in a copy: make it absolute, then run "
                        "again; nothing was changed"
                    )
        dirs.append(CarriedDir(source, name, entry.digest, entry.files))
    summary = tuple(
        f"carried {d.source} ({', '.join(d.files) or 'empty'}) into {ours}/{d.name}: "
        f"config_path was {previous!r}"
        for d in dirs
    )
    return CarriedRoutes(previous, tuple(dirs), summary)
