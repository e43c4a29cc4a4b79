"""scripts/verify.py --nodes: the bypass verdict of each node rests on a request only that node
made (components/verify/bypass.py). The nodes' pulls and the caches' logs are stand-ins here (no
SSH, no registry); the real thing runs in tests/integration/test_node_e2e.py, with a cache
kept busy by another client."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.verify import bypass, nodes
from components.verify import run as verify_run
from components.verify.check import Check
from tests.cli_harness import run
from tests.sample import sample_raw

IMAGE = "docker.io/library/busybox:1.36"
BYPASSING_NODE = "k8s-worker-1"  # its hosts.toml skips the mirror: it pulls from the upstream
CONTAINER = "registry-docker-io"
DIGEST = re.compile(r"@sha256:([0-9a-f]{64})$")


def _files(tmp_path: Path, vm: bool = True) -> list[str]:
    mirror = {
        "endpoint": "http://127.0.0.1:9",
        "metricsUrl": "http://127.0.0.1:9/metrics",
        "container": CONTAINER,
    }
    outputs: dict[str, Any] = {"mirrors": {"docker.io": mirror}}
    if vm:
        outputs["registryVm"] = {
            "address": "127.0.0.1",
            "sshUser": "debian",
            "sshHostPublicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1cVmZ2wSx4Y2oCdXh8fF0L8l0",
        }
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in sample_raw().items()}}
    (tmp_path / "Pulumi.test.yaml").write_text(yaml.safe_dump(stack))
    return [
        "--outputs", str(tmp_path / "outputs.json"),
        "--stack-file", str(tmp_path / "Pulumi.test.yaml"),
        "--nodes", "--node-image", IMAGE,
    ]  # fmt: skip


@pytest.fixture
def busy_cache(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every node but BYPASSING_NODE asks the cache for its digest; the cache also serves a
    stream of other clients' pulls (other nodes' digests included) the whole time."""
    log: list[str] = []
    asked: dict[str, list[str]] = {}

    def check_node(settings, node, mirrors, images, ssh_options, timeout, context, mode, probes):
        asked[node.name] = list(probes)
        log.append('"GET /v2/library/busybox/manifests/1.36?ns=docker.io HTTP/1.1" 200')
        for reference in probes:
            assert reference.startswith("docker.io/library/busybox@sha256:"), reference
            if node.name != BYPASSING_NODE:
                log.append(f'"HEAD /v2/library/busybox/manifests/{reference.split("@")[1]}" 404')
        return [Check(node.name, node.address, "pull", True, f"{i} cached", "", i)
                for i in images]  # fmt: skip

    def read_seen(outputs, since, probes, ssh_options, timeout):
        # What requests-seen.sh does with the log: each digest asked for, where it appears.
        text = "\n".join(log)
        seen = {(p.container, p.digest) for p in probes if p.digest in text}
        return seen, {}, ""

    monkeypatch.setattr(nodes, "check_node", check_node)
    monkeypatch.setattr(nodes, "read_seen", read_seen)
    monkeypatch.setattr(verify_run, "check_mirror", lambda *args: [])
    monkeypatch.setattr(verify_run, "check_metrics", lambda *args: Check("-", "-", "m", True, ""))
    monkeypatch.setattr(verify_run, "check_vm_disk", lambda *args: [])
    return asked


def _rows(stdout: str) -> dict[str, str]:
    return {line.split()[0]: line for line in stdout.splitlines() if "  bypass  " in line}


def test_a_node_that_skips_its_mirror_fails_although_the_cache_is_busy(
    tmp_path: Path, busy_cache: dict[str, Any]
) -> None:
    outcome = run("verify", _files(tmp_path))

    stdout = outcome.stdout.decode()
    assert outcome.code == 1, stdout + outcome.stderr
    rows = _rows(stdout)
    # One row per (node, cache): each judged by its own request only.
    assert sorted(rows) == ["k8s-cp-1", "k8s-worker-1", "k8s-worker-2"], stdout
    assert "FAIL" in rows[BYPASSING_NODE] and "never reached the cache" in rows[BYPASSING_NODE]
    assert " ok " in rows["k8s-cp-1"] and " ok " in rows["k8s-worker-2"], rows
    assert f"{CONTAINER} access log" in rows[BYPASSING_NODE]
    assert f"{BYPASSING_NODE} bypass: docker.io: this node's request" in outcome.stderr
    assert "1 check(s) failed" in outcome.stderr
    # Every node got digests of its own: none shared, each fresh.
    digests = [DIGEST.search(r)[1] for refs in busy_cache.values() for r in refs]  # type: ignore[index]
    assert len(digests) == 3 and len(set(digests)) == 3


def test_without_the_vm_the_bypass_is_not_checked_and_fails(
    tmp_path: Path, busy_cache: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No VM, no evidence: never a pass by default (--no-vm, or outputs without registryVm).
    The real log reader: without a registryVm output it contacts nothing."""
    monkeypatch.setattr(nodes, "read_seen", bypass.read_seen)
    for args, why in (
        ([*_files(tmp_path), "--no-vm"], "--no-vm"),
        (_files(tmp_path, vm=False), "no registryVm in the outputs"),
    ):
        outcome = run("verify", args)
        stdout = outcome.stdout.decode()
        assert outcome.code == 1, stdout
        rows = _rows(stdout)
        assert len(rows) == 3, stdout
        assert all("FAIL" in r and f"not checked: {why}" in r for r in rows.values()), rows


def test_the_probe_references_and_the_vm_command() -> None:
    mirrors = {
        "docker.io": {"container": "registry"},
        "registry.k8s.io": {"container": "registry-k8s"},
        "example.org": {"container": "registry-example"},
    }
    probes = bypass.make_probes(mirrors, {"docker.io": "library/x:1", "registry.k8s.io": "pause"})
    by_host = {p.upstream: p for p in probes}
    assert (
        by_host["docker.io"].reference
        == f"docker.io/library/x@sha256:{by_host['docker.io'].digest}"
    )
    assert by_host["registry.k8s.io"].reference.startswith("registry.k8s.io/pause@sha256:")
    assert by_host["example.org"].reference.startswith("example.org/registry-mirrors/verify@")
    assert all(re.fullmatch(r"[0-9a-f]{64}", p.digest) for p in probes)
    assert len({p.digest for p in probes}) == 3
    command, script = bypass.seen_command(1700000000, probes)
    assert command.startswith("exec bash -s 1700000000 ")
    assert script.startswith("#!/usr/bin/env bash") and "docker logs --since" in script
    seen, errors = bypass.parse_seen(
        f"seen=registry {by_host['docker.io'].digest}\nerror=registry-k8s No such container\n"
    )
    assert seen == {("registry", by_host["docker.io"].digest)}
    assert errors == {"registry-k8s": "No such container"}
