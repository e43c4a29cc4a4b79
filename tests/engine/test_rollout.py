"""The rollout's order, kept by the REAL engine: gates, children, ``destroy`` and ``--target``.

The graph is the one components/containerd_mirrors.py builds, by the same class: the real
``ContainerdMirrors`` with its gates (``pulumi:index:Stash``, built in to the engine) and each
step's options from its own ``_step_options`` (parent = the batch's gate, ``depends_on`` = the
node's step before, the alias to the component). Only the leaf resource is a stand-in: each node
step is a Stash whose input is the step's exact command and stdin, where the
program makes a pulumi-command ``remote.Command`` (no provider plugin can be had here). So this
proves the ENGINE's ordering and diff of the rollout's graph, not pulumi-command: what a step
does on a node is proven over real SSH in tests/integration/test_node_e2e.py.

The nodes are planned by the real planner from FakeNodes (tests/mocks.py: what probe.sh prints,
and what an apply does to a node), so the step inputs are the program's own.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.plan.node_plan import AnyPlan
from tests.engine.inline import EngineFailed, EngineStack
from tests.engine.rollout import (
    HAND_EDIT,
    NAME,
    StandInMirrors,
    UngatedMirrors,
    apply_to_nodes,
    assert_created_in_rollout_order,
    fleet_settings,
    program,
    step_names,
)
from tests.engine.toolchain import require
from tests.mocks import FakeFleet

pytestmark = pytest.mark.engine


@pytest.fixture
def engine():
    return require()


@pytest.mark.parametrize("read_access", [False, True], ids=["apply-only", "read-identity"])
def test_up_creates_in_rollout_order_and_destroy_undoes_it_in_reverse(
    engine, tmp_path: Path, read_access: bool
) -> None:
    """With a read identity, each node's chain starts with its read access step: installed after
    the node's gate, before anything else of the node, deleted last of the node's steps."""
    settings = fleet_settings(nodes=7, batch_size=2, read_access=read_access)
    fleet = FakeFleet()
    seen: list[Mapping[str, AnyPlan]] = []
    # The canary's last step is slow: without the gate, batch 1 would start before it is done.
    slow = frozenset({f"{NAME}-node-1-config"})
    stack = EngineStack.create(
        engine, tmp_path, "rollout", program(settings, fleet, seen, slow=slow)
    )

    log = stack.up()

    batches = [["node-1"], ["node-2", "node-3"], ["node-4", "node-5"], ["node-6", "node-7"]]
    assert stack.stack.outputs()["rollout"].value == batches
    plans = seen[-1]
    firsts = {step_names(plans, node)[0].endswith("-read-access") for node in plans}
    assert firsts == {read_access}
    assert_created_in_rollout_order(log, batches, plans)
    every_step = {name for node in plans for name in step_names(plans, node)}
    assert set(log.ops()) == every_step | {f"{NAME}-batch-{i}" for i in range(4)} | {
        NAME,
        "registry-mirrors",
    }
    assert set(log.ops().values()) == {"create"}

    # destroy needs no program: the engine orders the deletes from the state alone.
    log = stack.destroy()
    for index, batch in enumerate(batches):
        gate = f"{NAME}-batch-{index}"
        for node in batch:
            names = step_names(plans, node)
            # A node's steps go in reverse, all before the gate goes (retained: nothing runs on
            # the node, which stays as the last apply left it).
            for before, after in itertools.pairwise(names):
                assert log.done(after, "delete") < log.started(before, "delete"), (after, before)
            assert log.done(names[0], "delete") < log.started(gate, "delete")
        if index:
            # Batch k is undone completely (its gate included) before batch k-1 starts.
            for node in batches[index - 1]:
                for name in step_names(plans, node):
                    assert log.done(gate, "delete") < log.started(name, "delete"), (gate, name)
    assert log.done(f"{NAME}-batch-0", "delete") < log.started("registry-mirrors", "delete")
    assert stack.our_resources() == []
    deletes = log.deletes()
    assert {name: deletes[name] for name in every_step} == dict.fromkeys(every_step, True)


def test_control_without_gates_the_order_check_fails(engine, tmp_path: Path) -> None:
    """The same fleet, the steps without their gates: the slow canary step is still running when
    batch 1 is created, and the check above says so. (It would pass if the check could not see
    disorder.)"""
    settings = fleet_settings(nodes=3, batch_size=2)
    seen: list[Mapping[str, AnyPlan]] = []
    slow = frozenset({f"{NAME}-node-1-config"})
    stack = EngineStack.create(
        engine,
        tmp_path,
        "ungated",
        program(settings, FakeFleet(), seen, component=UngatedMirrors, slow=slow),
    )
    log = stack.up()
    plans = seen[-1]
    canary_done = log.done(f"{NAME}-node-1-config", "create")
    assert log.started(f"{NAME}-node-2-hosts", "create") < canary_done
    with pytest.raises(AssertionError):
        assert_created_in_rollout_order(log, [["node-1"], ["node-2", "node-3"]], plans)


def test_no_change_then_a_hand_edit_shows_exactly_that_nodes_config_step(
    engine, tmp_path: Path
) -> None:
    """What README "What a reviewer sees in pulumi preview" promises, from the engine's diff: an
    unchanged fleet previews with no change (--expect-no-changes passes), a node edited by hand
    shows one update, its config step, and nothing else."""
    settings = fleet_settings(nodes=5, batch_size=2)
    fleet = FakeFleet()
    seen: list[Mapping[str, AnyPlan]] = []
    stack = EngineStack.create(engine, tmp_path, "diff", program(settings, fleet, seen))
    stack.up()
    apply_to_nodes(fleet, seen[-1])

    log = stack.preview(expect_no_changes=True)
    assert log.changed() == {}
    log = stack.up(expect_no_changes=True)
    assert log.changed() == {}
    apply_to_nodes(fleet, seen[-1])

    edited = fleet.nodes["node-4"]
    assert edited.config is not None
    edited.config += HAND_EDIT
    log = stack.preview()
    assert log.changed() == {f"{NAME}-node-4-config": "update"}
    failure = stack.fails("preview", expect_no_changes=True)
    assert "no changes were expected" in failure.text.lower()

    # A sixth node: batches [1], [2, 3], [4, 5] are full, so it gets a new gate and batch;
    # nothing of the five deployed nodes changes.
    grown = fleet_settings(nodes=6, batch_size=2)
    edited.config = edited.config.removesuffix(HAND_EDIT)
    log = stack.preview(program=program(grown, fleet, seen))
    assert log.changed() == {
        f"{NAME}-node-6-hosts": "create",
        f"{NAME}-node-6-config": "create",
        f"{NAME}-batch-3": "create",
    }


def test_target_of_one_node_keeps_the_order(engine, tmp_path: Path) -> None:
    """``up --target`` of one node's step: on a deployed fleet it updates that step alone; on a
    fresh stack the engine refuses to create it before its gate exists."""
    settings = fleet_settings(nodes=5, batch_size=2)
    fleet = FakeFleet()
    seen: list[Mapping[str, AnyPlan]] = []
    stack = EngineStack.create(engine, tmp_path, "target", program(settings, fleet, seen))
    stack.up()
    apply_to_nodes(fleet, seen[-1])
    for node in ("node-2", "node-5"):
        config = fleet.nodes[node].config
        assert config is not None
        fleet.nodes[node].config = config + HAND_EDIT

    target = stack.urn(f"{NAME}-node-5-config")
    log = stack.up(target=[target])
    assert log.changed() == {f"{NAME}-node-5-config": "update"}
    # node-2 (an earlier batch) was left alone: it still shows its change.
    assert stack.preview().changed() == {f"{NAME}-node-2-config": "update"}

    fresh = EngineStack.create(
        engine, tmp_path, "target-fresh", program(settings, FakeFleet(), []), backend=stack.backend
    )
    child = target.replace("urn:pulumi:target::", "urn:pulumi:target-fresh::")
    failure = fresh.fails("up", target=[child])
    assert "not specified in --target list" in failure.text, failure.text[-2000:]
    assert f"{NAME}-batch-2" in failure.text
    assert fresh.our_resources() == []


def test_upgrade_from_steps_under_the_component_replaces_nothing(engine, tmp_path: Path) -> None:
    """The alias the steps carry: a stack whose steps were children of the component (before
    the gates) is updated in place. Without the alias the engine would delete and recreate every
    step (for an older release's remote.Command, whose delete restored: restore the node, then
    migrate it again). The up writes retainOnDelete over the older release's steps, which had
    none: from then on no delete of a step runs anything on a node (the engine reads it from the
    OLD state)."""
    settings = fleet_settings(nodes=3, batch_size=2)
    fleet = FakeFleet()
    seen: list[Mapping[str, AnyPlan]] = []

    class Before(StandInMirrors):
        """The previous release's shape: steps are the component's children, no alias."""

        def _step_options(
            self, gate: pulumi.Stash, previous: Any, ignore_changes: list[str] | None = None
        ) -> pulumi.ResourceOptions:
            return pulumi.ResourceOptions(
                parent=self, depends_on=[previous] if previous is not None else None
            )

    class NoAlias(StandInMirrors):
        """CONTROL: the gated shape, without the alias."""

        def _step_options(
            self, gate: pulumi.Stash, previous: Any, ignore_changes: list[str] | None = None
        ) -> pulumi.ResourceOptions:
            options = super()._step_options(gate, previous, ignore_changes)
            options.aliases = None
            return options

    stack = EngineStack.create(
        engine, tmp_path, "upgrade", program(settings, fleet, seen, component=Before)
    )
    stack.up()
    apply_to_nodes(fleet, seen[-1])
    steps = {name for node in seen[-1] for name in step_names(seen[-1], node)}

    control = stack.preview(program=program(settings, fleet, seen, component=NoAlias)).changed()
    assert {name for name, op in control.items() if name in steps} == steps
    # Each step under its new URN is a create, its old URN a delete (same name: "create+delete").
    assert all(
        {"create", "delete"} <= set(op.split("+")) or op == "replace"
        for name, op in control.items()
        if name in steps
    ), control

    before = {r["urn"].rsplit("::", 1)[-1]: r for r in stack.our_resources()}
    assert not any(before[name].get("retainOnDelete") for name in steps)
    log = stack.up(program=program(settings, fleet, seen))
    assert not {name for name in log.changed() if name in steps}, log.changed()
    after = {r["urn"].rsplit("::", 1)[-1]: r for r in stack.our_resources()}
    assert set(after) >= steps
    assert all(after[name].get("retainOnDelete") for name in steps), after


def test_the_engine_reports_a_failed_preview(engine, tmp_path: Path) -> None:
    """EngineStack.fails sees a failing command (the helper the tests above rely on)."""

    def broken() -> None:
        raise pulumi.RunError("stand-in failure")

    stack = EngineStack.create(engine, tmp_path, "broken", broken)
    failure = stack.fails("preview")
    assert isinstance(failure, EngineFailed)
    assert "stand-in failure" in failure.text
