"""ContainerdMirrors wiring under Pulumi mocks (preview=False; every test RETURNS its Output)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest

from components.containerd_mirrors import ContainerdMirrors, rollout_batches
from components.settings import load_settings
from tests.mocks import (
    COMMAND,
    RecordingMocks,
    fake_node_outputs,
    install_mocks,
    is_secret,
    probe_stdout,
)
from tests.sample import sample_raw


def settings_with(nodes: int = 3, batch_size: int = 2, skip: tuple[str, ...] = ()):
    raw = sample_raw()
    raw["nodes"] = [
        {"name": f"node-{i}", "address": f"10.0.30.{i}", "skipConfigPath": f"node-{i}" in skip}
        for i in range(1, nodes + 1)
    ]
    raw["containerd"] = {"batchSize": batch_size}
    return load_settings(raw)


@pytest.fixture
def node_mocks() -> RecordingMocks:
    mocks = install_mocks()
    mocks.outputs_for[COMMAND] = fake_node_outputs
    return mocks


def test_rollout_is_canary_then_batches() -> None:
    nodes = settings_with(nodes=6, batch_size=2).nodes
    assert [[n.name for n in b] for b in rollout_batches(nodes, 2)] == [
        ["node-1"],
        ["node-2", "node-3"],
        ["node-4", "node-5"],
        ["node-6"],
    ]
    assert rollout_batches([], 3) == []


@pytest.mark.usefixtures("node_mocks")
@pulumi.runtime.test
def test_each_batch_waits_for_the_previous_batchs_config() -> pulumi.Output[Any]:
    mirrors = ContainerdMirrors("cm", settings_with(nodes=4, batch_size=2), "/agent.sock")
    assert mirrors.batches == [["node-1"], ["node-2", "node-3"], ["node-4"]]
    waits = mirrors.waits_for
    assert waits["cm-node-1-probe"] == []
    assert waits["cm-node-1-config"] == ["cm-node-1-hosts"]
    for node in ("node-2", "node-3"):
        assert waits[f"cm-{node}-probe"] == ["cm-node-1-config"]
        # Only the probe names the previous batch; the rest wait through it (fewer edges).
        assert waits[f"cm-{node}-hosts"] == [f"cm-{node}-probe"]
        assert waits[f"cm-{node}-config"] == [f"cm-{node}-hosts"]
    assert waits["cm-node-4-probe"] == ["cm-node-2-config", "cm-node-3-config"]

    def ancestors(name: str) -> set[str]:
        found: set[str] = set()
        todo = list(waits[name])
        while todo:
            current = todo.pop()
            if current not in found:
                found.add(current)
                todo += waits.get(current, [])
        return found

    # Every step of a later batch waits for every config step of every earlier batch.
    for later, earlier in (("node-2", "node-1"), ("node-4", "node-1"), ("node-4", "node-3")):
        for role in ("probe", "hosts", "config"):
            assert f"cm-{earlier}-config" in ancestors(f"cm-{later}-{role}"), (later, role)
    assert "cm-node-3-config" not in ancestors("cm-node-2-config")  # same batch: in parallel
    return mirrors.nodes["node-4"].apply(lambda report: report)


def test_commands_per_node_secrets_and_logging(node_mocks: RecordingMocks) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors = ContainerdMirrors("cm", settings_with(nodes=2), "/agent.sock")

        def check(_: Any) -> None:
            names = sorted(r.name for r in node_mocks.of_type(COMMAND))
            assert names == [
                f"cm-node-{i}-{role}" for i in (1, 2) for role in ("config", "hosts", "probe")
            ]
            probe = node_mocks.named("cm-node-1-probe").inputs
            config = node_mocks.named("cm-node-1-config").inputs
            hosts = node_mocks.named("cm-node-1-hosts").inputs
            assert probe["logging"] == "none" and config["logging"] == "none"
            assert probe["addPreviousOutputInEnv"] is False
            assert probe["update"] == probe["create"] and probe["triggers"]
            assert "probe.sh" in probe["create"]
            assert "triggers" not in hosts and "triggers" not in config
            assert is_secret(config["stdin"]) and is_secret(hosts["stdin"])
            stdin = config["stdin"]["value"]
            assert "config_path" in stdin and "mirrors" not in stdin
            assert "s3cret" not in str(config["create"]) and "apply-config.sh" in config["create"]
            assert "restore.sh" in config["delete"] and "restore.sh" in hosts["delete"]
            assert "/agent.sock" in str(probe["connection"]), probe["connection"]

        return pulumi.Output.all(*mirrors.nodes.values()).apply(check)

    return run()


def test_report_per_node(node_mocks: RecordingMocks) -> pulumi.Output[Any]:
    @pulumi.runtime.test
    def run() -> pulumi.Output[Any]:
        mirrors = ContainerdMirrors("cm", settings_with(nodes=1), "/agent.sock")

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
        mirrors = ContainerdMirrors("cm", settings, "/agent.sock")
        assert set(mirrors.commands["node-2"]) == {"probe", "hosts"}
        # The next batch waits for the skipped node's hosts step instead.
        assert mirrors.waits_for["cm-node-3-probe"] == ["cm-node-2-hosts"]

        def check(report: dict[str, Any]) -> None:
            names = {r.name for r in node_mocks.of_type(COMMAND)}
            assert "cm-node-2-config" not in names and "cm-node-1-config" in names
            assert report["configChanged"] is False and report["restarted"] is False
            assert any("skipConfigPath" in line for line in report["summary"])

        return mirrors.nodes["node-2"].apply(check)

    return run()


def test_unparsable_config_fails_naming_the_node_before_any_change():
    """The canary's config.toml cannot be parsed: the program fails naming the node, and no
    command that changes a node gets its input (hosts and config wait on the failed plan)."""
    mocks = install_mocks()

    def outputs(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        if args.name.endswith("-probe"):
            return {"stdout": probe_stdout("version = 2\n[plugins\n"), "stderr": ""}
        return {"stdout": "changed=1\n", "stderr": ""}

    mocks.outputs_for[COMMAND] = outputs

    @pulumi.runtime.test
    def run():
        component = ContainerdMirrors("containerd", settings_with(), agent_socket="/run/a.sock")
        return component.nodes["node-1"]

    with pytest.raises(
        Exception, match=r"node node-1 \(10\.0\.30\.1\).*line 2.*nothing was changed"
    ):
        run()
    changing = [r.name for r in mocks.resources if r.name.endswith(("-hosts", "-config"))]
    assert all("stdin" not in r.inputs for r in mocks.resources if r.name in changing)
