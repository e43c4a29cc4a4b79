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

import dataclasses
import tomllib
import uuid
from dataclasses import dataclass
from typing import Any

import tomlkit

from components.renderers.containerd_config.mirrors import (
    MigratedRegistry,
    _expected,
    _Plan,
    _plan,
    _pruned,
    _quoted,
)
from components.renderers.containerd_config.toml_edit import _remove, _set_config_path
from components.renderers.containerd_config.v1_to_v2 import _convert_v1_to_v2
from components.renderers.containerd_config.versions import (
    BOM,
    REGISTRY_PATHS,
    _file_version,
    _lookup,
    _parse,
    parse_containerd_version,
    preferred_config_version,
)

DEFAULT_CONFIG_PATH = "/etc/containerd/certs.d"


@dataclass(frozen=True)
class MigrationResult:
    text: str
    changed: bool
    config_version: int
    summary: tuple[str, ...]
    warnings: tuple[str, ...]
    migrated: tuple[MigratedRegistry, ...]
    # The file's wildcard mirror, as a registry named "_default" (None: it had none).
    wildcard: MigratedRegistry | None = None


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


def carried_wildcard(text: str) -> MigratedRegistry | None:
    """The wildcard mirror ``text`` holds (``mirrors."*"`` or ``mirrors."_default"``), as
    :func:`carried_registries` reads the rest."""
    plain, _ = _parse(text)
    if not plain:
        return None
    return _plan(plain, _file_version(plain, text)).wildcard


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

    new_text = _edited(document, plain, plan, path, config_path)
    return MigrationResult(
        text=new_text,
        changed=new_text != text,
        config_version=version,
        summary=tuple(summary),
        warnings=tuple(warnings),
        migrated=tuple(plan.migrated),
        wildcard=plan.wildcard,
    )


def _edited(
    document: tomlkit.TOMLDocument,
    plain: dict[str, Any],
    plan: _Plan,
    path: tuple[str, ...],
    config_path: str | None,
) -> str:
    """``document`` without ``plan.removals`` and, unless None, with ``config_path`` at ``path``;
    checked to parse to exactly that change of ``plain``."""
    cut = f"#@@containerd-migration-cut-{uuid.uuid4().hex}@@"
    removed = _remove(document, set(plan.removals), cut)
    _, document = _parse(removed)
    new_text = (
        document.as_string()
        if config_path is None
        else _set_config_path(document, path, config_path)
    )
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
    return new_text


@dataclass(frozen=True)
class DropInMigration:
    """What :func:`migrate_dropin` made of one ``imports`` drop-in."""

    text: str
    changed: bool
    config_version: int
    summary: tuple[str, ...]
    warnings: tuple[str, ...]
    migrated: tuple[MigratedRegistry, ...]
    # The registry settings it held (``mirrors``, ``configs.<host>.tls``, ``config_path``), as
    # dotted keys in the file's own layout: what a refusal names when the file is not ours to edit.
    registry_keys: tuple[str, ...]
    # The file's own config_path in its active layout (None: it sets none).
    config_path: str | None
    wildcard: MigratedRegistry | None = None


def dropin_version(text: str) -> int:
    """A drop-in's config version (no ``version`` key: 1, as containerd reads it)."""
    plain, _ = _parse(text.removeprefix(BOM))
    return _file_version(plain, text) if plain else 0


def migrate_dropin(text: str, config_path: str | None) -> DropInMigration:
    """One ``imports`` drop-in cleared of the registry settings containerd refuses next to
    ``config_path`` (``mirrors``, on 1.x ``configs.<host>.tls``: carried over to hosts.toml as in
    config.toml), in its own config version's layout; ``config_path`` is written only when given
    (the caller decides: a drop-in whose own config_path would win over config.toml's, or on
    containerd 1.x the last file with a CRI table, which replaces config.toml's whole). Every other
    byte stays: a drop-in is somebody's file (NVIDIA's runtime, a distribution's defaults)."""
    if text.startswith(BOM):
        result = migrate_dropin(text[len(BOM) :], config_path)
        return dataclasses.replace(result, text=BOM + result.text)
    if text and not text.endswith("\n"):
        result = migrate_dropin(text + "\n", config_path)
        return result if result.changed else dataclasses.replace(result, text=text)
    plain, document = _parse(text)
    if not plain:
        return DropInMigration(text, False, 0, (), (), (), (), None)
    version = _file_version(plain, text)
    plan = _plan(plain, version)
    path = REGISTRY_PATHS[version]
    current = _lookup(plain, (*path, "config_path"))
    keys = [".".join(_quoted(part) for part in removal) for removal in plan.removals]
    if isinstance(current, str):
        keys.append(".".join(_quoted(part) for part in (*path, "config_path")))
    summary = list(plan.summary)
    wanted = config_path if config_path is not None and current != config_path else None
    if wanted is not None:
        summary.append(
            f"config_path changed from {current!r} to {wanted!r}"
            if current
            else f"config_path set to {wanted!r}"
        )
    if not plan.removals and wanted is None:
        return DropInMigration(
            text, False, version, (), tuple(plan.warnings), (), tuple(keys),
            current if isinstance(current, str) else None,
        )  # fmt: skip
    new_text = _edited(document, plain, plan, path, wanted)
    return DropInMigration(
        text=new_text,
        changed=new_text != text,
        config_version=version,
        summary=tuple(summary),
        warnings=tuple(plan.warnings),
        migrated=tuple(plan.migrated),
        registry_keys=tuple(keys),
        config_path=current if isinstance(current, str) else None,
        wildcard=plan.wildcard,
    )
