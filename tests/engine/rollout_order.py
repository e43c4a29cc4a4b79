"""The rollout's order, read from the engine's events (tests/engine and tests/engine_plugins)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

from components.plan.node_plan import AnyPlan
from tests.engine.inline import EventLog

# The component's name in components/program.py: steps are ``containerd-<node>-<role>``, gates
# ``containerd-batch-<k>``.
NAME = "containerd"


def step_names(plans: Mapping[str, AnyPlan], node: str) -> list[str]:
    return [f"{NAME}-{node}-{step.role}" for step in plans[node].steps]


def assert_created_in_rollout_order(
    log: EventLog, batches: list[list[str]], plans: Mapping[str, AnyPlan]
) -> None:
    """From the engine's events: a gate is created after the caches (gate 0) or after the last
    step of every node of the batch before; every step after its gate is created and after the
    node's step before it."""
    assert log.started(f"{NAME}-batch-0", "create") > log.done("registry-mirrors", "create")
    for index, batch in enumerate(batches):
        gate = f"{NAME}-batch-{index}"
        if index:
            for node in batches[index - 1]:
                last = step_names(plans, node)[-1]
                assert log.started(gate, "create") > log.done(last, "create"), (gate, last)
        for node in batch:
            names = step_names(plans, node)
            assert log.started(names[0], "create") > log.done(gate, "create"), (names[0], gate)
            for before, after in itertools.pairwise(names):
                assert log.started(after, "create") > log.done(before, "create"), (after, before)
