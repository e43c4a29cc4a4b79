"""Issue 27 items 1-3 under the REAL engine: what a preview shows and what an up deletes when a
node drifts back to its original, is renamed, or is down and held out.

The graph is the program's own ``ContainerdMirrors`` with stand-in steps (tests/engine/rollout.py:
Stashes holding each step's exact command and stdin, with the component's own step options:
parent gate, alias, ``retain_on_delete``, and for a held node ``ignore_changes``). The nodes are
FakeNodes planned by the real planner. What the scripts do on a node is proven over real SSH in
tests/integration/test_node_e2e.py; that the engine skips a provider's Delete for a resource whose
OLD state says retainOnDelete is the engine's (pkg/resource/deploy/step.go): here the engine's
own events say which state each delete came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.plan.node_plan import AnyPlan
from components.settings import Settings, load_settings
from tests.engine.inline import EngineStack
from tests.engine.rollout import (
    NAME,
    StandInMirrors,
    apply_to_nodes,
    fleet_settings,
    program,
    step_names,
)
from tests.engine.toolchain import require
from tests.mocks import FakeFleet
from tests.sample import sample_raw

pytestmark = pytest.mark.engine


@pytest.fixture
def engine():
    return require()


def _edited(settings: Settings, **changes: dict[str, Any]) -> Settings:
    """``settings`` with per-node changes ({node name: {key: value}}, camelCase keys)."""
    raw = sample_raw()
    raw["nodes"] = [
        {**n.model_dump(by_alias=True, exclude_defaults=True), **changes.get(n.name, {})}
        for n in settings.nodes
    ]
    raw["containerd"] = {"batchSize": settings.containerd.batch_size}
    return load_settings(raw)


def _deployed(
    engine: Any, tmp_path: Path, name: str, settings: Settings
) -> tuple[EngineStack, FakeFleet, list[Mapping[str, AnyPlan]]]:
    fleet = FakeFleet()
    seen: list[Mapping[str, AnyPlan]] = []
    stack = EngineStack.create(engine, tmp_path, name, program(settings, fleet, seen))
    stack.up()
    apply_to_nodes(fleet, seen[-1])
    assert stack.preview().changed() == {}
    return stack, fleet, seen


def test_a_node_put_back_to_its_original_shows_its_config_step_and_up_brings_it_back(
    engine, tmp_path: Path
) -> None:
    """Item 1: config.toml back to the very file it had before the first apply (a config manager,
    a reinstall) plans the same text as the first apply; the mark the probe no longer gives back
    makes the step differ, so the real engine previews an update of exactly that step. After the
    up, no change again; a second revert differs again."""
    settings = fleet_settings(nodes=3, batch_size=2)
    stack, fleet, seen = _deployed(engine, tmp_path, "revert", settings)
    node = fleet.nodes["node-2"]
    assert node.original is not None and node.config != node.original

    for _ in range(2):
        node.config = node.original
        assert stack.preview().changed() == {f"{NAME}-node-2-config": "update"}
        assert stack.up().changed() == {f"{NAME}-node-2-config": "update"}
        apply_to_nodes(fleet, seen[-1])
        assert node.config != node.original
        assert stack.preview().changed() == {}


def test_a_rename_creates_the_new_steps_and_deletes_the_old_ones_retained(
    engine, tmp_path: Path
) -> None:
    """Item 2: a renamed node's old steps leave the program. The engine deletes them from a state
    that says retainOnDelete, so it runs no Delete of theirs (the old release's delete restored
    the node and removed the hosts.toml files the new steps had just written). The new steps find
    the node as the old ones left it. CONTROL: the same rename with steps that are not
    retainOnDelete shows deletes the check catches."""
    settings = fleet_settings(nodes=3, batch_size=2)
    stack, fleet, seen = _deployed(engine, tmp_path, "rename", settings)
    fleet.nodes["node-9"] = fleet.nodes["node-2"]  # the same machine under its new name
    config = fleet.nodes["node-2"].config
    renamed = _edited(settings, **{"node-2": {"name": "node-9"}})

    log = stack.up(program=program(renamed, fleet, seen))
    old = [f"{NAME}-node-2-hosts", f"{NAME}-node-2-config"]
    new = [f"{NAME}-node-9-hosts", f"{NAME}-node-9-config"]
    steps = {name: op for name, op in log.changed().items() if "-node-" in name}
    assert steps == {**dict.fromkeys(new, "create"), **dict.fromkeys(old, "delete")}
    assert log.deletes() == dict.fromkeys(old, True)
    apply_to_nodes(fleet, seen[-1])
    assert fleet.nodes["node-9"].config == config  # nothing restored, nothing rewritten
    assert stack.preview(program=program(renamed, fleet, seen)).changed() == {}

    class NotRetained(StandInMirrors):
        def _step_options(
            self, gate: pulumi.Stash, previous: Any, ignore_changes: list[str] | None = None
        ) -> pulumi.ResourceOptions:
            options = super()._step_options(gate, previous, ignore_changes)
            options.retain_on_delete = None
            return options

    control = EngineStack.create(
        engine,
        tmp_path,
        "rename-control",
        program(settings, FakeFleet(), [], component=NotRetained),
        backend=stack.backend,
    )
    control.up()
    log = control.up(program=program(renamed, FakeFleet(), [], component=NotRetained))
    assert log.deletes() == dict.fromkeys(old, False)


def test_a_held_node_that_is_down_keeps_its_steps_while_the_rest_is_updated(
    engine, tmp_path: Path
) -> None:
    """Item 3: node-2 is down. Not held, the program stops before anything is registered (so a
    preview fails). Held, it is not read; its steps keep the state's inputs (ignore_changes), so
    the engine leaves them as they are, and node-3's hand edit is previewed and applied. Back and
    managed again: read, nothing to do."""
    settings = fleet_settings(nodes=3, batch_size=2)
    stack, fleet, seen = _deployed(engine, tmp_path, "held", settings)
    before = {r["urn"].rsplit("::", 1)[-1]: r for r in stack.our_resources()}
    down = fleet.nodes["node-2"]
    down.reachable = False
    edited = fleet.nodes["node-3"]
    assert edited.config is not None
    edited.config += "# tuned\n"

    failure = stack.fails("preview")
    assert "nodes[].state: held" in failure.text, failure.text[-2000:]

    held = _edited(settings, **{"node-2": {"state": "held"}})
    reads = fleet.reads["node-2"]
    log = stack.preview(program=program(held, fleet, seen))
    assert log.changed() == {f"{NAME}-node-3-config": "update"}
    ops = log.ops()
    assert all(ops[name] == "same" for name in step_names(seen[-1], "node-2"))
    log = stack.up(program=program(held, fleet, seen))
    assert log.changed() == {f"{NAME}-node-3-config": "update"}
    assert fleet.reads["node-2"] == reads  # never dialled
    after = {r["urn"].rsplit("::", 1)[-1]: r for r in stack.our_resources()}
    for name in (f"{NAME}-node-2-hosts", f"{NAME}-node-2-config"):
        assert after[name]["inputs"] == before[name]["inputs"], name
    apply_to_nodes(fleet, {n: p for n, p in seen[-1].items() if n != "node-2"})

    down.reachable = True
    assert stack.preview().changed() == {}
