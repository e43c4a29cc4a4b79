"""ContainerdMirrors wiring under Pulumi mocks (preview=False; every test RETURNS its Output).

The nodes are read and planned before the component exists (components/fleet.py), here from
FakeNodes (tests/mocks.py) that answer as probe.sh would and change as the scripts would.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components.containerd_mirrors import ContainerdMirrors, rollout_batches
from components.fleet import FleetReadError, plan_fleet
from components.plan.node_plan import AnyPlan
from components.plan.node_steps import (
    CA_SECTION,
    CA_SECTION_END,
    HOSTS_HEADER,
    restore_config_step,
    restore_registries_step,
)
from components.renderers.flavours import FLAVOURS
from components.renderers.shell import script_text
from components.settings import Settings, load_settings
from tests.mocks import (
    BROKEN,
    COMMAND,
    TEST_CA_PEM,
    EnginePlan,
    FakeFleet,
    FakeNode,
    RecordingMocks,
    Registered,
    content_of,
    engine_plan,
    fake_node_outputs,
    install_mocks,
    is_secret,
    plain,
    urn_of,
)
from tests.sample import NODE_HOST_KEYS, sample_raw

STASH = "pulumi:index:Stash"
COMPONENT = "registry-mirrors:cluster:ContainerdMirrors"
FIXTURES = Path(__file__).parent / "fixtures"
# A node that also had its own mirror for a registry we do not cache: it must keep it.
WITH_OWN_MIRROR = BROKEN + (
    '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."harbor.corp.example"]\n'
    '  endpoint = ["https://harbor-mirror.corp.example"]\n'
)


def settings_with(nodes: int = 3, batch_size: int = 2, skip: tuple[str, ...] = ()) -> Settings:
    raw = sample_raw()
    raw["nodes"] = [
        {
            "name": f"node-{i}",
            "address": f"10.0.30.{i}",
            "skipConfigPath": f"node-{i}" in skip,
            "sshHostPublicKey": NODE_HOST_KEYS[0],
        }
        for i in range(1, nodes + 1)
    ]
    raw["containerd"] = {"batchSize": batch_size}
    return load_settings(raw)


@pytest.fixture
def node_mocks() -> RecordingMocks:
    mocks = install_mocks()
    mocks.outputs_for[COMMAND] = fake_node_outputs
    return mocks


def build(
    settings: Settings, fleet: FakeFleet | None = None, name: str = "cm"
) -> tuple[ContainerdMirrors, dict[str, AnyPlan]]:
    plans = plan_fleet(settings, fleet or FakeFleet())
    trust = pulumi.Output.from_input(TEST_CA_PEM)
    return ContainerdMirrors(name, settings, plans, "/agent.sock", trust_bundle=trust), plans


def steps_of(mocks: RecordingMocks) -> dict[str, Registered]:
    return {r.name: r for r in mocks.of_type(COMMAND)}


def run_program(body: Callable[[], pulumi.Output[Any]]) -> None:
    pulumi.runtime.test(body)()


def settled(mirrors: ContainerdMirrors) -> pulumi.Output[list[Any]]:
    """Resolves once every step and gate is registered: [report per node..., urns...]."""
    urns = [step.urn for steps in mirrors.commands.values() for step in steps.values()]
    return pulumi.Output.all(*mirrors.nodes.values(), *urns, *[g.urn for g in mirrors.gates])


def test_rollout_is_canary_then_batches() -> None:
    nodes = settings_with(nodes=6, batch_size=2).nodes
    assert [[n.name for n in b] for b in rollout_batches(nodes, 2)] == [
        ["node-1"],
        ["node-2", "node-3"],
        ["node-4", "node-5"],
        ["node-6"],
    ]
    assert rollout_batches([], 3) == []


# --- rollout order ------------------------------------------------------------------------------


def _edges(mocks: RecordingMocks) -> dict[str, set[str]]:
    """What each resource waits for in the engine: its depends_on, and its parent when that is a
    custom resource (a component's URN resolves at once; a custom parent's once it exists)."""
    custom = {r.name for r in mocks.resources if r.type != COMPONENT}
    return {
        r.name: set(r.depends_on) | ({r.parent} if r.parent in custom else set())
        for r in mocks.resources
    }


def assert_rollout_order(mocks: RecordingMocks, mirrors: ContainerdMirrors, prefix: str) -> None:
    """Every step of batch k+1 waits, transitively, for the last step of every node of batch k;
    every node's steps run in order; nothing in a batch waits for another node of it."""
    edges = _edges(mocks)
    batch_of = {
        f"{prefix}-{node}-{role}": index
        for index, batch in enumerate(mirrors.batches)
        for node in batch
        for role in mirrors.commands[node]
    }

    def reaches(start: str, stop_below: int) -> set[str]:
        """Ancestors of ``start``, not expanding past resources of batches before stop_below."""
        seen: set[str] = set()
        todo = deque(edges[start])
        while todo:
            current = todo.popleft()
            if current in seen:
                continue
            seen.add(current)
            if batch_of.get(current, stop_below) >= stop_below:
                todo.extend(edges.get(current, ()))
        return seen

    for index in range(1, len(mirrors.batches)):
        lasts = {
            f"{prefix}-{node}-{list(mirrors.commands[node])[-1]}"
            for node in mirrors.batches[index - 1]
        }
        for node in mirrors.batches[index]:
            for role in mirrors.commands[node]:
                ancestors = reaches(f"{prefix}-{node}-{role}", index - 1)
                assert lasts <= ancestors, (node, role, sorted(lasts - ancestors))
                others = {f"{prefix}-{o}-" for o in mirrors.batches[index] if o != node}
                assert not any(a.startswith(tuple(others)) for a in ancestors), (node, role)
    for node, commands in mirrors.commands.items():
        roles = list(commands)
        for before, after in itertools.pairwise(roles):
            assert f"{prefix}-{node}-{before}" in edges[f"{prefix}-{node}-{after}"]


def test_each_batch_waits_for_the_previous_batch_through_its_gate(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(settings_with(nodes=4, batch_size=2))
        assert mirrors.batches == [["node-1"], ["node-2", "node-3"], ["node-4"]]

        def check(_: Any) -> None:
            gates = {r.name: r for r in node_mocks.of_type(STASH)}
            assert sorted(gates) == ["cm-batch-0", "cm-batch-1", "cm-batch-2"]
            assert all(g.parent == "cm" for g in gates.values())
            assert gates["cm-batch-0"].depends_on == []
            assert gates["cm-batch-1"].depends_on == ["cm-node-1-config"]
            assert gates["cm-batch-2"].depends_on == ["cm-node-2-config", "cm-node-3-config"]
            steps = steps_of(node_mocks)
            assert steps["cm-node-2-hosts"].parent == "cm-batch-1"
            assert steps["cm-node-2-hosts"].depends_on == []
            assert steps["cm-node-2-config"].depends_on == ["cm-node-2-hosts"]
            assert steps["cm-node-4-config"].parent == "cm-batch-2"
            assert_rollout_order(node_mocks, mirrors, "cm")

        return settled(mirrors).apply(check)

    return run()


def test_a_fleet_deep_enough_to_have_crashed_the_sdk_keeps_its_order() -> None:
    """1,700 nodes in batches of 5 (341 batches): the old depends_on chain made the SDK's
    cycle check recurse once per batch and raise RecursionError past ~1,650 nodes."""
    mocks = install_mocks()
    mocks.outputs_for[COMMAND] = fake_node_outputs
    raw = sample_raw()
    raw["nodes"] = [
        {
            "name": f"n{i:04d}",
            "address": f"10.100.{i // 250}.{i % 250 + 1}",
            "sshHostPublicKey": NODE_HOST_KEYS[0],
        }
        for i in range(1700)
    ]
    settings = load_settings(raw)
    holder: dict[str, ContainerdMirrors] = {}

    def body() -> pulumi.Output[Any]:
        holder["cm"], _ = build(settings, name="deep")
        return settled(holder["cm"])

    run_program(body)
    mirrors = holder["cm"]
    assert len(mirrors.batches) == 341
    assert len(mocks.of_type(COMMAND)) == 3400
    assert_rollout_order(mocks, mirrors, "deep")


# --- what each step is -------------------------------------------------------------------------


def test_steps_per_node_secrets_logging_and_no_trigger_that_replaces(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(settings_with(nodes=2))

        def check(_: Any) -> None:
            steps = steps_of(node_mocks)
            assert sorted(steps) == [
                f"cm-node-{i}-{role}" for i in (1, 2) for role in ("config", "hosts")
            ]
            config = steps["cm-node-1-config"].inputs
            hosts = steps["cm-node-1-hosts"].inputs
            assert config["logging"] == "none"
            assert config["addPreviousOutputInEnv"] is False
            assert is_secret(config["stdin"])
            stdin = content_of(config["create"], config["stdin"]["value"])
            assert "config_path" in stdin and "mirrors" not in stdin
            assert "s3cret" not in str(config["create"]) and "apply-config.sh" in config["create"]
            assert "EXPECTED_SHA256=" in config["create"] and "APPLY_MARK=" in config["create"]
            # The script travels on stdin: the command stays short (what pulumi-command prints
            # before the output of a failed step).
            assert len(config["create"]) < 1000 and len(hosts["create"]) < 1000
            assert "/agent.sock" in str(config["connection"]), config["connection"]
            assert "s3cret" not in repr(hosts)  # the hosts.toml bundle holds no credential
            for step in steps.values():
                # pulumi-command's SDK replaces a Command on any change of triggers[*]
                # (pulumi-command #855); with no triggers no replacement can be fired.
                assert "triggers" not in step.inputs, step.name
                assert all(path.startswith("triggers") for path in step.replace_on_changes)
                assert step.inputs.get("update") is None, step.name
                # Leaving the program never runs anything on the node: no delete command, and
                # the engine does not even call the provider's Delete.
                assert step.inputs.get("delete") is None, step.name
                assert step.retain_on_delete, step.name

        return settled(mirrors).apply(check)

    return run()


def test_report_per_node(node_mocks: RecordingMocks) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(settings_with(nodes=1))

        def check(report: dict[str, Any]) -> None:
            assert report["containerdVersion"] == "1.6.20"
            assert report["configChanged"] is True and report["restarted"] is True
            assert report["deprecations"] == ["io.containerd.deprecation/cri-registry-configs"]
            assert report["summary"]

        return mirrors.nodes["node-1"].apply(check)

    return run()


def test_skip_config_path_writes_hosts_only_and_says_so(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        settings = settings_with(nodes=3, batch_size=1, skip=("node-2",))
        mirrors, _ = build(settings)
        assert set(mirrors.commands["node-2"]) == {"hosts"}

        def check(report: dict[str, Any]) -> None:
            steps = steps_of(node_mocks)
            assert "cm-node-2-config" not in steps and "cm-node-1-config" in steps
            # The next batch waits for the skipped node's hosts step instead.
            assert node_mocks.named("cm-batch-2").depends_on == ["cm-node-2-hosts"]
            assert report["configChanged"] is False and report["restarted"] is False
            assert any("skipConfigPath" in line for line in report["summary"])

        return settled(mirrors).apply(lambda values: check(values[1]))

    return run()


# --- preview: what a reviewer sees --------------------------------------------------------------


def _step_inputs(mocks: RecordingMocks) -> dict[str, dict[str, Any]]:
    """Every node step's inputs as the engine diffs them (secrets unwrapped)."""
    return {
        r.name: {k: plain(v) for k, v in r.inputs.items() if k != "connection"}
        for r in mocks.of_type(COMMAND)
    }


def _deploy(settings: Settings, fleet: FakeFleet) -> dict[str, dict[str, Any]]:
    """One program run (preview or up: the same program), then what `up` does to the nodes.
    Returns the node steps' inputs of that run."""
    mocks = install_mocks()
    mocks.outputs_for[COMMAND] = fake_node_outputs

    def body() -> pulumi.Output[Any]:
        mirrors, _ = build(settings, fleet)
        return settled(mirrors)

    run_program(body)
    inputs = _step_inputs(mocks)
    for node in settings.nodes:
        prefix = f"cm-{node.name}-"
        fleet.nodes[node.name].apply(
            {
                name.removeprefix(prefix): step
                for name, step in inputs.items()
                if name.startswith(prefix)
            }
        )
    return inputs


def test_an_unchanged_fleet_shows_no_change_on_the_next_run() -> None:
    settings = settings_with(nodes=3)
    fleet = FakeFleet(
        {"node-1": FakeNode(WITH_OWN_MIRROR), "node-2": FakeNode(), "node-3": FakeNode()}
    )
    first = _deploy(settings, fleet)
    assert fleet.nodes["node-1"].original == WITH_OWN_MIRROR  # it was migrated
    harbor = "harbor.corp.example"
    assert harbor in first["cm-node-1-hosts"]["stdin"]

    second = _deploy(settings, fleet)
    third = _deploy(settings, fleet)

    # Identical inputs: the engine diffs nothing, no step runs, no containerd restarts. The
    # node's own mirror stays in its hosts.toml bundle although config.toml no longer names it.
    assert second == first
    assert third == first


def test_a_node_edited_by_hand_shows_only_its_config_step() -> None:
    settings = settings_with(nodes=3)
    fleet = FakeFleet()
    first = _deploy(settings, fleet)
    edited = fleet.nodes["node-2"]
    assert edited.config is not None
    edited.config += (
        '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
        '  endpoint = ["http://10.0.20.10:5000"]\n'
    )

    second = _deploy(settings, fleet)

    changed = sorted(name for name in first if first[name] != second[name])
    assert changed == ["cm-node-2-config"]
    # The mirror added by hand is migrated again: the step will change config.toml.
    config = second["cm-node-2-config"]
    assert "mirrors" not in content_of(config["create"], config["stdin"])


def test_an_unreachable_node_stops_the_program_naming_it_before_anything_exists() -> None:
    mocks = install_mocks()
    fleet = FakeFleet({"node-3": FakeNode(reachable=False)})
    with pytest.raises(FleetReadError, match=r"node node-3 \(root@10\.0\.30\.3:22\) probe: cannot"):
        plan_fleet(settings_with(nodes=4), fleet)
    assert mocks.resources == []
    # Every node was still read (one error lists every failing node).
    assert all(node.probes == 1 for name, node in fleet.nodes.items() if name != "node-3")


def test_an_unparsable_config_fails_naming_the_node_before_anything_exists() -> None:
    fleet = FakeFleet({"node-1": FakeNode("version = 2\n[plugins\n")})
    with pytest.raises(
        FleetReadError, match=r"node node-1 \(10\.0\.30\.1\).*line 2.*nothing was changed"
    ):
        plan_fleet(settings_with(), fleet)


def test_a_preview_knows_every_node_steps_inputs() -> None:
    """In a preview the probe has already run (during the program), so the diff shows real
    per-node inputs, not "unknown"."""
    mocks = install_mocks(preview=True)

    def body() -> pulumi.Output[Any]:
        mirrors, _ = build(settings_with(nodes=3))
        return pulumi.Output.from_input(mirrors.batches)

    run_program(body)
    steps = steps_of(mocks)
    assert len(steps) == 6
    for step in steps.values():
        stdin = plain(step.inputs["stdin"])
        assert isinstance(stdin, str) and content_of(step.inputs["create"], stdin), step.name
        assert isinstance(step.inputs["create"], str) and "exec bash" in step.inputs["create"]


# --- upgrading an existing stack ------------------------------------------------------------------


def test_an_existing_stack_upgrades_without_replacing_or_restoring_any_node(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    """Against the URNs a stack created before this design holds: every hosts/config step is
    the same resource (by URN or alias), so `pulumi up` updates it in place; what is no longer
    registered (the probe commands) had no delete command, so deleting it runs nothing."""
    before = json.loads((FIXTURES / "state" / "containerd-707aa7b.json").read_text())
    raw = sample_raw()
    raw["nodes"], raw["containerd"] = before["nodes"], before["containerd"]
    # That stack's nodes, pinned as the program now requires (URNs do not depend on the key).
    raw["nodes"] = [{**node, "sshHostPublicKey": NODE_HOST_KEYS[0]} for node in raw["nodes"]]

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(load_settings(raw), name="containerd")

        def check(component_urn: str) -> None:
            stack, project = pulumi.get_stack(), pulumi.get_project()
            now: dict[str, Registered] = {}
            for step in node_mocks.of_type(COMMAND):
                now[step.urn] = step
                for alias in step.aliases:
                    assert set(alias) != {"urn"}, alias
                    old = urn_of(
                        stack,
                        project,
                        alias["parentUrn"] or "",
                        alias["type"] or COMMAND,
                        alias["name"] or step.name,
                    )
                    now[old] = step
                assert [a["parentUrn"] for a in step.aliases] == [component_urn], step.name
            for old in before["commands"]:
                if old["urn"] in now:
                    assert not now[old["urn"]].replace_on_changes or "triggers" not in (
                        now[old["urn"]].inputs
                    )
                else:
                    assert old["urn"].endswith("-probe"), old["urn"]
                    assert not old["delete"], old["urn"]
            kept = [o for o in before["commands"] if not o["urn"].endswith("-probe")]
            assert len(kept) == len(node_mocks.of_type(COMMAND)) == 7

        return pulumi.Output.all(mirrors.urn, settled(mirrors)).apply(lambda v: check(v[0]))

    return run()


# --- k3s / RKE2 nodes ----------------------------------------------------------------------------

K3S_WILDCARD = 'mirrors:\n  "*":\n    endpoint:\n      - "http://10.0.20.10:5000"\n'


def _mixed_fleet() -> FakeFleet:
    return FakeFleet(
        {
            "node-1": FakeNode(),
            "node-2": FakeNode(K3S_WILDCARD, flavour="k3s-server"),
            "node-3": FakeNode(None, flavour="rke2-agent"),
        }
    )


def test_k3s_and_rke2_nodes_get_one_registries_step_in_the_same_rollout(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(settings_with(nodes=3, batch_size=1), _mixed_fleet())

        def check(values: list[Any]) -> None:
            steps = steps_of(node_mocks)
            assert sorted(steps) == [
                "cm-node-1-config", "cm-node-1-hosts", "cm-node-2-registries",
                "cm-node-3-registries",
            ]  # fmt: skip
            k3s = steps["cm-node-2-registries"].inputs
            assert "registries.sh" in k3s["create"] and k3s.get("delete") is None
            assert "systemctl restart k3s" in k3s["create"]
            assert "systemctl restart rke2-agent" in steps["cm-node-3-registries"].inputs["create"]
            assert k3s["logging"] == "none" and is_secret(k3s["stdin"])
            merged = content_of(k3s["create"], plain(k3s["stdin"]))
            assert '"*"' not in merged and "https://10.0.20.10:5012" in merged
            # node-2 is a k3s server: a control-plane node, first and alone; then the workers.
            assert mirrors.batches == [["node-2"], ["node-1"], ["node-3"]]
            assert node_mocks.named("cm-batch-1").depends_on == ["cm-node-2-registries"]
            assert node_mocks.named("cm-batch-2").depends_on == ["cm-node-1-config"]
            reports = dict(zip(mirrors.nodes, values, strict=False))
            assert reports["node-2"]["flavour"] == "k3s-server"
            assert reports["node-2"]["role"] == "control-plane"
            assert reports["node-3"]["role"] == reports["node-1"]["role"] == "worker"
            assert reports["node-2"]["restarted"] is True
            assert reports["node-1"]["flavour"] == "containerd"
            assert_rollout_order(node_mocks, mirrors, "cm")

        return settled(mirrors).apply(check)

    return run()


def test_an_unchanged_k3s_node_shows_no_change_on_the_next_run() -> None:
    settings = settings_with(nodes=3)
    fleet = _mixed_fleet()
    first = _deploy(settings, fleet)
    assert fleet.nodes["node-2"].config != K3S_WILDCARD  # merged and written

    second = _deploy(settings, fleet)

    assert second == first


def test_a_node_that_is_not_the_flavour_it_is_set_to_stops_the_program() -> None:
    raw = sample_raw()
    raw["nodes"] = [
        {
            "name": "node-1",
            "address": "10.0.30.1",
            "flavour": "k3s-agent",
            "sshHostPublicKey": NODE_HOST_KEYS[0],
        }
    ]
    with pytest.raises(
        FleetReadError, match=r"node node-1 .*'k3s-agent' but the node is 'k3s-server'"
    ):
        plan_fleet(load_settings(raw), FakeFleet({"node-1": FakeNode(flavour="k3s-server")}))


# --- issue 27: drift in any direction, renames, held and restored nodes ------------------------
# Each `pulumi up` is modelled as the engine runs it: the program registers the steps (nodes read
# from FakeNodes), the engine matches them against the state the last run left (URN or alias,
# ignoreChanges; tests/mocks.py engine_plan), and only the steps it creates or updates run on the
# nodes (FakeNode.apply, which the node scripts' own tests keep honest).


def _up(
    settings: Settings, fleet: FakeFleet, state: list[Registered] | None = None
) -> tuple[list[Registered], EnginePlan]:
    """One `pulumi up` from ``state``: returns the state it leaves and what the engine did."""
    mocks = install_mocks()
    mocks.outputs_for[COMMAND] = fake_node_outputs

    def body() -> pulumi.Output[Any]:
        mirrors, _ = build(settings, fleet)
        return settled(mirrors)

    run_program(body)
    plan = engine_plan(state or [], mocks.resources)
    runs = set(plan.creates) | set(plan.updates)
    for node in settings.nodes:
        steps = {
            resource.name.removeprefix(f"cm-{node.name}-"): {
                k: plain(v) for k, v in resource.inputs.items()
            }
            for resource in plan.state
            if resource.name in runs
            and resource.name.removeprefix(f"cm-{node.name}-") in ROLES
            and resource.inputs.get("create")
        }
        if steps:
            fleet.nodes[node.name].apply(steps)
    return plan.state, plan


ROLES = {"hosts", "config", "registries", "restore-config", "restore-hosts", "restore-registries"}


def test_a_node_back_on_its_original_config_shows_a_change_and_up_brings_it_back() -> None:
    """Item 1: the node's config.toml is again the file it had before the first apply (a config
    manager rewrote its template): the same migration of the same original as the first apply,
    but not what the last apply LEFT, so the config step shows a change (a new mark) and runs."""
    settings = settings_with(nodes=3)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-2"]
    migrated, original = node.config, node.original
    assert migrated != original and original == BROKEN
    state, again = _up(settings, fleet, state)
    assert again.updates == [] and again.creates == []  # unchanged: no diff

    for round in range(2):  # the second time too (each apply records its own mark)
        node.config = original
        state, reverted = _up(settings, fleet, state)
        assert reverted.updates == ["cm-node-2-config"], round
        assert node.config == migrated  # brought back
        for _ in range(2):  # and an unchanged node shows no change, twice in a row
            state, after = _up(settings, fleet, state)
            assert after.updates == [] and after.creates == [] and after.deletes == []

    # Control: without the mark the reverted node plans exactly its first inputs (no diff).
    first_inputs = {r.name: plain(r.inputs) for r in state}
    node.config = original
    mocks = install_mocks()
    run_program(lambda: settled(build(settings, fleet)[0]))
    config = {r.name: plain(r.inputs) for r in mocks.of_type(COMMAND)}["cm-node-2-config"]
    unmarked = {k: v for k, v in config.items() if k != "create"}
    assert unmarked == {k: v for k, v in first_inputs["cm-node-2-config"].items() if k != "create"}
    assert _without_mark(config["create"]) == _without_mark(
        first_inputs["cm-node-2-config"]["create"]
    )
    assert config["create"] != first_inputs["cm-node-2-config"]["create"]


def _without_mark(command: str) -> str:
    return "\n".join(line for line in command.splitlines() if "APPLY_MARK=" not in line)


def test_a_node_whose_files_our_restore_or_a_reinstall_removed_shows_both_steps() -> None:
    settings = settings_with(nodes=2)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-2"]
    migrated, hosts = node.config, dict(node.hosts_files)

    node.restore()  # the original back, our hosts.toml files and records gone
    state, restored = _up(settings, fleet, state)
    assert sorted(restored.updates) == ["cm-node-2-config", "cm-node-2-hosts"]
    assert (node.config, node.hosts_files) == (migrated, hosts)

    fleet.nodes["node-2"] = FakeNode()  # reinstalled: nothing on it says what it had
    state, reinstalled = _up(settings, fleet, state)
    assert sorted(reinstalled.updates) == ["cm-node-2-config", "cm-node-2-hosts"]
    state, after = _up(settings, fleet, state)
    assert after.updates == []


def test_a_hosts_toml_removed_by_hand_shows_only_the_hosts_step() -> None:
    settings = settings_with(nodes=2)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    del fleet.nodes["node-1"].hosts_files["ghcr.io"]
    state, plan = _up(settings, fleet, state)
    assert plan.updates == ["cm-node-1-hosts"]
    assert "ghcr.io" in fleet.nodes["node-1"].hosts_files
    assert _up(settings, fleet, state)[1].updates == []


def test_a_ca_file_removed_or_changed_on_the_node_shows_only_the_hosts_step() -> None:
    """TLS on: the CA file the hosts step writes is in its record like a hosts.toml: removed or
    changed on the node, the hosts step shows a change and writes it back; as left, none."""
    settings = settings_with(nodes=2)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-1"]
    assert node.ca_file == TEST_CA_PEM
    for drift in (None, "-----BEGIN CERTIFICATE-----\nb3RoZXI=\n-----END CERTIFICATE-----\n"):
        node.ca_file = drift
        state, plan = _up(settings, fleet, state)
        assert plan.updates == ["cm-node-1-hosts"], drift
        assert node.ca_file == TEST_CA_PEM
        assert _up(settings, fleet, state)[1].updates == []


def test_a_k3s_node_whose_ca_file_was_removed_shows_its_registries_step() -> None:
    settings = settings_with(nodes=3)
    fleet = _mixed_fleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-2"]
    assert node.ca_file == TEST_CA_PEM
    node.ca_file = None
    state, plan = _up(settings, fleet, state)
    assert plan.updates == ["cm-node-2-registries"]
    assert node.ca_file == TEST_CA_PEM
    assert _up(settings, fleet, state)[1].updates == []


def test_a_step_that_trusts_the_ca_sends_the_script_then_the_ca_then_its_content(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    """The loader reads exactly the script off stdin; what the script then reads starts with the
    CA section (lib.sh take_trust_section), then the bundle. The config step carries no CA."""

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(settings_with(nodes=1))

        def check(_: Any) -> None:
            steps = steps_of(node_mocks)
            hosts = plain(steps["cm-node-1-hosts"].inputs)
            script = script_text("node/hosts.sh")
            assert hosts["stdin"].startswith(script)
            content = content_of(hosts["create"], hosts["stdin"])
            section = f"{CA_SECTION}\n{TEST_CA_PEM}{CA_SECTION_END}\n"
            assert content.startswith(section)
            assert content[len(section) :].startswith(HOSTS_HEADER)
            config = plain(steps["cm-node-1-config"].inputs)
            assert not content_of(config["create"], config["stdin"]).startswith(CA_SECTION)

        return settled(mirrors).apply(check)

    return run()


def test_a_k3s_node_back_on_its_original_registries_yaml_shows_a_change() -> None:
    settings = settings_with(nodes=3)
    fleet = _mixed_fleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-2"]
    merged = node.config
    node.config = K3S_WILDCARD
    state, plan = _up(settings, fleet, state)
    assert plan.updates == ["cm-node-2-registries"]
    assert node.config == merged
    assert _up(settings, fleet, state)[1].updates == []


def _renamed(settings: Settings, old: str, new: str) -> Settings:
    raw = sample_raw()
    raw["nodes"] = [
        {
            **n.model_dump(by_alias=True, exclude_defaults=True),
            "name": new if n.name == old else n.name,
        }
        for n in settings.nodes
    ]
    raw["containerd"] = {"batchSize": settings.containerd.batch_size}
    return load_settings(raw)


def test_renaming_a_node_creates_its_new_steps_and_drops_the_old_ones_running_nothing() -> None:
    """Item 2: the old-named steps leave the state without their delete running (there is none,
    and the engine does not call it: retainOnDelete); the new ones find nothing to change."""
    settings = settings_with(nodes=3)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-2"]
    migrated, hosts = node.config, dict(node.hosts_files)

    renamed = _renamed(settings, "node-2", "node-2b")
    fleet.nodes["node-2b"] = node  # the same machine under its new name
    state, plan = _up(renamed, fleet, state)

    assert sorted(plan.creates) == ["cm-node-2b-config", "cm-node-2b-hosts"]
    assert sorted(r.name for r in plan.deletes) == ["cm-node-2-config", "cm-node-2-hosts"]
    assert plan.deletes_that_run() == []
    # No alias can claim them (a step's only alias is its old parent, the component).
    new = [r for r in state if r.name.startswith("cm-node-2b-")]
    assert all(a.get("name", "") in ("", r.name) for r in new for a in r.aliases)
    assert plan.updates == []
    # Nothing restored on the node: still migrated, still our hosts.toml.
    assert (node.config, node.hosts_files) == (migrated, hosts)
    assert _up(renamed, fleet, state)[1].updates == []

    # Control: the same deletes from a state whose steps restore on delete (the release before)
    # would have run on the node.
    restoring = [
        dataclasses.replace(r, retain_on_delete=False, inputs={**r.inputs, "delete": "restore"})
        for r in plan.deletes
    ]
    assert EnginePlan([], [], [], restoring).deletes_that_run() == [r.name for r in restoring]


def test_skip_config_path_on_a_migrated_node_leaves_config_toml_as_it_is() -> None:
    settings = settings_with(nodes=3)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-3"]
    migrated = node.config

    state, plan = _up(settings_with(nodes=3, skip=("node-3",)), fleet, state)

    assert [r.name for r in plan.deletes] == ["cm-node-3-config"]
    assert plan.deletes_that_run() == [] and plan.updates == [] and plan.creates == []
    assert node.config == migrated


@pytest.mark.parametrize("change", ["reorder", "batch-size"])
def test_reorder_and_batch_size_keep_every_step(change: str) -> None:
    settings = settings_with(nodes=5, batch_size=2)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    raw = sample_raw()
    nodes = [n.model_dump(by_alias=True, exclude_defaults=True) for n in settings.nodes]
    raw["nodes"] = nodes[::-1] if change == "reorder" else nodes
    raw["containerd"] = {"batchSize": 1 if change == "batch-size" else 2}
    state, plan = _up(load_settings(raw), fleet, state)
    assert plan.creates == [] and plan.deletes == [] and plan.updates == []


def _held(settings: Settings, name: str, state: str = "held") -> Settings:
    raw = sample_raw()
    raw["nodes"] = [
        {
            **n.model_dump(by_alias=True, exclude_defaults=True),
            **({"state": state} if n.name == name else {}),
        }
        for n in settings.nodes
    ]
    raw["containerd"] = {"batchSize": settings.containerd.batch_size}
    return load_settings(raw)


def test_a_held_node_that_is_down_is_not_read_and_keeps_its_steps_as_they_are(
    node_mocks: RecordingMocks,
) -> None:
    """Item 3: one node is down. Held, it is not read; its steps are registered with every input
    ignored, so the engine keeps them as the state has them: no diff, nothing runs, nothing is
    deleted; the rest of the fleet plans and applies; the next batch still waits for it."""
    settings = settings_with(nodes=4, batch_size=2)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    before = {r.name: r.inputs for r in state}
    down = fleet.nodes["node-2"]
    down.reachable = False
    with pytest.raises(FleetReadError, match=r"nodes\[\]\.state: held"):
        plan_fleet(settings, fleet)
    reads = fleet.reads["node-2"]

    held = _held(settings, "node-2")
    fleet.nodes["node-4"].config = f"{fleet.nodes['node-4'].config}# tuned\n"  # meanwhile
    state, plan = _up(held, fleet, state)

    assert fleet.reads["node-2"] == reads  # not even tried
    assert plan.deletes == [] and plan.creates == []
    assert plan.updates == ["cm-node-4-config"]
    assert {"cm-node-2-hosts", "cm-node-2-config"} <= set(plan.sames)
    kept = {r.name: r for r in state}
    for role in ("hosts", "config"):
        step = kept[f"cm-node-2-{role}"]
        assert plain(step.inputs) == plain(before[f"cm-node-2-{role}"])
        assert sorted(step.ignore_changes) == sorted(
            ["addPreviousOutputInEnv", "connection", "create", "delete", "environment",
             "logging", "stdin", "triggers", "update"]
        )  # fmt: skip
        assert step.retain_on_delete

    # Back up and no longer held: read again; nothing had changed on it, so no diff.
    down.reachable = True
    assert _up(settings, fleet, state)[1].updates == []


def test_a_held_node_keeps_its_place_in_the_rollout(node_mocks: RecordingMocks) -> Any:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        settings = _held(settings_with(nodes=4, batch_size=2), "node-2")
        mirrors, plans = build(settings, FakeFleet({"node-2": FakeNode(reachable=False)}))
        assert plans["node-2"].state == "held"

        def check(values: list[Any]) -> None:
            steps = steps_of(node_mocks)
            held = steps["cm-node-2-config"]
            assert "create" not in held.inputs and "stdin" not in held.inputs
            assert held.depends_on == ["cm-node-2-hosts"]
            assert node_mocks.named("cm-batch-2").depends_on == [
                "cm-node-2-config",
                "cm-node-3-config",
            ]
            assert_rollout_order(node_mocks, mirrors, "cm")
            report = dict(zip(mirrors.nodes, values, strict=False))["node-2"]
            assert report["state"] == "held" and report["containerdVersion"] is None
            assert "held" in report["summary"][0]

        return settled(mirrors).apply(check)

    return run()


# --- control-plane nodes (issue 27, item 4) ------------------------------------------------------


def _servers_and_agents(batch_size: int = 5) -> tuple[Settings, FakeFleet]:
    """Three k3s servers (embedded etcd) and three agents, listed mixed, as an inventory may be."""
    raw = sample_raw()
    order = ["agent-1", "server-1", "agent-2", "server-2", "server-3", "agent-3"]
    raw["nodes"] = [
        {"name": name, "address": f"10.0.30.{i}", "sshHostPublicKey": NODE_HOST_KEYS[0]}
        for i, name in enumerate(order, 1)
    ]
    raw["containerd"] = {"batchSize": batch_size}
    flavours = {name: "k3s-server" if name.startswith("server") else "k3s-agent" for name in order}
    fleet = FakeFleet({name: FakeNode(K3S_WILDCARD, flavour=f) for name, f in flavours.items()})
    return load_settings(raw), fleet


def test_rollout_puts_control_plane_nodes_first_and_alone() -> None:
    nodes = settings_with(nodes=7, batch_size=5).nodes
    control = {"node-3", "node-5", "node-7"}
    assert [[n.name for n in b] for b in rollout_batches(nodes, 5, control)] == [
        ["node-3"], ["node-5"], ["node-7"], ["node-1"], ["node-2", "node-4", "node-6"],
    ]  # fmt: skip
    # Only control-plane nodes: each alone; none: canary then batches, as before.
    assert [[n.name for n in b] for b in rollout_batches(nodes[:2], 5, {"node-1", "node-2"})] == [
        ["node-1"], ["node-2"],
    ]  # fmt: skip
    assert rollout_batches(nodes, 5) == rollout_batches(nodes, 5, ())


def test_three_servers_with_batch_size_5_restart_one_at_a_time_before_the_agents(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    """Under mocks: the batches and gates. (Over SSH, tests/integration/test_k3s_e2e.py runs the
    same batches against three stand-in servers and records the order and overlap of restarts.)"""
    settings, fleet = _servers_and_agents(batch_size=5)

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, _ = build(settings, fleet)

        def check(values: list[Any]) -> None:
            assert mirrors.batches == [
                ["server-1"], ["server-2"], ["server-3"], ["agent-1"], ["agent-2", "agent-3"],
            ]  # fmt: skip
            gates = {r.name: r for r in node_mocks.of_type(STASH)}
            assert gates["cm-batch-1"].depends_on == ["cm-server-1-registries"]
            assert gates["cm-batch-2"].depends_on == ["cm-server-2-registries"]
            assert gates["cm-batch-3"].depends_on == ["cm-server-3-registries"]
            assert gates["cm-batch-4"].depends_on == ["cm-agent-1-registries"]
            assert_rollout_order(node_mocks, mirrors, "cm")
            steps = steps_of(node_mocks)
            nodes = {node.name: node for node in settings.nodes}
            flavours = {name: FLAVOURS[f"k3s-{name.split('-')[0]}"] for name in nodes}

            def restore(name: str) -> str:
                return restore_registries_step(settings, nodes[name], flavours[name]).command

            for name in ("server-1", "server-2", "server-3"):
                step = steps[f"cm-{name}-registries"].inputs
                assert (
                    steps[f"cm-{name}-registries"].parent
                    == gates[f"cm-batch-{int(name[-1]) - 1}"].name
                )
                # Waits until healthy as a cluster member, on apply and on restore (state:
                # restored).
                for command in (step["create"], restore(name)):
                    assert (
                        "export HEALTH_COMMAND=" + "'/var/lib/rancher/k3s/data/current/bin/kubectl"
                        " --kubeconfig /etc/rancher/k3s/k3s.yaml get --raw /readyz'"
                    ) in command
                    assert "export HEALTH_TIMEOUT=300" in command
            for name in ("agent-1", "agent-2", "agent-3"):
                step = steps[f"cm-{name}-registries"].inputs
                assert "export HEALTH" not in step["create"] + restore(name)
            reports = dict(zip(mirrors.nodes, values, strict=False))
            assert {name: r["role"] for name, r in reports.items()} == {
                name: "control-plane" if name.startswith("server") else "worker" for name in reports
            }

        return settled(mirrors).apply(check)

    return run()


def test_a_held_k3s_node_keeps_its_registries_step_when_its_flavour_is_set() -> None:
    settings = settings_with(nodes=3)
    fleet = _mixed_fleet()
    state, _ = _up(settings, fleet)
    raw = sample_raw()
    raw["nodes"] = [n.model_dump(by_alias=True, exclude_defaults=True) for n in settings.nodes]
    raw["nodes"][1].update(state="held", flavour="k3s-server")
    raw["containerd"] = {"batchSize": 2}
    fleet.nodes["node-2"].reachable = False
    state, plan = _up(load_settings(raw), fleet, state)
    assert plan.deletes == [] and plan.creates == [] and plan.updates == []


def test_restored_puts_the_original_back_once_and_removing_the_node_then_runs_nothing() -> None:
    settings = settings_with(nodes=3)
    fleet = FakeFleet()
    state, _ = _up(settings, fleet)
    node = fleet.nodes["node-2"]

    restored = _held(settings, "node-2", state="restored")
    state, plan = _up(restored, fleet, state)
    assert sorted(plan.creates) == ["cm-node-2-restore-config", "cm-node-2-restore-hosts"]
    assert sorted(r.name for r in plan.deletes) == ["cm-node-2-config", "cm-node-2-hosts"]
    assert plan.deletes_that_run() == []
    assert node.config == BROKEN and node.hosts_files == {}  # the original, our files gone
    steps = {r.name: r for r in state}
    assert "restore.sh" in steps["cm-node-2-restore-config"].inputs["create"]
    assert "REMOVE_ALL=1" in steps["cm-node-2-restore-hosts"].inputs["create"]
    assert _up(restored, fleet, state)[1].updates == []  # once

    raw = sample_raw()
    raw["nodes"] = [
        n.model_dump(by_alias=True, exclude_defaults=True)
        for n in restored.nodes
        if n.name != "node-2"
    ]
    raw["containerd"] = {"batchSize": 2}
    state, removed = _up(load_settings(raw), fleet, state)
    assert sorted(r.name for r in removed.deletes) == [
        "cm-node-2-restore-config",
        "cm-node-2-restore-hosts",
    ]
    assert removed.deletes_that_run() == []


def test_a_plain_containerd_node_is_a_control_plane_node_when_its_role_says_so(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    """``nodes[].role`` wins over the flavour: a kubeadm control plane (plain containerd) gets the
    API server check; a k3s server set to worker gets none and is batched with the workers."""
    raw = sample_raw()
    raw["nodes"] = [
        {"name": "worker-1", "address": "10.0.30.1"},
        {"name": "cp-1", "address": "10.0.30.2", "role": "control-plane"},
        {"name": "cp-2", "address": "10.0.30.3", "role": "control-plane",
         "healthCommand": "curl -fsk https://127.0.0.1:6443/readyz"},
        {"name": "k3s-1", "address": "10.0.30.4", "role": "worker"},
    ]  # fmt: skip
    for node in raw["nodes"]:
        node["sshHostPublicKey"] = NODE_HOST_KEYS[0]
    raw["containerd"] = {"batchSize": 5, "healthTimeoutSeconds": 120}
    fleet = FakeFleet({"k3s-1": FakeNode(K3S_WILDCARD, flavour="k3s-server")})

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        settings = load_settings(raw)
        mirrors, _ = build(settings, fleet)

        def check(_: Any) -> None:
            assert mirrors.batches == [["cp-1"], ["cp-2"], ["worker-1"], ["k3s-1"]]
            steps = steps_of(node_mocks)
            cp1 = steps["cm-cp-1-config"].inputs
            cp1_restore = restore_config_step(settings, settings.nodes[1]).command
            assert (
                "--kubeconfig /etc/kubernetes/admin.conf --server https://127.0.0.1:6443"
                in (cp1["create"])
            )
            assert "export HEALTH_TIMEOUT=120" in cp1["create"] and "export HEALTH" in cp1_restore
            assert (
                "export HEALTH_COMMAND='curl -fsk https://127.0.0.1:6443/readyz'"
                in steps["cm-cp-2-config"].inputs["create"]
            )
            # The hosts step restarts nothing: no check there.
            assert "export HEALTH" not in steps["cm-cp-1-hosts"].inputs["create"]
            for name in ("cm-worker-1-config", "cm-k3s-1-registries"):
                assert "export HEALTH" not in steps[name].inputs["create"], name

        return settled(mirrors).apply(check)

    return run()


def test_a_held_node_is_never_a_canary_and_a_held_server_takes_no_turn() -> None:
    nodes = settings_with(nodes=7, batch_size=2).nodes
    control = {"node-3", "node-5"}
    # node-1 held: the workers' canary is the next node that runs; node-1 keeps its place.
    assert [[n.name for n in b] for b in rollout_batches(nodes, 2, control, {"node-1"})] == [
        ["node-3"], ["node-5"], ["node-2"], ["node-1", "node-4"], ["node-6", "node-7"],
    ]  # fmt: skip
    # A held server: not restarted, so no turn of its own; it rides with the others.
    assert [[n.name for n in b] for b in rollout_batches(nodes, 5, control, {"node-3"})] == [
        ["node-5"], ["node-1"], ["node-2", "node-3", "node-4", "node-6", "node-7"],
    ]  # fmt: skip
    # Everything held: one batch, nothing runs in it.
    every = {n.name for n in nodes}
    assert [[n.name for n in b] for b in rollout_batches(nodes, 2, control, every)] == [
        [n.name for n in nodes]
    ]
    assert rollout_batches(nodes, 5, control, ()) == rollout_batches(nodes, 5, control)


def test_a_held_server_that_is_down_neither_blocks_nor_restarts(
    node_mocks: RecordingMocks,
) -> pulumi.Output[Any]:
    """server-2 is down and held (its flavour set, so its steps keep their names): the other
    servers still go one at a time, first; server-2 gets no turn among them, is not read, and its
    registries step has no command of this run (it keeps the state's): nothing restarts it and
    no gate waits on anything but a step that does not run."""
    settings, fleet = _servers_and_agents(batch_size=5)
    raw = sample_raw()
    raw["nodes"] = [n.model_dump(by_alias=True, exclude_defaults=True) for n in settings.nodes]
    for node in raw["nodes"]:
        if node["name"] == "server-2":
            node.update(state="held", flavour="k3s-server")
    raw["containerd"] = {"batchSize": 5}
    held = load_settings(raw)
    fleet.nodes["server-2"].reachable = False

    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors, plans = build(held, fleet)
        assert plans["server-2"].state == "held"
        assert fleet.reads["server-2"] == 0

        def check(values: list[Any]) -> None:
            assert mirrors.batches == [
                ["server-1"], ["server-3"], ["agent-1"], ["agent-2", "server-2", "agent-3"],
            ]  # fmt: skip
            steps = steps_of(node_mocks)
            kept = steps["cm-server-2-registries"]
            assert "create" not in kept.inputs and "stdin" not in kept.inputs
            for name in ("server-1", "server-3"):
                assert "export HEALTH_COMMAND=" in steps[f"cm-{name}-registries"].inputs["create"]
            assert_rollout_order(node_mocks, mirrors, "cm")
            report = dict(zip(mirrors.nodes, values, strict=False))["server-2"]
            assert (report["state"], report["role"]) == ("held", "control-plane")
            assert "without quorum" in report["summary"][1]

        return settled(mirrors).apply(check)

    return run()


def test_an_agent_set_to_control_plane_without_a_check_stops_the_program() -> None:
    raw = sample_raw()
    raw["nodes"] = [
        {"name": "agent-1", "address": "10.0.30.1", "role": "control-plane",
         "sshHostPublicKey": NODE_HOST_KEYS[0]},
    ]  # fmt: skip
    fleet = FakeFleet({"agent-1": FakeNode(K3S_WILDCARD, flavour="k3s-agent")})
    with pytest.raises(FleetReadError, match=r"agent-1 .*k3s-agent runs no API server.*healthComm"):
        plan_fleet(load_settings(raw), fleet)
