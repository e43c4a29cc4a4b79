"""The files a node's config.toml imports, as that node's containerd reads them, and what the
migration does to each (issue 22; docs/containerd-imports.md has the measured behaviour).

probe.sh reports every file it reached through ``imports`` (a set); this module replays
containerd's own walk with the node version's rules (components/renderers/containerd_config/
imports.py): the main file first, then breadth first, glob matches in Go's order, each file once.
It must reach exactly the files the probe read, or the node is refused (the probe and a TOML
parser read an ``imports`` line differently).

Per drop-in, decided here (README, "imports drop-ins", says why):
- ``mirrors`` and ``configs.<host>.tls`` are migrated where they live, as in config.toml: removed
  and carried over to hosts.toml. containerd 2.x merges plugin tables, so a drop-in mirror next
  to config.toml's ``config_path`` makes the CRI plugin fail; 1.x replaces the whole CRI table,
  so it silently disables ``config_path``.
- A drop-in's own ``config_path`` wins over config.toml's: set to ours (the hosts.toml go where
  containerd reads them).
- containerd 1.x: the LAST file with a CRI plugin table replaces config.toml's whole, so that
  file gets ``config_path`` (config.toml's would never be read).
- A file another tool rewrites (NVIDIA's container toolkit): its registry settings or its own
  ``config_path`` are refused, naming the file and the key, before anything changes; the tool
  would put them back, and on 2.x that breaks the CRI plugin. Only adding ``config_path`` to it
  (1.x, above) is done: undone, the node pulls direct again and still works.
- Files of another config version than config.toml, on a containerd that does not migrate each
  file on its own (all but 2.3): refused. 1.x does not start with them; 2.0-2.2 read the merged
  config as the LAST file's version and silently drop the other files' CRI settings.

Pure: no ``import pulumi``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from components.plan.node_probe import ProbedDropIn, ProbeResult
from components.renderers.containerd_config import (
    ConfigParseError,
    MigratedRegistry,
    carried_registries,
    carried_wildcard,
)
from components.renderers.containerd_config.imports import (
    ImportRules,
    go_glob_match,
    go_glob_order,
    import_rules,
    owner_of,
    resolve_entry,
)
from components.renderers.containerd_config.migrate import (
    DropInMigration,
    dropin_version,
    migrate_dropin,
)
from components.renderers.containerd_config.versions import _parse


class ImportsError(ValueError):
    """A node's imports cannot be read or migrated safely: one line, naming the file."""


@dataclass(frozen=True)
class DropInPlan:
    """One imported file, and what the config step sends for it."""

    probed: ProbedDropIn
    migration: DropInMigration
    # Sent in the config step's bundle: it changes now, or it changed before (so an unchanged
    # node sends the same bundle again and shows no diff).
    sent: bool
    text: str
    guard: str


@dataclass(frozen=True)
class ImportsPlan:
    order: tuple[str, ...]
    dropins: tuple[DropInPlan, ...]
    # What the drop-ins carry over to hosts.toml, in containerd's order (a later file wins).
    carried: tuple[MigratedRegistry, ...]
    # The last wildcard mirror a drop-in in effect held (None: none did).
    wildcard: MigratedRegistry | None
    # containerd 1.x: config.toml's CRI table is replaced by a drop-in's (its mirrors were
    # never in effect and are not carried over).
    main_replaced_by: str | None
    summary: tuple[str, ...]
    warnings: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return any(plan.migration.changed for plan in self.dropins)

    @property
    def sent(self) -> tuple[DropInPlan, ...]:
        return tuple(plan for plan in self.dropins if plan.sent)


def _imports_of(text: str, path: str) -> list[str]:
    plain, _ = _parse(text)
    value: Any = plain.get("imports", [])
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise ImportsError(f"{path}: `imports` must be a list of strings")
    return value


def containerd_order(probe: ProbeResult, rules: ImportRules) -> list[ProbedDropIn]:
    """The drop-ins in the order containerd reads them; ImportsError when this walk and the
    probe's disagree."""
    files = {dropin.path: dropin for dropin in probe.dropins}
    if not probe.config_exists:
        if files:
            raise ImportsError(f"probe.sh read drop-ins of a missing {probe.config_file}")
        return []
    queue: list[tuple[str, str, tuple[str, ...]]] = [
        (probe.config_file, probe.config_text, probe.imports_entries)
    ]
    seen = {probe.config_file}
    order: list[ProbedDropIn] = []
    patterns: list[str] = []
    for path, text, reported in queue:
        entries = _imports_of(text, path)
        if tuple(entries) != reported:
            raise ImportsError(
                f"{path}: probe.sh reads its `imports` as {list(reported)}, TOML as {entries}; "
                'write it on one line as imports = ["/path/a.toml", "/path/conf.d/*.toml"]'
            )
        for entry in entries:
            kind, target = resolve_entry(entry, path, rules)
            if kind == "glob":
                patterns.append(target)
                matches = go_glob_order([p for p in files if go_glob_match(target, p)])
            elif target in files or target in seen:
                matches = [target]
            else:
                raise ImportsError(f"{target} (named in {path}) was not read by probe.sh")
            for match in matches:
                if match in seen:
                    continue
                seen.add(match)
                dropin = files[match]
                order.append(dropin)
                queue.append((match, dropin.text, dropin.imports))
    for path, _, _ in queue:
        # The scripts keep <file>.registry-mirrors.orig (and a backup per change) beside every
        # file they change: a pattern that matches those would import the old mirrors again.
        for pattern in patterns:
            if go_glob_match(pattern, f"{path}.registry-mirrors.orig"):
                raise ImportsError(
                    f"imports pattern {pattern} would also import the backups kept beside "
                    f"{path} ({posixpath.basename(path)}.registry-mirrors.*); name the files "
                    "by their ending, e.g. *.toml"
                )
    unreached = sorted(set(files) - seen)
    if unreached:
        raise ImportsError(
            f"probe.sh read {', '.join(unreached)}, which containerd would not import "
            f"(relative patterns matched in {probe.imports_glob_base or '?'})"
        )
    return order


def _cri_table(text: str, version: int) -> bool:
    """The file has a CRI plugin table of its version's layout (1.x replaces the whole table)."""
    plain, _ = _parse(text)
    plugins = plain.get("plugins")
    name = "cri" if version == 1 else "io.containerd.grpc.v1.cri"
    return isinstance(plugins, dict) and isinstance(plugins.get(name), dict)


def plan_imports(
    probe: ProbeResult, main_version: int, config_path: str, node_version: str
) -> ImportsPlan:
    """Every drop-in of ``probe`` migrated for a node whose config.toml is (after the migration)
    of config version ``main_version``. ImportsError (one line naming the file) when the node
    must be refused, before anything changes."""
    if probe.imports_errors:
        raise ImportsError(
            f"{probe.imports_errors[0]}: containerd does not start with a missing import; "
            "create the file or take it out of `imports`"
        )
    rules = import_rules(node_version)
    if probe.imports_glob_base and probe.imports_glob_base != rules.relative_glob_base:
        raise ImportsError(
            f"probe.sh matched relative imports patterns in the {probe.imports_glob_base!r} "
            f"directory, containerd {node_version} in the {rules.relative_glob_base!r} one"
        )
    order = containerd_order(probe, rules)
    if not order:
        return ImportsPlan((), (), (), None, None, (), ())
    try:
        versions = {dropin.path: dropin_version(dropin.text) for dropin in order}
    except ConfigParseError as error:
        raise ImportsError(f"{_failed_path(order)}: {error}") from None
    if rules.older_dropins != "migrated":
        for dropin in order:
            if versions[dropin.path] not in (0, main_version):
                consequence = (
                    "containerd 1.x does not start with plugin names of another version"
                    if rules.older_dropins == "refused"
                    else f"containerd {node_version} reads the merged config as the last file's "
                    "version and silently drops the other files' CRI settings"
                )
                raise ImportsError(
                    f"{dropin.path} is config version {versions[dropin.path]}, "
                    f"{probe.config_file} version {main_version}: {consequence} "
                    f"(docs/containerd-imports.md); give it version {main_version}"
                )
    # containerd 1.x: the last file with a CRI table replaces config.toml's.
    replacing: str | None = None
    if rules.plugin_tables == "replaced":
        for dropin in order:
            if _cri_table(dropin.text, versions[dropin.path] or main_version):
                replacing = dropin.path

    plans: list[DropInPlan] = []
    summary: list[str] = []
    warnings: list[str] = []
    carried: list[MigratedRegistry] = []
    wildcard: MigratedRegistry | None = None
    for dropin in order:
        try:
            found = migrate_dropin(dropin.text, None)
        except ConfigParseError as error:
            raise ImportsError(f"{dropin.path}: {error}") from None
        foreign_path = found.config_path is not None and found.config_path != config_path
        wanted = config_path if (foreign_path or dropin.path == replacing) else None
        owner = owner_of(dropin.path)
        refused = [key for key in found.registry_keys if not key.endswith("config_path")]
        if foreign_path:
            refused += [key for key in found.registry_keys if key.endswith("config_path")]
        if owner is not None and refused:
            who, advice = owner
            raise ImportsError(
                f"{dropin.path} sets {refused[0]}, but the file belongs to {who}, which would "
                f"put it back: {advice}, then run again"
            )
        migration = migrate_dropin(dropin.text, wanted) if wanted else found
        if rules.plugin_tables == "merged" or dropin.path == replacing:
            carried += _carried_from(dropin, migration)
            original = carried_wildcard(dropin.original_text) if dropin.original_text else None
            wildcard = migration.wildcard or original or wildcard
        elif migration.migrated:
            summary.append(
                f"{dropin.path}: its mirrors were never in effect (containerd 1.x: "
                f"{replacing or probe.config_file}'s CRI table replaces it), not carried over"
            )
        summary += [f"{dropin.path}: {line}" for line in migration.summary]
        warnings += [f"{dropin.path}: {line}" for line in migration.warnings]
        if dropin.path == replacing and owner is not None and migration.changed:
            warnings.append(
                f"{dropin.path}: containerd 1.x takes its CRI table instead of "
                f"{probe.config_file}'s, so config_path is written there; {owner[0]} may drop "
                "it when it rewrites the file (the next preview then shows the change)"
            )
        if migration.changed:
            text, guard = migration.text, dropin.sha256
        else:
            text = dropin.text
            guard = dropin.applied_from_sha256 or dropin.sha256
        sent = migration.changed or dropin.original_saved or dropin.applied_from_sha256 is not None
        plans.append(DropInPlan(dropin, migration, sent, text, guard))
    if replacing is not None:
        warnings.append(
            f"containerd 1.x reads the CRI settings of {replacing} only: its CRI table replaces "
            f"{probe.config_file}'s whole (imports are merged from 2.0 on), so config.toml's "
            "other CRI settings (sandbox image, runtimes, ...) are not in effect either"
        )
    return ImportsPlan(
        order=tuple(dropin.path for dropin in order),
        dropins=tuple(plans),
        carried=_latest(carried),
        wildcard=wildcard,
        main_replaced_by=replacing,
        summary=tuple(summary),
        warnings=tuple(warnings),
    )


def _failed_path(order: list[ProbedDropIn]) -> str:
    for dropin in order:
        try:
            dropin_version(dropin.text)
        except ConfigParseError:
            return dropin.path
    return order[0].path


def _carried_from(dropin: ProbedDropIn, migration: DropInMigration) -> list[MigratedRegistry]:
    # The drop-in's first original, saved before our first change, still names the mirrors that
    # were carried over then; what it names now comes after (and wins).
    original = carried_registries(dropin.original_text) if dropin.original_text else ()
    return [*original, *migration.migrated]


def _latest(registries: list[MigratedRegistry]) -> tuple[MigratedRegistry, ...]:
    merged: dict[str, MigratedRegistry] = {}
    for registry in registries:
        merged[registry.host.lower()] = registry
    return tuple(merged.values())
