"""Migrate a node's containerd config.toml from ``registry.mirrors`` to ``config_path``.

Pure: text in, text out (tomlkit, no ``import pulumi``), so the node script, the Pulumi
component and the tests all run the same code.

Why each step exists (containerd behaviour, see FIELD-NOTES):
- containerd 1.6+ refuses the CRI plugin when ``config_path`` is set together with any
  ``registry.mirrors`` entry (even an empty one is tolerated, a non-empty one is not) or, on 1.x,
  any ``registry.configs.<host>.tls``. The daemon stays up and kubelet breaks, so the migration
  removes both and carries their meaning into hosts.toml (see :class:`MigratedRegistry`).
- ``registry.configs.<host>.auth`` is still honoured next to ``config_path``: it is kept, and,
  being a credential, never named in the summary beyond its host.
- The file's own ``version`` decides where containerd looks for the CRI registry settings
  (v1: ``plugins.cri``, v2: ``plugins."io.containerd.grpc.v1.cri"``, v3:
  ``plugins."io.containerd.cri.v1.images"``); we keep that version, with one exception:
- A version 1 file on containerd 2.x is converted to version 2. 2.x reads a v1 file by renaming
  its plugins (``cri`` -> ``io.containerd.grpc.v1.cri``) and then treating it as version 3
  WITHOUT the plugins' own v2 -> v3 migrations, so every CRI setting in it, ``config_path``
  included, is dropped (log: ``Ignoring unknown key in TOML for plugin ... key=registry``) and
  pulls silently bypass the cache. A version 2 file gets those migrations at every start, so we
  apply exactly containerd's v1 renames (:data:`V1_PLUGIN_NAMES`) and set ``version = 2``.
  A version 2 file stays version 2 on 2.x: containerd's own in-memory migration is the tested
  path, a v3 rewrite would re-implement its runtime/images split, and a v2 file still works after
  a downgrade to 1.x.
- TLS settings (``ca``/``client``/``skip_verify``) are carried over only for ``https://`` hosts.
  Under ``mirrors`` they never applied to an ``http://`` endpoint, but in hosts.toml any of them
  on an ``http://`` host makes containerd 1.7+ try HTTPS first on every connection ("host will
  try HTTPS first since it is configured for HTTP with a TLS configuration"); the summary says
  what was dropped.
- A colon-separated ``config_path`` (2.2's default) is treated by the transfer-service pull path
  as one literal directory, so hosts.toml would be ignored: we always write one directory.

Comments survive: tomlkit attaches the comment above a table to the table before it, so when a
table is removed its trailing comments are moved out (hoisted) instead of being dropped with it.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import tomlkit
import tomlkit.exceptions
from tomlkit.container import Container
from tomlkit.items import Comment, InlineTable, Item, Table, Trivia, Whitespace

DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d"
BOM = "\ufeff"
DOCKER_HUB = "docker.io"
DOCKER_HUB_SERVER = "https://registry-1.docker.io"

# Where the CRI registry settings live, by config file version.
REGISTRY_PATHS: dict[int, tuple[str, ...]] = {
    1: ("plugins", "cri", "registry"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "registry"),
    3: ("plugins", "io.containerd.cri.v1.images", "registry"),
}

_TLS_KEYS = ("ca_file", "cert_file", "key_file", "insecure_skip_verify")

# containerd's own v1 -> v2 plugin renames (cmd/containerd/server/config/config.go,
# v1MigratePluginName, the same in 1.x and 2.x). Names with a dot are already full URIs.
V1_PLUGIN_NAMES: dict[str, str] = {
    "cri": "io.containerd.grpc.v1.cri",
    "cgroups": "io.containerd.monitor.v1.cgroups",
    "linux": "io.containerd.runtime.v1.linux",
    "scheduler": "io.containerd.gc.v1.scheduler",
    "bolt": "io.containerd.metadata.v1.bolt",
    "task": "io.containerd.runtime.v2.task",
    "opt": "io.containerd.internal.v1.opt",
    "restart": "io.containerd.internal.v1.restart",
    "tracing": "io.containerd.internal.v1.tracing",
    "otlp": "io.containerd.tracing.processor.v1.otlp",
    "aufs": "io.containerd.snapshotter.v1.aufs",
    "btrfs": "io.containerd.snapshotter.v1.btrfs",
    "devmapper": "io.containerd.snapshotter.v1.devmapper",
    "native": "io.containerd.snapshotter.v1.native",
    "overlayfs": "io.containerd.snapshotter.v1.overlayfs",
    "zfs": "io.containerd.snapshotter.v1.zfs",
}


def v1_plugin_uri(name: str) -> str:
    """The full plugin name containerd gives a version 1 plugin name (same fallbacks)."""
    if "." in name:
        return name
    if name in V1_PLUGIN_NAMES:
        return V1_PLUGIN_NAMES[name]
    if name.endswith("-service"):
        return f"io.containerd.service.v1.{name}"
    if name in ("windows", "windows-lcow"):
        return f"io.containerd.snapshotter.v1.{name}"
    return f"io.containerd.grpc.v1.{name}"


class ConfigParseError(ValueError):
    """The config.toml cannot be migrated; ``line`` is 1-based when known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        self.problem = problem
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"config.toml {where}{problem}")


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


@dataclass(frozen=True)
class MigrationResult:
    text: str
    changed: bool
    config_version: int
    summary: tuple[str, ...]
    warnings: tuple[str, ...]
    migrated: tuple[MigratedRegistry, ...]


def default_server(host: str) -> str:
    return DOCKER_HUB_SERVER if host == DOCKER_HUB else f"https://{host}"


def parse_containerd_version(s: str) -> tuple[int, int, int]:
    """(major, minor, patch) from ``1.6.20~ds1``, ``v2.1.3`` or a ``containerd --version`` line."""
    for token in s.split():
        match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:$|[~+\-.])", token)
        if match:
            return int(match[1]), int(match[2]), int(match[3] or 0)
    raise ValueError(f"no containerd version (like 1.6.20 or v2.1.3) in {s!r}")


def preferred_config_version(containerd_version: str) -> int:
    """The config version containerd itself writes (``containerd config default``)."""
    major, minor, _ = parse_containerd_version(containerd_version)
    if major >= 2:
        return 3
    return 2 if minor >= 3 else 1  # version 2 files exist since 1.3


# --- parsing -----------------------------------------------------------------------------------


def _parse(text: str) -> tuple[dict[str, Any], tomlkit.TOMLDocument]:
    # containerd reads a file that starts with a UTF-8 byte order mark (go-toml skips it);
    # tomllib and tomlkit refuse it. Every text read here (a node's config.toml, its saved
    # original) may start with one; migrate_config also puts it back on its output.
    text = text.removeprefix(BOM)
    try:
        plain = tomllib.loads(text)
    except RecursionError:  # tomllib recurses per nested array/inline table
        raise ConfigParseError("invalid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match[1]) if match else None
        if line is None and "end of document" in message:
            line = text.count("\n") + 1
        problem = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        raise ConfigParseError(f"invalid TOML: {problem}", line) from None
    try:
        document = tomlkit.parse(text)
    except RecursionError:
        raise ConfigParseError("invalid TOML: nested too deeply") from None
    except tomlkit.exceptions.ParseError as error:
        raise ConfigParseError(f"invalid TOML: {error}", error.line) from None
    return plain, document


def _version_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(r"^\s*version\s*=", line):
            return number
    return None


def _file_version(plain: dict[str, Any], text: str) -> int:
    version = plain.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version not in REGISTRY_PATHS:
        raise ConfigParseError(
            f"unsupported config version {version!r} (expected 1, 2 or 3)", _version_line(text)
        )
    return version


def _lookup(plain: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = plain
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


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
    plain: dict[str, Any], plan: _Plan, path: tuple[str, ...], value: str
) -> dict[str, Any]:
    expected = copy.deepcopy(plain)
    for removal in plan.removals:
        parent = _lookup(expected, removal[:-1])
        if isinstance(parent, dict):
            parent.pop(removal[-1], None)
    node = expected
    for part in path:
        node = node.setdefault(part, {})
    node["config_path"] = value
    return expected


# --- editing the document (keeps comments and layout) --------------------------------------------


def _entries(
    container: Container, path: tuple[str, ...], inline: InlineTable | None = None
) -> Iterator[tuple[Container, int, tuple[str, ...], InlineTable | None]]:
    """Every keyed entry below ``container`` with its full key path (and the inline table that
    holds it, if any), depth first."""
    for index, (key, item) in enumerate(list(container.body)):
        if key is None:
            continue
        full = (*path, key.key)
        yield container, index, full, inline
        if isinstance(item, InlineTable):
            yield from _entries(item.value, full, item)
        elif isinstance(item, Table):
            yield from _entries(item.value, full, inline)


def _first_rendered(item: Item) -> Item:
    """The item whose indent is written first when ``item`` is rendered (super tables have no
    header of their own: their first descendant's header or key line comes first)."""
    while isinstance(item, Table) and item.is_super_table():
        keyed = [child for key, child in item.value.body if key is not None]
        if not keyed:
            break
        item = keyed[0]
    return item


def _last_table_body(table: Table) -> Container:
    """The body rendered last for ``table``: its trailing comments sit above the NEXT table."""
    body = table.value
    while body.body and isinstance(body.body[-1][1], Table):
        body = body.body[-1][1].value
    return body


def _mark_for_cut(item: Table, start: str, end: str) -> None:
    """Wrap a table's text in marker lines; the text between them is cut after rendering.

    Deleting the table from tomlkit's tree instead would lose the comments tomlkit attached to
    it that belong to the next table, and an emptied super table would grow a header.
    """
    first = _first_rendered(item)
    first.trivia.indent = f"{start}\n{first.trivia.indent}"
    body = _last_table_body(item)
    position = len(body.body)
    while position > 0:
        key, trailing = body.body[position - 1]
        if key is not None or not isinstance(trailing, Comment | Whitespace):
            break
        position -= 1
    body.body.insert(position, (None, Comment(Trivia(comment=end, trail="\n"))))


def _remove(document: tomlkit.TOMLDocument, targets: set[tuple[str, ...]], cut: str) -> str:
    """Render ``document`` without the entries at ``targets`` (comments of others kept)."""
    start, end = f"{cut}-start", f"{cut}-end"
    marked: set[int] = set()
    while True:
        found = next(
            (
                e
                for e in _entries(document, ())
                if e[2] in targets and id(e[0].body[e[1]][1]) not in marked
            ),
            None,
        )
        if found is None:
            break
        container, index, full, inline = found
        key, item = container.body[index]
        if inline is not None:
            # tomlkit re-renders an inline table (commas) itself when a key is deleted.
            owner: Any = inline
            for part in full[len(_path_of(document, inline)) : -1]:
                owner = owner[part]
            del owner[full[-1]]
        elif isinstance(item, Table) and not (key is not None and key.is_dotted()):
            _mark_for_cut(item, start, end)
            marked.add(id(item))
        else:
            # A key/value line (or dotted keys): its comment is on its own line, nothing to keep.
            del container.body[index]
    return _cut(document.as_string(), start, end)


def _path_of(document: tomlkit.TOMLDocument, inline: InlineTable) -> tuple[str, ...]:
    for container, index, full, _ in _entries(document, ()):
        if container.body[index][1] is inline:
            return full
    raise LookupError("inline table not in document")


def _cut(text: str, start: str, end: str) -> str:
    out: list[str] = []
    cutting = False
    after_cut = False
    for line in text.splitlines(keepends=True):
        marker = line.strip()
        if marker == start:
            cutting = True
            continue
        if marker == end:
            cutting = False
            after_cut = True
            continue
        if cutting:
            continue
        if after_cut and not marker and out and not out[-1].strip():
            # the blank line before the removed table stays; do not double it
            after_cut = False
            continue
        after_cut = False
        out.append(line)
    return "".join(out)


def _set_config_path(document: tomlkit.TOMLDocument, path: tuple[str, ...], value: str) -> str:
    target = (*path, "config_path")
    for container, index, full, _ in _entries(document, ()):
        if full == target:
            key, old = container.body[index]
            new = tomlkit.string(value)
            new.trivia.indent = old.trivia.indent
            new.trivia.comment_ws = old.trivia.comment_ws
            new.trivia.comment = old.trivia.comment
            new.trivia.trail = old.trivia.trail
            container.body[index] = (key, new)
            return document.as_string()
    for container, index, full, _ in _entries(document, ()):
        item = container.body[index][1]
        if full != path:
            continue
        if isinstance(item, InlineTable):
            item["config_path"] = value
            return document.as_string()
        if isinstance(item, Table) and not item.is_super_table():
            _insert_key(item, "config_path", value)
            return document.as_string()
    if _insert_dotted(document, path, value):
        return document.as_string()
    # No explicit registry table: a new header at the end is valid TOML unless a parent was
    # written inline or with dotted keys (then containerd users would be surprised anyway).
    for container, index, full, _ in _entries(document, ()):
        item = container.body[index][1]
        key = container.body[index][0]
        if full == path[: len(full)] and (
            isinstance(item, InlineTable)
            or (key is not None and key.is_dotted())
            or not isinstance(item, Table)
        ):
            raise ConfigParseError(
                f"cannot add config_path: {'.'.join(full)} is written inline or with dotted keys; "
                "write it as a [table] first"
            )
    text = document.as_string()
    header = ".".join(tomlkit.key(part).as_string() for part in path)
    prefix = "" if not text.strip() else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{prefix}[{header}]\n  config_path = {tomlkit.string(value).as_string()}\n"


def _header_bodies(
    container: Container, path: tuple[str, ...]
) -> Iterator[tuple[Container, tuple[str, ...]]]:
    """The document and every table written with a [header]: where dotted-key lines live."""
    yield container, path
    for key, item in container.body:
        if key is not None and isinstance(item, Table) and not key.is_dotted():
            yield from _header_bodies(item.value, (*path, key.key))


def _insert_dotted(document: tomlkit.TOMLDocument, path: tuple[str, ...], value: str) -> bool:
    """Registry written as dotted keys (``registry.configs."x".auth.username = ...``): add
    ``registry.config_path = ...`` after its last such line, in the same table."""
    last: tuple[Container, int, tuple[str, ...]] | None = None
    for body, table_path in _header_bodies(document, ()):
        if table_path != path[: len(table_path)] or len(table_path) >= len(path):
            continue
        for index, (key, _) in enumerate(body.body):
            if key is not None and key.is_dotted() and key.key == path[len(table_path)]:
                last = (body, index, table_path)
    if last is None:
        return False
    body, index, table_path = last
    item = tomlkit.string(value)
    item.trivia.indent = _first_rendered(body.body[index][1]).trivia.indent.lstrip("\n")
    item.trivia.trail = "\n"
    body.body.insert(index + 1, (tomlkit.key([*path[len(table_path) :], "config_path"]), item))
    return True


def _insert_key(table: Table, name: str, value: str) -> None:
    body = table.value.body
    position = 0
    indent = None
    for index, (key, item) in enumerate(body):
        if isinstance(item, Table):
            break
        if key is not None:
            position = index + 1
            indent = item.trivia.indent
    if indent is None:
        header_indent = table.trivia.indent.replace("\n", "")
        indent = header_indent + ("  " if header_indent or table.name else "")
    item = tomlkit.string(value)
    item.trivia.indent = indent
    item.trivia.trail = "\n"
    body.insert(position, (tomlkit.key(name), item))
    # tomlkit's key index is stale now; the caller only renders this document.


# --- version 1 -> 2 (containerd 2.x) --------------------------------------------------------------


def _clear_display_names(item: Item) -> None:
    """Make tomlkit render the headers below ``item`` from their keys (the renamed prefix)."""
    if isinstance(item, Table):
        item.display_name = None
        for _, child in item.value.body:
            _clear_display_names(child)


def _expected_v2(plain: dict[str, Any]) -> dict[str, Any]:
    expected = copy.deepcopy(plain)
    expected["version"] = 2
    if isinstance(expected.get("plugins"), dict):
        expected["plugins"] = {v1_plugin_uri(k): v for k, v in expected["plugins"].items()}
    for key in ("disabled_plugins", "required_plugins"):
        if isinstance(expected.get(key), list):
            expected[key] = [v1_plugin_uri(v) if isinstance(v, str) else v for v in expected[key]]
    return expected


def _convert_v1_to_v2(text: str, plain: dict[str, Any]) -> tuple[str, list[str]]:
    """``text`` (a version 1 file) with containerd's v1 plugin renames and ``version = 2``.

    Only the plugin names change (the tables' contents, comments and layout stay); returns the
    new text and the renames done, e.g. ``plugins.cri -> plugins."io.containerd.grpc.v1.cri"``.
    """
    _, document = _parse(text)
    renames: list[str] = []
    for container, index, full, inline in list(_entries(document, ())):
        if len(full) != 2 or full[0] != "plugins" or v1_plugin_uri(full[1]) == full[1]:
            continue
        key, item = container.body[index]
        if inline is not None or not isinstance(item, Table) or (key and key.is_dotted()):
            raise ConfigParseError(
                f"version 1 file: plugins.{full[1]} is written inline or with dotted keys, which "
                "this tool cannot rename for containerd 2.x; write it as [plugins."
                f"{full[1]}] tables, or convert the file with `containerd config migrate`"
            )
        uri = v1_plugin_uri(full[1])
        container.body[index] = (tomlkit.key(uri), item)
        _clear_display_names(item)
        rename = f"plugins.{full[1]} -> plugins.{_quoted(uri)}"
        if rename not in renames:
            renames.append(rename)
    for name in ("disabled_plugins", "required_plugins"):
        names = document.get(name)
        if isinstance(names, list):
            for position, value in enumerate(list(names)):
                if isinstance(value, str) and v1_plugin_uri(value) != value:
                    names[position] = v1_plugin_uri(value)
                    renames.append(f"{name}: {value} -> {v1_plugin_uri(value)}")
    version = tomlkit.integer(2)
    version.trivia.trail = "\n"
    first = next((i for i, (key, _) in enumerate(document.body) if key is not None), None)
    if "version" in plain:  # an explicit `version = 1`: replaced where it stands
        document["version"] = 2
    elif first is None:
        document.body.append((tomlkit.key("version"), version))
    else:
        if isinstance(document.body[first][1], Table):
            version.trivia.trail = "\n\n"
        document.body.insert(first, (tomlkit.key("version"), version))
    converted = document.as_string()
    try:
        produced = tomllib.loads(converted)
    except tomllib.TOMLDecodeError as error:  # a tomlkit bug: refuse rather than break a node
        raise RuntimeError(f"version 1 -> 2 conversion produced invalid TOML ({error})") from None
    if produced != _expected_v2(plain):
        raise RuntimeError("version 1 -> 2 conversion changed more than plugin names")
    return converted, renames


# --- the migration ------------------------------------------------------------------------------


def _minimal(version: int, config_path: str) -> str:
    path = REGISTRY_PATHS[version]
    header = ".".join(tomlkit.key(part).as_string() for part in path)
    version_line = f"version = {version}\n\n" if version > 1 else ""
    return f"{version_line}[{header}]\n  config_path = {tomlkit.string(config_path).as_string()}\n"


def carried_registries(text: str) -> tuple[MigratedRegistry, ...]:
    """The mirrors and TLS settings ``text`` holds in its own version's layout, as the migration
    carries them over to hosts.toml. No policy about the node's containerd version: this reads a
    node's saved original config.toml, whose mirrors must keep their hosts.toml after config.toml
    itself stopped naming them."""
    plain, _ = _parse(text)
    if not plain:
        return ()
    return tuple(_plan(plain, _file_version(plain, text)).migrated)


def migrate_config(
    text: str, containerd_version: str, config_path: str = DEFAULT_CONFIG_PATH
) -> MigrationResult:
    """Return the node's config.toml switched to ``config_path``, plus what changed and why."""
    if text.startswith(BOM):
        # A byte order mark containerd reads (see _parse): migrate what follows it and keep
        # it, as every other byte.
        result = migrate_config(text[len(BOM) :], containerd_version, config_path)
        return dataclasses.replace(result, text=BOM + result.text)
    if text and not text.endswith("\n"):
        # A key inserted after a last line without a newline lands on that line (after a
        # header, a value, or inside its comment). Migrate the file as if it ended its last
        # line; it keeps that newline only when it is changed anyway.
        result = migrate_config(text + "\n", containerd_version, config_path)
        return result if result.changed else dataclasses.replace(result, text=text)
    if not config_path.startswith("/") or ":" in config_path:
        raise ValueError(f"config_path must be ONE absolute directory, got {config_path!r}")
    node_version = parse_containerd_version(containerd_version)
    preferred = preferred_config_version(containerd_version)
    plain, document = _parse(text)
    warnings: list[str] = []

    if not plain:
        # Empty (or comments only): containerd runs on defaults; write the version it prefers.
        new = _minimal(preferred, config_path)
        if text.strip():
            new = text.rstrip("\n") + "\n\n" + new
        return MigrationResult(
            text=new,
            changed=new != text,
            config_version=preferred,
            summary=(f"empty config: wrote a minimal version {preferred} file with config_path",),
            warnings=(),
            migrated=(),
        )

    version = _file_version(plain, text)
    node = ".".join(str(p) for p in node_version)
    converted: list[str] = []
    source = text
    if version == 1 and node_version[0] >= 2:
        source, renames = _convert_v1_to_v2(text, plain)
        plain, document = _parse(source)
        version = 2
        converted.append(
            f"converted the version 1 file to version 2 ({'; '.join(renames) or 'no plugins'}):"
            f" containerd {node} reads a version 1 file without its CRI settings (registry, "
            "sandbox image, runtimes are ignored), so config_path would have no effect"
        )
    # Version 2 on 2.x is kept on purpose (module docstring): no warning for it.
    if version != preferred and not (version == 2 and node_version[0] >= 2):
        consequence = ""
        if version == 3 and node_version[0] < 2:
            consequence = (
                ": containerd 1.x does not read the version 3 plugin names, "
                "so config_path (and the rest of the CRI settings) will have no effect"
            )
        elif version == 1:
            consequence = (
                ": version 1 is deprecated, and containerd 2.x ignores every CRI setting of a "
                "version 1 file (run `pulumi up` again right after upgrading containerd: the "
                "file is then converted to version 2)"
            )
        warnings.append(
            f"config file is version {version} but containerd {node} prefers version {preferred}"
            f"{consequence}"
        )

    plan = _plan(plain, version)
    path = REGISTRY_PATHS[version]
    current = _lookup(plain, (*path, "config_path"))
    summary = converted + list(plan.summary)
    if current != config_path:
        if isinstance(current, str) and ":" in current:
            summary.append(
                f"config_path {current!r} is a list: set to the single directory {config_path!r} "
                "(the transfer-service pull path reads a list as one literal directory)"
            )
        elif current:
            summary.append(f"config_path changed from {current!r} to {config_path!r}")
        else:
            summary.append(f"config_path set to {config_path!r}")
    warnings.extend(plan.warnings)

    if not plan.removals and current == config_path:
        return MigrationResult(
            source, source != text, version, tuple(converted), tuple(warnings), ()
        )

    cut = f"#@@containerd-migration-cut-{uuid.uuid4().hex}@@"
    removed = _remove(document, set(plan.removals), cut)
    _, document = _parse(removed)
    new_text = _set_config_path(document, path, config_path)

    expected = _expected(plain, plan, path, config_path)
    try:
        produced = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as error:  # a tomlkit bug: refuse rather than break a node
        raise RuntimeError(
            f"migration produced invalid TOML ({error}); input left unchanged"
        ) from None
    # Tables left empty by a removal disappear from the text; containerd reads both the same.
    if _pruned(produced) != _pruned(expected):
        raise RuntimeError("migration changed unrelated settings (tomlkit edit went wrong)")
    return MigrationResult(
        text=new_text,
        changed=new_text != text,
        config_version=version,
        summary=tuple(summary),
        warnings=tuple(warnings),
        migrated=tuple(plan.migrated),
    )
