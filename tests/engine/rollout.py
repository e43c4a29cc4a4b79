"""The rollout's graph with stand-in steps, and its order read from the engine's events.

Shared by tests/engine (the real engine, no plugin), tests/engine_plugins and bench/engine_cost.py.
``StandInMirrors`` is the program's own ``ContainerdMirrors`` whose steps are ``StepStandIn``
Stashes placed with the component's own ``_step_options``: see tests/engine/test_rollout.py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import pulumi

from components.containerd_mirrors import COMMAND_INPUTS, ContainerdMirrors
from components.fleet import plan_fleet
from components.plan.node_plan import AnyPlan, HeldPlan, NodeStep
from components.settings import Node, Settings, load_settings
from tests.engine.inline import EventLog
from tests.mocks import FakeFleet
from tests.sample import TEST_KEY, sample_raw

NAME = "containerd"


def step_names(plans: Mapping[str, AnyPlan], node: str) -> list[str]:
    plan = plans[node]
    roles = plan.roles if isinstance(plan, HeldPlan) else [step.role for step in plan.steps]
    return [f"{NAME}-{node}-{role}" for role in roles]


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


HAND_EDIT = (
    '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
    '  endpoint = ["http://10.0.20.10:5000"]\n'
)


# A read key of its own (never the apply key, sample_raw's TEST_KEY): with it, every node's chain
# starts with the step that installs the read identity (README "The read identity").
READ_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1cVmZ2wSx4Y2oCdXh8fF0L8l0CkqT3Gm9nR7qs4HhP rd"


def fleet_settings(nodes: int, batch_size: int, read_access: bool = False) -> Settings:
    raw = sample_raw()
    if read_access:
        raw["nodeAccess"] = {"readPublicKeys": [READ_KEY]}
    # Never contacted: the FakeFleet answers every probe.
    # Pinned (the program sends nothing to an unpinned node); never contacted either way.
    host_key = " ".join(TEST_KEY.split()[:2])
    raw["nodes"] = [
        {
            "name": f"node-{i}",
            "address": f"10.0.{30 + i // 250}.{i % 250 + 1}",
            "sshHostPublicKey": host_key,
        }
        for i in range(1, nodes + 1)
    ]
    raw["containerd"] = {"batchSize": batch_size}
    return load_settings(raw)


class StepStandIn(pulumi.Stash):
    """Where the program has a remote.Command: a Stash of the same name holding the step's
    inputs (its command and stdin; a step has no delete command), so the engine diffs exactly what
    it would diff for the command (an input change is an update; Stash has no replace)."""

    def __init__(
        self,
        name: str,
        step: NodeStep,
        opts: pulumi.ResourceOptions,
        delay: float = 0.0,
    ) -> None:
        inputs: Any = {
            "create": step.create.command,
            "stdin": (
                pulumi.Output.secret(step.create.stdin) if step.sensitive else step.create.stdin
            ),
        }
        if delay:
            # Resolves only after ``delay`` seconds: the step is registered (and created) late,
            # which gives an order the engine did not enforce the chance to show.
            inputs = pulumi.Output.from_input(asyncio.sleep(delay, result=inputs))
        super().__init__(name, input=inputs, opts=opts)
        # What ContainerdMirrors reads from the node's report step.
        self.stdout = pulumi.Output.from_input("")


class StandInMirrors(ContainerdMirrors):
    """The real component; its steps are StepStandIns with the real step options."""

    slow: frozenset[str] = frozenset()

    def _create_step(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        node: Node,
        step: NodeStep,
        connection: Any,
        gate: pulumi.Stash,
        previous: Any,
    ) -> StepStandIn:
        name = f"{self._base_name}-{node.name}-{step.role}"
        delay = 1.5 if name in self.slow else 0.0
        return StepStandIn(name, step, self._step_options(gate, previous), delay)

    def _create_held_step(  # pyright: ignore[reportIncompatibleMethodOverride]
        self,
        node: Node,
        role: str,
        connection: Any,
        gate: pulumi.Stash,
        previous: Any,
    ) -> pulumi.Stash:
        """A held node's step with the component's own options; the stand-in's one input is
        ``input``, so ignoring every input of the command is ignoring that."""
        options = self._step_options(gate, previous, ignore_changes=COMMAND_INPUTS)
        options.ignore_changes = ["input"]
        held = pulumi.Stash(f"{self._base_name}-{node.name}-{role}", input={}, opts=options)
        held.stdout = pulumi.Output.from_input("")  # pyright: ignore[reportAttributeAccessIssue]
        return held


class UngatedMirrors(StandInMirrors):
    """CONTROL: the same steps without their gate (children of the component, no order between
    nodes): the order checks below must fail on it."""

    def _step_options(
        self, gate: pulumi.Stash, previous: Any, ignore_changes: list[str] | None = None
    ) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self)


def program(
    settings: Settings,
    fleet: FakeFleet,
    plans_seen: list[Mapping[str, AnyPlan]],
    component: type[StandInMirrors] = StandInMirrors,
    slow: frozenset[str] = frozenset(),
) -> Callable[[], None]:
    """What components/program.py does for the nodes: read and plan every node first, then the
    caches (a stand-in: the program's RegistryMirrors needs the docker provider), then the
    rollout after them."""

    def run() -> None:
        plans = plan_fleet(settings, fleet)
        plans_seen.append(plans)
        caches = pulumi.Stash("registry-mirrors", input={"stand-in": "the caches"})
        cls = type("Mirrors", (component,), {"slow": slow})
        mirrors = cls(NAME, settings, plans, "/agent.sock", depends_on=[caches])
        pulumi.export("rollout", mirrors.batches)

    return run


def apply_to_nodes(fleet: FakeFleet, plans: Mapping[str, AnyPlan]) -> None:
    """What the steps do to the nodes on `pulumi up` (the FakeNode model of the scripts)."""
    for name, plan in plans.items():
        fleet.nodes[name].apply(
            {s.role: {"stdin": s.create.stdin, "create": s.create.command} for s in plan.steps}
        )
