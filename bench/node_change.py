"""Part 2: what a change does to a node (real containerd 1.6.20, 1.7.24, 2.1.9, 2.2.9 and 2.3.7,
the project's node scripts over SSH), per containerd version
(tests/integration/containerd_versions.py; 1.7 and 2.1 come from
scripts/testenv/setup-containerd.sh, 2.2 and 2.3 from scripts/testenv/setup-containerd-go.sh; a
version not found is skipped and listed in the part's info).

The test host of tests/integration/testhost.py (netns + sshd + containerd, restart by pid file),
the settings of tests/integration/test_node_e2e.py (server and mirror addresses remapped onto the
test host's veth; nothing leaves the machine). One step = what ``pulumi up`` runs for one node:
probe, then hosts, then config (components/plan/node_steps.py builds each command + stdin).

Per round: containerd reset to the broken wildcard-mirror config, then
1. first apply (migration: restart expected), 2. no-op re-apply, 3. hosts.toml-only change
(the ghcr.io mirror's port), 4. config.toml change (``containerd.configPath``: new directory,
so config.toml changes and containerd restarts).
While a step runs a background thread polls CRI Version + Status every 50 ms and watches the
containerd pid.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.common import Figure, PartResult
from bench.crimon import Watch
from components.plan.node_plan import plan_node
from components.plan.node_probe import parse_step_result
from components.plan.node_steps import check_step, probe_step
from components.settings import Node, Settings, load_settings
from tests.integration.containerd_versions import V1_6, VERSIONS, ContainerdVersion
from tests.integration.test_node_e2e import make_settings, start_config
from tests.integration.testhost import NodeHost, node_host

STEPS = ("first apply", "no-op re-apply", "hosts.toml change", "config.toml change")
EXPECTED_RESTARTS = {
    "first apply": 1,
    "no-op re-apply": 0,
    "hosts.toml change": 0,
    "config.toml change": 1,
}


@contextmanager
def test_host(containerd: ContainerdVersion = V1_6) -> Iterator[NodeHost]:
    """A node host running ``containerd`` in a fresh temp dir; everything torn down (node_host's
    finally) and removed."""
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-node-"))
    try:
        # A new SSH connection per step, as pulumi-command makes one per command.
        with node_host(workdir, containerd, share_ssh=False) as host:
            yield host
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def variant(host: NodeHost, ghcr_port: int = 5010, config_path: str | None = None) -> Settings:
    # Distribution itself on the cache ports (no front): plain HTTP.
    settings = make_settings(host, ghcr_mirror_port=ghcr_port, tls=False)
    if config_path is None:
        return settings
    raw = settings.model_dump(by_alias=True, exclude_none=True, mode="json")
    raw["containerd"]["configPath"] = config_path
    return load_settings(raw)


def apply_node(host: NodeHost, settings: Settings, node: Node) -> dict[str, Any]:
    """probe -> plan -> hosts -> config, exactly as the component orders them for one node."""
    start = time.monotonic()
    probe = host.run_step(probe_step(settings, node))
    check_step(node, "probe", probe.returncode, probe.stderr)
    plan = plan_node(settings, node, probe.stdout)
    hosts = host.run_step(plan.hosts)
    check_step(node, "hosts", hosts.returncode, hosts.stderr)
    config = host.run_step(plan.config)
    check_step(node, "config", config.returncode, config.stderr)
    result = parse_step_result(config.stdout)
    return {
        "seconds": time.monotonic() - start,
        "restarted": result.restarted,
        "hosts_written": list(parse_step_result(hosts.stdout).written),
    }


def reset(host: NodeHost) -> None:
    for name in ("certs.d", "certs2.d"):
        shutil.rmtree(host.etc_containerd / name, ignore_errors=True)
    host.start_containerd(start_config(f"http://{host.host_address}:5000"))
    assert host.cri_status() == "ok", host.containerd_log.read_text()[-2000:]


def measure(host: NodeHost, settings: Settings) -> dict[str, Any]:
    node = settings.nodes[0]
    with Watch(host.containerd_socket, lambda: host.containerd_pid) as watch:
        result = apply_node(host, settings, node)
    result["restarts"] = watch.restarts
    result["cri_unavailable_seconds"] = watch.unavailable_seconds
    result["polls"] = len(watch.samples)
    return result


def run(
    rounds: int = 3, log: Any = print, versions: Sequence[ContainerdVersion] = VERSIONS
) -> PartResult:
    part = PartResult("node")
    part.info["shape"] = (
        "one test host per containerd version (netns + sshd + containerd, native snapshotter); "
        "steps over real SSH as root (a new connection per step), restart = kill by pid + start"
    )
    part.info["containerd"] = {}
    for version in versions:
        if version.bin_dir() is None:
            log(f"  node: containerd {version.version} not found: skipped ({version.setup})")
            part.info["containerd"][version.version] = "not found: skipped"
            continue
        load_before = os.getloadavg()[0]
        _run_version(part, version, rounds, log)
        # Other work on the machine stretches every ssh round trip: keep the context.
        part.info["containerd"][version.version] = (
            f"measured; 1-min load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after (2 cores)"
        )
    return part


def _run_version(part: PartResult, version: ContainerdVersion, rounds: int, log: Any) -> None:
    data: dict[str, dict[str, list[float]]] = {
        s: {"seconds": [], "restarts": [], "unavailable": []} for s in STEPS
    }
    with test_host(version) as host:
        settings = variant(host)
        changes = {
            "first apply": settings,
            "no-op re-apply": settings,
            "hosts.toml change": variant(host, ghcr_port=5030),
            "config.toml change": variant(
                host, ghcr_port=5030, config_path="/etc/containerd/certs2.d"
            ),
        }
        for round_ in range(rounds):
            reset(host)
            for step in STEPS:
                result = measure(host, changes[step])
                data[step]["seconds"].append(result["seconds"])
                data[step]["restarts"].append(result["restarts"])
                data[step]["unavailable"].append(result["cri_unavailable_seconds"])
                log(
                    f"  node {version.version} round {round_ + 1} {step}: "
                    f"{result['seconds']:.2f}s, "
                    f"{result['restarts']} restart(s), CRI unavailable "
                    f"{result['cri_unavailable_seconds']:.2f}s ({result['polls']} polls)"
                )
    name = f"containerd {version.version}"
    for step in STEPS:
        wall = part.add(
            Figure(
                "node", f"{name} {step}: wall time (probe+hosts+config)", "s",
                data[step]["seconds"],
            )
        )  # fmt: skip
        expected = EXPECTED_RESTARTS[step]
        part.add(
            Figure("node", f"{name} {step}: containerd restarts", "count", data[step]["restarts"])
        ).check(lambda v, e=expected: v == e and True, f"== {expected}")
        # Every run must match, not only the median.
        part.figures[-1].met = all(r == expected for r in data[step]["restarts"])
        unavailable = part.add(
            Figure(
                "node",
                f"{name} {step}: CRI unavailable",
                "s",
                data[step]["unavailable"],
                note="longest gap in CRI Version+Status polls (50 ms)",
            )
        )
        if expected:
            unavailable.check(lambda v: v < 3, "< 3 s")
        if step == "no-op re-apply":
            wall.check(lambda v: v < 2, "< 2 s")
