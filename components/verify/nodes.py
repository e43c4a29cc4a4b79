"""With --nodes, per node over SSH (the program's own probe and ssh client): the CRI plugin is ok,
containerd reads hosts.toml from the expected config_path with no ``mirrors`` left, each image
pulls through the node's hosts.toml AND lands in its mirror's cache, and each cache logged a
request only this node made (components/verify/bypass.py: a node that bypasses its mirror never
asks it, whatever other clients pull meanwhile)."""

from __future__ import annotations

import hashlib
import ssl
import time
import urllib.error
from collections.abc import Mapping
from typing import Any

from components.fleet import ReadMode, read_node_as, run_read
from components.plan.node_plan import NodePlan, plan_any, read_probe
from components.plan.node_steps import NodeStepError, Step, expected_config_path, verify_step
from components.settings import Node, Settings
from components.ssh_client import StepRun, run_on_node
from components.verify.bypass import bypass_rows, make_probes, read_seen
from components.verify.check import Check
from components.verify.mirror import _catalog, split_image

# Named by `ctr deprecations list` (containerd 1.7+) while any registry.mirrors entry is loaded.
MIRRORS_DEPRECATION = "io.containerd.deprecation/cri-registry-mirrors"


def node_report(stdout: str) -> tuple[dict[str, str], dict[str, bool]]:
    """verify-node.sh output -> (fields, {image: pulled ok})."""
    fields: dict[str, str] = {}
    pulls: dict[str, bool] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "pull":
            image, _, result = value.rpartition(" ")
            pulls[image] = result == "ok"
        else:
            fields[key] = value
    return fields, pulls


def check_node(
    settings: Settings,
    node: Node,
    mirrors: dict[str, Any],
    images: list[str],
    ssh_options: list[str],
    timeout: float,
    context: ssl.SSLContext | None = None,
    mode: ReadMode = "apply",
    probes: tuple[str, ...] = (),
) -> list[Check]:
    """``probes``: references pulled too, for the bypass check only (they exist nowhere: their
    pulls fail by design and get no row here)."""

    # The same ssh client and options the program reads the nodes with (--ssh-option first), and
    # the same identities (``mode``: README "The read identity").
    def runner(target: Node, step: Step) -> StepRun:
        return run_on_node(target, step, extra_options=ssh_options, timeout=timeout + 60)

    where = f"{node.ssh_user}@{node.address}:{node.ssh_port}"
    advice = "can this machine reach the node with the program's key (ssh-agent)?"
    # First the probe, as the program reads a node: which flavour, hence which containerd.
    try:
        probe = read_node_as(settings, node, runner, mode)
        _, flavour = read_probe(node, probe.run.stdout)
    except NodeStepError as error:
        return [Check(node.name, where, "probe", False, str(error), advice)]
    # Whoever answered the probe runs the check: the read identity asks for it by name only.
    where = f"{probe.node.ssh_user}@{node.address}:{node.ssh_port}"
    try:
        read = run_read(
            settings,
            node,
            runner,
            "verify",
            verify_step(settings, node, [*images, *probes], flavour),
            mode="apply" if probe.node.ssh_user == node.ssh_user else mode,
            flavour=flavour,
            images=[*images, *probes],
        )
    except NodeStepError as error:
        return [Check(node.name, where, "ssh", False, str(error), advice)]
    result = read.run
    if result.exit_code != 0 and "cri=" not in result.stdout:
        return [
            Check(
                node.name, where, "ssh", False,
                f"exit {result.exit_code}: {result.stderr.strip()[-300:]}", advice,
            )
        ]  # fmt: skip
    fields, pulls = node_report(result.stdout)
    expected = expected_config_path(settings, flavour)
    not_migrated = (
        f"{flavour.name} did not generate config_path from registries.yaml: run pulumi up"
        if flavour.is_distribution
        else "config.toml was not migrated (skipConfigPath?) or was edited since: run pulumi up"
    )
    checks = [
        Check(
            node.name, where, "cri", fields.get("cri") == "ok",
            f"{flavour.name}: cri plugin {fields.get('cri')}",
            "the CRI plugin is not ok: `ctr plugins ls --detailed` on the node; run pulumi up",
        ),
        Check(
            node.name, where, "config_path", fields.get("config_path") == expected,
            f"config_path={fields.get('config_path')!r} (expected {expected!r})", not_migrated,
        ),
        Check(
            node.name, where, "mirrors", fields.get("mirrors") == "0",
            f"{fields.get('mirrors')} mirrors entries",
            "`mirrors` next to config_path disables the CRI plugin: run pulumi up",
        ),
    ]  # fmt: skip
    if not flavour.is_distribution:
        # k3s/RKE2 write their own hosts.toml from registries.yaml (checked by config_path above
        # and the pulls): only a plain containerd node's files are the program's to compare.
        checks.append(hosts_check(settings, node, where, probe.run.stdout, result.stdout))
    # containerd 1.7+ only (1.6 reports "unsupported"): what the RUNNING daemon loaded, where
    # config_path/mirrors above come from the file on disk.
    deprecations = fields.get("deprecations", "unsupported")
    if deprecations != "unsupported":
        left = MIRRORS_DEPRECATION in deprecations.split()
        checks.append(
            Check(
                node.name, where, "deprecations", not left,
                "running containerd still has a `mirrors` entry" if left
                else "no cri-registry-mirrors deprecation",
                "containerd was not restarted since config.toml changed, or mirrors come from an "
                "imported file: `ctr deprecations list` on the node; run pulumi up",
            )
        )  # fmt: skip
    for image in images:
        host, repository = split_image(image)
        if not pulls.get(image):
            checks.append(
                Check(node.name, where, "pull", False, f"{image}: {result.stderr.strip()[-200:]}",
                      "see the error; is the mirror up and the upstream reachable?", image)
            )  # fmt: skip
            continue
        mirror = mirrors.get(host)
        if mirror is None:
            checks.append(
                Check(node.name, where, "pull", True, f"{image} ok (no mirror for {host})", "",
                      image)
            )  # fmt: skip
            continue
        try:
            cached = repository in _catalog(mirror["endpoint"].rstrip("/"), timeout, context)
        except (urllib.error.URLError, OSError, ValueError) as error:
            checks.append(Check(node.name, where, "pull", False, f"{image}: catalog: {error}",
                                "the mirror does not answer its catalog", image))  # fmt: skip
            continue
        checks.append(
            Check(
                node.name, where, "pull", cached,
                f"{image} {'cached in' if cached else 'NOT in'} {mirror['endpoint']}",
                "the pull bypassed the mirror: check certs.d/<host>/hosts.toml on the node",
                image,
            )
        )  # fmt: skip
    return checks


def hosts_check(
    settings: Settings, node: Node, where: str, probe_stdout: str, verify_stdout: str
) -> Check:
    """The node's hosts.toml files (verify-node.sh: ``hosts_toml=<dir> <sha256>``) against the
    files the program writes for it, planned from the same probe as ``pulumi up`` plans them
    (carried routes included). Missing or changed files fail; others in config_path are named."""
    advice = (
        "a hosts.toml was edited or removed since the last pulumi up (pulumi preview shows the "
        "node's hosts step): run pulumi up, it writes them back"
    )
    try:
        plan = plan_any(settings, node, probe_stdout)
    except NodeStepError as error:
        return Check(node.name, where, "hosts.toml", False, f"cannot plan the node: {error}",
                     "pulumi preview names the same problem")  # fmt: skip
    if not isinstance(plan, NodePlan):
        return Check(node.name, where, "hosts.toml", True, "written by the distribution")
    expected = {
        name: hashlib.sha256(text.encode()).hexdigest() for name, text in plan.hosts_files.items()
    }
    found: dict[str, str] = {}
    for line in verify_stdout.splitlines():
        if line.startswith("hosts_toml="):
            name, _, digest = line.removeprefix("hosts_toml=").partition(" ")
            found[name] = digest.strip()
    missing = sorted(name for name in expected if name not in found)
    changed = sorted(name for name in expected if name in found and found[name] != expected[name])
    others = sorted(name for name in found if name not in expected)
    parts = [f"missing: {', '.join(missing)}"] if missing else []
    parts += [f"changed: {', '.join(changed)}"] if changed else []
    if not parts:
        parts = [f"{len(expected)} as applied ({', '.join(sorted(expected))})"]
    if others:
        parts.append(f"not the program's: {', '.join(others)}")
    return Check(
        node.name, where, "hosts.toml", not missing and not changed, "; ".join(parts), advice
    )


def check_nodes(
    settings: Settings,
    outputs: Mapping[str, Any],
    probe_images: Mapping[str, str],
    images: list[str],
    ssh_options: list[str],
    timeout: float,
    context: ssl.SSLContext | None = None,
    mode: ReadMode = "apply",
    vm: bool = True,
) -> list[Check]:
    """Every node's checks, each followed by its bypass rows (one per cache: did this node's own
    request reach it). The caches' logs are read once, on the VM, after every node pulled;
    without the VM (``vm`` false: --no-vm) the bypass rows say so, and fail."""
    mirrors: dict[str, Any] = dict(outputs.get("mirrors") or {})
    # Older log lines are not read; ten minutes of slack for the VM's clock.
    since = int(time.time()) - 600
    done = []
    for node in settings.nodes:
        probes = make_probes(mirrors, probe_images)
        node_checks = check_node(
            settings, node, mirrors, images, ssh_options, timeout, context, mode,
            tuple(p.reference for p in probes),
        )  # fmt: skip
        # The pulls ran only when the node's check got that far (its own rows say why not).
        asked = not any(c.check in {"probe", "ssh"} and not c.ok for c in node_checks)
        done.append((node, probes, node_checks, asked))
    every = [p for _node, probes, _checks, asked in done if asked for p in probes]
    if not vm:
        seen, errors, unreadable = set(), {}, "--no-vm: the caches' logs on the VM were not read"
    elif every:
        seen, errors, unreadable = read_seen(outputs, since, every, ssh_options, timeout)
    else:
        seen, errors, unreadable = set(), {}, ""
    checks: list[Check] = []
    for node, probes, node_checks, asked in done:
        checks += node_checks + bypass_rows(node.name, probes, asked, seen, errors, unreadable)
    return checks
