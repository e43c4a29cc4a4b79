"""Part 4: rollout over 4 test hosts, batch sizes 1 and 2, and the node reads before it.

As ``pulumi up`` runs it: first every node is read and planned while the program runs
(components.fleet.plan_fleet: the system ssh client with an ssh-agent and the pinned host keys,
``containerd.probeConcurrency`` at a time; measured at 4 and at 1, i.e. in parallel and one after
another), then the steps in the component's order (components.containerd_mirrors.rollout_batches:
canary alone, then batches; the nodes of a batch concurrently, as Pulumi would, the next batch only
after the whole previous batch finished): hosts -> config from the broken wildcard-mirror state
(a restart per node). Four hosts of tests/integration/testhost.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.common import Figure, PartResult
from bench.node_change import reset, test_host
from components.containerd_mirrors import rollout_batches
from components.fleet import plan_fleet, ssh_runner
from components.plan.node_plan import AnyPlan
from components.plan.node_probe import parse_step_result
from components.plan.node_steps import check_step
from components.settings import Node, Settings, load_settings
from tests.integration.test_node_e2e import make_settings
from tests.integration.testhost import NodeHost

HOSTS = 4
BATCH_SIZES = (1, 2)


def fleet_settings(hosts: list[NodeHost], batch_size: int, concurrency: int = HOSTS) -> Settings:
    raw = make_settings(hosts[0], tls=False).model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    raw["nodes"] = [
        {
            "name": f"node-{i + 1}",
            "address": h.node_address,
            "restartCommand": h.restart_command,
            "sshHostPublicKey": h.host_public_key,
        }
        for i, h in enumerate(hosts)
    ]
    raw["containerd"]["batchSize"] = batch_size
    raw["containerd"]["probeConcurrency"] = concurrency
    return load_settings(raw)


def read_fleet(hosts: list[NodeHost], settings: Settings) -> tuple[float, dict[str, AnyPlan]]:
    """Every node read and planned as the program does, over real SSH (one agent holds every
    host's key, as the operator's agent holds the program's)."""
    start = time.monotonic()
    plans = plan_fleet(settings, ssh_runner(hosts[0].agent_socket))
    return time.monotonic() - start, plans


def apply_steps(host: NodeHost, node: Node, plan: AnyPlan) -> bool:
    """The node's steps in order; True if its containerd restarted."""
    stdout = ""
    for step in plan.steps:
        result = host.run_step(step.create)
        check_step(node, step.role, result.returncode, result.stderr)
        stdout = result.stdout
    return parse_step_result(stdout).restarted


def rollout(
    hosts: list[NodeHost], settings: Settings, plans: dict[str, AnyPlan]
) -> tuple[float, list[float]]:
    by_name = {f"node-{i + 1}": h for i, h in enumerate(hosts)}
    batches = rollout_batches(settings.nodes, settings.containerd.batch_size)
    per_batch: list[float] = []
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        for batch in batches:
            batch_start = time.monotonic()
            futures = [pool.submit(apply_steps, by_name[n.name], n, plans[n.name]) for n in batch]
            for future in futures:
                assert future.result()
            per_batch.append(time.monotonic() - batch_start)
    return time.monotonic() - start, per_batch


def run(rounds: int = 3, log: Any = print) -> PartResult:
    part = PartResult("rollout")
    totals: dict[int, list[float]] = {b: [] for b in BATCH_SIZES}
    per_batch: dict[int, list[float]] = {b: [] for b in BATCH_SIZES}
    batch_counts: dict[int, int] = {}
    reads: dict[int, list[float]] = {HOSTS: [], 1: []}
    with contextlib.ExitStack() as stack:
        hosts = [stack.enter_context(test_host()) for _ in range(HOSTS)]
        for host in hosts[1:]:
            subprocess.run(
                ["ssh-add", "-q", str(host.key)],
                env={**os.environ, "SSH_AUTH_SOCK": hosts[0].agent_socket},
                check=True,
                capture_output=True,
            )
        for round_ in range(rounds):
            for batch_size in BATCH_SIZES:
                settings = fleet_settings(hosts, batch_size)
                batch_counts[batch_size] = len(
                    rollout_batches(settings.nodes, settings.containerd.batch_size)
                )
                for host in hosts:
                    reset(host)
                sequential, _ = read_fleet(hosts, fleet_settings(hosts, batch_size, 1))
                parallel, plans = read_fleet(hosts, settings)
                reads[1].append(sequential)
                reads[HOSTS].append(parallel)
                log(f"  node reads: {HOSTS} at once {parallel:.2f}s, one by one {sequential:.2f}s")
                total, batches = rollout(hosts, settings, plans)
                totals[batch_size].append(total)
                per_batch[batch_size].append(total / len(batches))
                log(
                    f"  rollout round {round_ + 1} batch size {batch_size}: {total:.2f}s, "
                    f"batches {[round(b, 2) for b in batches]}"
                )
    for b in BATCH_SIZES:
        part.add(
            Figure("rollout", f"batch size {b} ({batch_counts[b]} batches, {HOSTS} nodes): total",
                   "s", totals[b])
        )  # fmt: skip
        part.add(Figure("rollout", f"batch size {b}: time per batch", "s", per_batch[b]))
    part.add(
        Figure("rollout", f"read {HOSTS} nodes over real SSH: probeConcurrency {HOSTS}", "s",
               reads[HOSTS], note="during the program run, before any resource")
    )  # fmt: skip
    part.add(
        Figure("rollout", f"read {HOSTS} nodes over real SSH: probeConcurrency 1", "s", reads[1],
               note="one after another")
    )  # fmt: skip
    ratio = [a / b for a, b in zip(per_batch[2], per_batch[1], strict=True)]
    part.add(
        Figure("rollout", "time per batch, batch size 2 / batch size 1", "ratio", ratio,
               note="~1: time follows batches; ~2: it follows nodes")
    ).check(lambda v: v < 1.3, "< 1.3 (time grows with batches, not nodes)")  # fmt: skip
    expected = batch_counts[2] / batch_counts[1]
    part.add(
        Figure("rollout", "total, batch size 2 / batch size 1", "ratio",
               [a / b for a, b in zip(totals[2], totals[1], strict=True)],
               note=f"batches ratio {batch_counts[2]}/{batch_counts[1]} = {expected:.2f}; "
               "nodes ratio 1.00")
    )  # fmt: skip
    return part
