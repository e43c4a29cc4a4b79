"""scripts/verify.py --nodes: the bypass check judges each node on its own. The nodes' pulls and
the mirror's counter are stand-ins here (no SSH, no registry); the real thing runs in
tests/integration/test_node_e2e.py with one node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.verify import metrics, nodes
from components.verify import run as verify_run
from components.verify.check import Check
from components.verify.metrics import MirrorMetrics
from tests.cli_harness import run
from tests.sample import sample_raw

IMAGE = "docker.io/library/busybox:1.36"
BYPASSING_NODE = "k8s-worker-1"  # its hosts.toml skips the mirror: it pulls from the upstream


def test_a_node_that_skips_its_mirror_fails_although_other_nodes_moved_the_counter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = [0.0]  # the docker.io mirror's blob+manifest requests

    def read_metrics(url: str, timeout: float) -> Any:
        assert url == "http://127.0.0.1:9/metrics"
        return MirrorMetrics(requests={"blob": served[0]}, proxy=None)

    def check_node(settings, node, mirrors, images, ssh_options, timeout, mode) -> list[Any]:
        if node.name != BYPASSING_NODE:
            served[0] += 2  # a manifest and a blob asked of the mirror
        return [Check(node.name, node.address, "pull", True, f"{i} cached", "", i)
                for i in images]  # fmt: skip

    monkeypatch.setattr(metrics, "read_metrics", read_metrics)
    monkeypatch.setattr(nodes, "check_node", check_node)
    monkeypatch.setattr(verify_run, "check_mirror", lambda *args: [])
    mirror = {
        "endpoint": "http://127.0.0.1:9",
        "metricsUrl": "http://127.0.0.1:9/metrics",
        "container": "registry-docker-io",
    }
    (tmp_path / "outputs.json").write_text(json.dumps({"mirrors": {"docker.io": mirror}}))
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in sample_raw().items()}}
    (tmp_path / "Pulumi.test.yaml").write_text(yaml.safe_dump(stack))

    outcome = run(
        "verify",
        [
            "--outputs", str(tmp_path / "outputs.json"),
            "--stack-file", str(tmp_path / "Pulumi.test.yaml"),
            "--nodes", "--no-vm", "--node-image", IMAGE,
        ],
    )  # fmt: skip

    stdout = outcome.stdout.decode()
    assert outcome.code == 1, stdout + outcome.stderr
    rows = {line.split()[0]: line for line in stdout.splitlines() if "  bypass  " in line}
    # One row per (node, mirror): the other nodes' pulls moved the counter, this one's did not.
    assert sorted(rows) == ["k8s-cp-1", "k8s-worker-1", "k8s-worker-2"], stdout
    assert "FAIL" in rows[BYPASSING_NODE], rows
    assert f"0 requests during the node pulls of {IMAGE}" in rows[BYPASSING_NODE], rows
    assert " ok " in rows["k8s-cp-1"] and " ok " in rows["k8s-worker-2"], rows
    assert "http://127.0.0.1:9/metrics" in rows[BYPASSING_NODE]
    assert f"{BYPASSING_NODE} bypass: 0 requests" in outcome.stderr
    assert "1 check(s) failed" in outcome.stderr
