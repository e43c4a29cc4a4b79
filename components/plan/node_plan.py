"""Decide everything for one node from its probe, before any step that changes it is sent: which
flavour it is, its config.toml migrated (plain containerd) or its registries.yaml merged (k3s,
RKE2), the hosts.toml files, and the steps (components/plan/node_steps.py) that apply them, in
order. A probe or file that cannot be read stops here, naming the node.

Pure: no ``import pulumi``. components/fleet.py plans every node this way while the program runs.

A step runs on ``pulumi up`` only when its inputs differ from the last apply. So each step that
writes a file carries a mark (``APPLY_MARK``) that the node keeps beside what the step left
(``*.registry-mirrors.applied``): while the node still holds exactly that, the probe gives the
mark back and the step is planned with the very inputs it was applied with (no diff); once the
node holds anything else (edited by hand, back to its original because a config manager rewrote
it, our own restore ran, or it was reinstalled) the step gets a new mark and shows a change, in
whichever direction the node moved. See ``apply_mark``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Union

from components.plan import read_access
from components.plan.node_imports import ImportsError, ImportsPlan, plan_imports
from components.plan.node_probe import ProbeResult, parse_probe
from components.plan.node_routes import CarriedRoutes, RoutesError, plan_routes
from components.plan.node_steps import (
    NodeStepError,
    Step,
    config_step,
    hosts_step,
    node_role,
    registries_step,
    restore_config_step,
    restore_hosts_step,
    restore_registries_step,
    with_trust,
)
from components.renderers.containerd_config import (
    MigratedRegistry,
    MigrationResult,
    carried_registries,
    carried_wildcard,
    migrate_config,
)
from components.renderers.flavours import FLAVOURS, Flavour, resolve_flavour
from components.renderers.hosts_toml import render_node_hosts
from components.renderers.registries_yaml import merge_registries_yaml
from components.settings import Node, Settings


@dataclass(frozen=True)
class NodeStep:
    """One remote command of a node's rollout, in order: what ``create`` runs, and whether its
    stdin and output may hold credentials (config.toml may carry ``configs.*.auth``: then secret,
    and nothing logged). No step has a delete: removing a node (or renaming it, or setting
    skipConfigPath) never runs anything on it; ``nodes[].state: restored`` undoes our changes."""

    role: str
    create: Step
    sensitive: bool
    # TLS on: the create step's stdin gets the CA certificates of our caches between the script
    # and its content (node_steps.with_trust), known once the VM has made its CA.
    trusts_ca: bool = False


def apply_mark(left_as_is: bool, mark: str | None, record_sha256: str | None) -> str:
    """The APPLY_MARK of a step. ``left_as_is``: the node holds exactly what the step's last apply
    left (the probe compared it with the record), so its recorded ``mark`` again: same inputs, no
    diff. Otherwise a mark no earlier apply of this node had: derived from the record of the last
    one when there is a record (the same in a preview and in the ``up`` after it; each apply
    records its own mark, so the next drift derives another), or new when there is none (a node
    never applied, or reinstalled: nothing on it says what it had)."""
    if left_as_is:
        return mark or ""
    if record_sha256:
        return f"drift-{record_sha256[:16]}"
    return f"new-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class NodePlan:
    """Everything decided from one probe of one node."""

    probe: ProbeResult
    migration: MigrationResult
    hosts_files: dict[str, str]
    hosts: Step
    config: Step
    config_changed: bool
    summary: tuple[str, ...]
    # The remote commands, in order; each runs after the one before (hosts.toml before
    # config_path: once config_path is set containerd only reads the files).
    steps: tuple[NodeStep, ...] = ()
    flavour: Flavour = FLAVOURS["containerd"]
    # The step whose output says whether the node changed and restarted.
    report_role: str = "config"
    # The files config.toml imports and what the config step does to them (None: it imports none).
    imports: ImportsPlan | None = None
    # The directories of a previous config_path carried into ours (issue 27, item 5).
    routes: CarriedRoutes | None = None
    state: str = "managed"


def step_to_send(step: NodeStep, ca_pem: str | None) -> Step:
    """What the node step's create runs: with TLS on, its stdin carries ``ca_pem`` (the CA
    certificates the VM made) after the script, before its content (node_steps.with_trust)."""
    if not step.trusts_ca:
        return step.create
    if ca_pem is None:
        raise NodeStepError(f"{step.role}: TLS is on, so this step needs the caches' CA")
    return with_trust(step.create, ca_pem)


def role_to_send(plan: AnyPlan, role: str, ca_pem: str | None) -> Step:
    """``step_to_send`` for the plan's step of ``role`` (hosts, config, registries)."""
    [step] = [step for step in plan.steps if step.role == role]
    return step_to_send(step, ca_pem)


# A fleet's nodes mostly share one config.toml and one containerd version: what follows from
# (config text, original text, version) is computed once per distinct triple (per settings).
FleetCache = dict[tuple[str, str, str], tuple[MigrationResult, dict[str, str]]]


def _carried(
    original: Sequence[MigratedRegistry], current: Sequence[MigratedRegistry]
) -> tuple[MigratedRegistry, ...]:
    """What the node's hosts.toml files must keep: the registries carried over from its first
    original config.toml, and any mirrors someone has added to config.toml since (those win)."""
    merged = {registry.host.lower(): registry for registry in original}
    merged.update({registry.host.lower(): registry for registry in current})
    return tuple(merged.values())


def _migrate_and_render(
    settings: Settings, probe: ProbeResult, cache: FleetCache | None
) -> tuple[MigrationResult, dict[str, str]]:
    key = (probe.config_text or "", probe.original_text or "", probe.containerd_version)
    if cache is not None and key in cache:
        return cache[key]
    migration = migrate_config(
        probe.config_text, probe.containerd_version, config_path=settings.containerd.config_path
    )
    # After the first apply config.toml no longer names the mirrors it had: without the saved
    # original, the second run would drop them from hosts.toml.
    original = carried_registries(probe.original_text) if probe.original_text else ()
    wildcard = migration.wildcard or (
        carried_wildcard(probe.original_text) if probe.original_text else None
    )
    files = render_node_hosts(
        settings, _carried(original, migration.migrated), probe.containerd_version, wildcard
    )
    if cache is not None:
        cache[key] = (migration, files)
    return migration, files


def _migrate_with_imports(
    settings: Settings, probe: ProbeResult
) -> tuple[MigrationResult, dict[str, str], ImportsPlan]:
    """config.toml and every file it imports, as the node's containerd merges them."""
    migration = migrate_config(
        probe.config_text, probe.containerd_version, config_path=settings.containerd.config_path
    )
    imports = plan_imports(
        probe, migration.config_version, settings.containerd.config_path, probe.containerd_version
    )
    original = carried_registries(probe.original_text) if probe.original_text else ()
    main = _carried(original, migration.migrated)
    wildcard = migration.wildcard or (
        carried_wildcard(probe.original_text) if probe.original_text else None
    )
    if imports.main_replaced_by is not None:
        # containerd 1.x: a drop-in's CRI table replaces config.toml's; its mirrors never applied.
        main, wildcard = (), None
    files = render_node_hosts(
        settings,
        _carried(main, imports.carried),
        probe.containerd_version,
        imports.wildcard or wildcard,
    )
    return migration, files, imports


_DROPPED_WILDCARD = ('dropped wildcard mirror "*"', 'dropped mirror "_default"')


def _wildcard_summary(summary: list[str], settings: Settings, files: dict[str, str]) -> list[str]:
    """The migration says it dropped the wildcard mirror (it cannot tell our cache from a route of
    the node's own); when it is carried to _default/hosts.toml, say that instead."""
    if "_default" not in files:
        return summary
    hosts = ", ".join(tomllib.loads(files["_default"]).get("host", {}))
    upstreams = ", ".join(upstream.host for upstream in settings.upstreams)
    carried = (
        f"wildcard mirror carried to _default/hosts.toml ({hosts}): every registry without a "
        f"hosts.toml of its own goes there first; {upstreams} try it after our cache"
    )
    kept = [line for line in summary if not line.startswith(_DROPPED_WILDCARD)]
    return [carried, *kept]


def plan_node(
    settings: Settings, node: Node, probe_stdout: str, cache: FleetCache | None = None
) -> NodePlan:
    """Decide everything for one node from its probe. A probe or config.toml we cannot read stops
    here, naming the node, before any step that changes the node is sent. ``cache`` (one dict per
    settings object) shares the work between nodes with the same config and version."""
    probe, flavour = read_probe(node, probe_stdout)
    if flavour.is_distribution:
        raise NodeStepError(
            f"node {node.name} ({node.address}) is {flavour.name}: plan it with plan_registries"
        )
    return _plan_containerd(settings, node, probe, cache)


def read_probe(node: Node, probe_stdout: str) -> tuple[ProbeResult, Flavour]:
    """The probe, and the flavour to configure (a forced one must match the node)."""
    where = f"node {node.name} ({node.address})"
    try:
        probe = parse_probe(probe_stdout)
        flavour = resolve_flavour(probe.flavour, probe.flavour_candidates, node.flavour, where)
    except ValueError as error:  # ProbeOutputError, FlavourError
        message = str(error) if str(error).startswith(where) else f"{where}: {error}"
        raise NodeStepError(f"{message}; nothing was changed") from None
    return probe, flavour


# What the rollout needs of any node's plan: ``probe`` (None when held), ``flavour``, ``steps``
# (in order), ``summary``, ``report_role``, ``state``.
AnyPlan = Union["NodePlan", "RegistriesPlan", "RestorePlan", "HeldPlan"]


def plan_any(
    settings: Settings, node: Node, probe_stdout: str, cache: FleetCache | None = None
) -> AnyPlan:
    """Plan a node of any flavour from its probe: plain containerd gets its hosts and config
    steps, k3s/RKE2 their registries step; with ``nodeAccess.readPublicKeys`` set, the step
    that installs the read identity comes first. A node set to ``restored`` gets its restore
    steps (and, with the read identity, its removal after them). (A held node is not read:
    ``plan_held``.)"""
    probe, flavour = read_probe(node, probe_stdout)
    if node.state == "restored":
        restore = plan_restore(settings, node, probe, flavour)
        if not settings.node_access.enabled:
            return restore
        remove = NodeStep(
            f"remove-{read_access.ROLE}", read_access.remove_step(settings, node), sensitive=False
        )
        return dataclasses.replace(restore, steps=(*restore.steps, remove))
    plan: AnyPlan
    if flavour.is_distribution:
        plan = _plan_registries(settings, node, probe, flavour)
    else:
        plan = _plan_containerd(settings, node, probe, cache)
    if not settings.node_access.enabled:
        return plan
    # The read identity first: a broken install stops at the canary like any other step, and
    # the node's next preview can be read without the apply key.
    access = NodeStep(
        read_access.ROLE, read_access.install_step(settings, node, flavour), sensitive=False
    )
    return dataclasses.replace(plan, steps=(access, *plan.steps))


# --- nodes[].state: restored and held ----------------------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """``restored``: our changes undone once, in the node's place in the rollout (it restarts its
    daemon). Once applied, the steps' inputs stay the same: nothing runs again."""

    probe: ProbeResult
    flavour: Flavour
    summary: tuple[str, ...]
    steps: tuple[NodeStep, ...]
    report_role: str
    state: str = "restored"


def plan_restore(
    settings: Settings, node: Node, probe: ProbeResult, flavour: Flavour
) -> RestorePlan:
    if flavour.is_distribution:
        what = f"its first {flavour.registries_file} is put back and {flavour.unit} restarted"
        steps: tuple[NodeStep, ...] = (
            NodeStep(
                "restore-registries",
                restore_registries_step(settings, node, flavour),
                sensitive=False,
            ),
        )
    else:
        # The config first, as the old delete order had it: containerd stops reading config_path
        # before the hosts.toml files it read go.
        what = (
            f"its first {node.config_file} is put back (containerd restarted if that changes it) "
            f"and our hosts.toml files leave {settings.containerd.config_path}"
        )
        steps = (
            NodeStep("restore-config", restore_config_step(settings, node), sensitive=False),
            NodeStep("restore-hosts", restore_hosts_step(settings, node), sensitive=False),
        )
    summary = (
        f"{node.name}: state restored: {what}; remove it from nodes afterwards "
        "(nothing runs on a node that leaves)",
    )
    return RestorePlan(probe, flavour, summary, steps, report_role=steps[0].role)


def held_roles(settings: Settings, node: Node) -> tuple[str, ...]:
    """The steps a managed node of this setting has: what a held node keeps in the state. The
    flavour is the node's setting (default plain containerd): a held node is not read."""
    access = (read_access.ROLE,) if settings.node_access.enabled else ()
    if FLAVOURS[node.flavour or "containerd"].is_distribution:
        return (*access, "registries")
    return (*access, *(("hosts",) if node.skip_config_path else ("hosts", "config")))


@dataclass(frozen=True)
class HeldPlan:
    """``held``: the node is not read and nothing runs on it. Its steps stay registered under
    their names with every input left as the state has it (ContainerdMirrors), so they neither
    change nor leave the state."""

    flavour: Flavour
    roles: tuple[str, ...]
    summary: tuple[str, ...]
    probe: None = None
    steps: tuple[NodeStep, ...] = ()
    report_role: str = ""
    state: str = "held"


def plan_held(settings: Settings, node: Node) -> HeldPlan:
    roles = held_roles(settings, node)
    flavour = FLAVOURS[node.flavour or "containerd"]
    summary = [
        f"{node.name}: held (nodes[].state): not read, nothing runs on it; its steps "
        f"({', '.join(roles)}) stay as the last apply left them",
    ]
    if node_role(node, flavour) == "control-plane":
        # The other servers check only themselves before their restart: with this one down, a
        # 3-member etcd is at 2, and each restart of another takes it to 1 until it is back.
        summary.append(
            f"warning: {node.name} is a control-plane node: the others still restart one at a "
            "time, and with it out a restart of another may leave the cluster without quorum "
            "until that one is back; hold them too if it cannot afford that"
        )
    return HeldPlan(flavour, roles, tuple(summary))


def _plan_containerd(
    settings: Settings, node: Node, probe: ProbeResult, cache: FleetCache | None
) -> NodePlan:
    where = f"node {node.name} ({node.address})"
    try:
        if probe.dropins or probe.imports_errors:
            # The drop-ins are part of what decides: nothing to share with other nodes.
            migration, files, imports = _migrate_with_imports(settings, probe)
        else:
            migration, files = _migrate_and_render(settings, probe, cache)
            imports = None
    except ImportsError as error:
        raise NodeStepError(f"{where}: {error}; nothing was changed") from None
    except ValueError as error:  # ConfigParseError
        raise NodeStepError(f"{where} {node.config_file}: {error}; nothing was changed") from None
    routes = None
    if not node.skip_config_path:
        try:
            routes = plan_routes(settings, probe, where, list(files))
        except RoutesError as error:
            raise NodeStepError(str(error)) from None
        except ValueError as error:  # a saved original that no longer parses
            raise NodeStepError(f"{where}: {error}; nothing was changed") from None
    changed = (migration.changed or (imports is not None and imports.changed)) and (
        not node.skip_config_path
    )
    dropins = (
        [(plan.probed.path, plan.guard, plan.text) for plan in imports.sent] if imports else []
    )
    # The config step leaves config.toml and the drop-ins it changed: each recorded on the node.
    # As it left them (all of them), the mark it was sent again; any of them not, a new one.
    drifted = [d for d in probe.dropins if d.applied_record_sha256 and not d.applied_from_sha256]
    config_left = probe.applied_from_sha256 is not None and not drifted
    records = [probe.applied_record_sha256 or ""] + [d.applied_record_sha256 or "" for d in drifted]
    record = (
        hashlib.sha256(" ".join(records).encode()).hexdigest() if drifted else None
    ) or probe.applied_record_sha256
    config_mark = apply_mark(config_left, probe.applied_mark, record)
    if migration.changed:
        config = config_step(
            settings, node, probe.config_sha256, migration.text, dropins, mark=config_mark
        )
    else:
        # Same text as on disk: apply-config.sh sees no difference and changes nothing. The guard
        # is the one sent when that text was written (its source's checksum), so an unchanged
        # node's step has the same inputs as last time: no diff in the preview, nothing run.
        guard = probe.applied_from_sha256 or probe.config_sha256
        config = config_step(settings, node, guard, probe.config_text, dropins, mark=config_mark)
    hosts_left = probe.hosts_applied_mark is not None
    hosts_mark = apply_mark(hosts_left, probe.hosts_applied_mark, probe.hosts_applied_record_sha256)
    carried = [(d.digest, d.name, d.source) for d in routes.dirs] if routes else []
    hosts = hosts_step(settings, node, files, carried, mark=hosts_mark)
    steps = [NodeStep("hosts", hosts, sensitive=False, trusts_ca=settings.tls.enabled)]
    if not node.skip_config_path:
        steps.append(NodeStep("config", config, sensitive=True))
    summary = _wildcard_summary(list(migration.summary), settings, files)
    if node.skip_config_path and migration.changed:
        summary.insert(
            0,
            f"{node.name}: skipConfigPath is set: {node.config_file} left as it is although it "
            "needs migrating; containerd ignores the hosts.toml files until config_path is set",
        )
    if not node.skip_config_path and not config_left and record:
        moved = [d.path for d in drifted]
        if probe.applied_record_sha256 and not probe.applied_from_sha256:
            moved.insert(0, node.config_file)
        what = " and ".join(moved)
        summary.insert(
            0,
            f"{node.name}: {what} is not what the last apply left (edited, or put back by "
            "someone else): the config step runs again",
        )
    if not hosts_left and probe.hosts_applied_record_sha256:
        summary.insert(
            0,
            f"{node.name}: a file the last apply left in {settings.containerd.config_path} (a "
            "hosts.toml, or a carried one) is not as it was left: the hosts step writes them again",
        )
    summary += [f"warning: {w}" for w in migration.warnings]
    if routes is not None:
        summary += list(routes.summary)
    if imports is not None:
        summary += list(imports.summary)
        summary += [f"warning: {w}" for w in imports.warnings]
    return NodePlan(
        probe=probe,
        migration=migration,
        hosts_files=dict(files),
        hosts=hosts,
        config=config,
        config_changed=changed,
        summary=tuple(summary),
        steps=tuple(steps),
        imports=imports,
        routes=routes,
    )


# --- k3s / RKE2: registries.yaml instead of config.toml -----------------------------------------


@dataclass(frozen=True)
class RegistriesPlan:
    """Everything decided from one probe of a k3s/RKE2 node."""

    probe: ProbeResult
    flavour: Flavour
    registries: Step
    changed: bool
    replaced_wildcard: bool
    summary: tuple[str, ...]
    # Its rollout: one step, registries.yaml (it may hold configs.*.auth: sensitive).
    steps: tuple[NodeStep, ...] = ()
    report_role: str = "registries"
    state: str = "managed"


def plan_registries(settings: Settings, node: Node, probe_stdout: str) -> RegistriesPlan:
    """Parse the probe, settle the flavour (a forced one must match the node), merge our mirrors
    into the node's registries.yaml. Anything unreadable stops here, naming the node, before a
    step that changes it is sent. For a plain containerd node use ``plan_node``."""
    probe, flavour = read_probe(node, probe_stdout)
    if not flavour.is_distribution:
        raise NodeStepError(
            f"node {node.name} ({node.address}) is plain containerd: use plan_node; "
            "nothing was changed"
        )
    return _plan_registries(settings, node, probe, flavour)


def _plan_registries(
    settings: Settings, node: Node, probe: ProbeResult, flavour: Flavour
) -> RegistriesPlan:
    where = f"node {node.name} ({node.address})"
    if probe.registries_file != flavour.registries_file:
        # The checksum guard only holds for the file that was probed.
        raise NodeStepError(
            f"{where}: probe.sh read {probe.registries_file!r}, {flavour.name} reads "
            f"{flavour.registries_file!r}; nothing was changed"
        )
    try:
        merge = merge_registries_yaml(
            probe.registries_text if probe.registries_exists else None, settings
        )
    except ValueError as error:  # RegistriesYamlError
        raise NodeStepError(
            f"{where} {flavour.registries_file}: {error}; nothing was changed"
        ) from None
    if merge.changed:
        text, guard = merge.text, probe.registries_sha256
    else:
        # As for config.toml: the guard it was written with, so an unchanged node shows no diff.
        text = probe.registries_text
        guard = probe.registries_applied_from_sha256 or probe.registries_sha256
    left = probe.registries_applied_from_sha256 is not None
    mark = apply_mark(left, probe.registries_applied_mark, probe.registries_applied_record_sha256)
    summary = [f"{node.name}: {flavour.name} (containerd {probe.containerd_version or '?'})"]
    if not left and probe.registries_applied_record_sha256:
        summary.append(
            f"{node.name}: {flavour.registries_file} is not what the last apply left (edited, "
            "or put back by someone else): the registries step runs again"
        )
    summary += [f"{node.name}: {line}" for line in merge.summary]
    registries = registries_step(settings, node, flavour, guard, text, mark)
    return RegistriesPlan(
        probe=probe,
        flavour=flavour,
        registries=registries,
        changed=merge.changed,
        replaced_wildcard=merge.replaced_wildcard,
        summary=tuple(summary),
        steps=(NodeStep("registries", registries, sensitive=True, trusts_ca=settings.tls.enabled),),
    )
