"""scripts/render.py: what a person reviews is what the program ships."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from components.renderers.bundle import render_bundle
from tests.sample import sample_settings

ROOT = Path(__file__).resolve().parent.parent
RENDER = ROOT / "scripts" / "render.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RENDER), *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


def test_renders_dev_stack(tmp_path: Path):
    result = run("--stack", "dev", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "registry-vm/ipconfig0.txt").read_text() == "ip=10.0.20.10/24,gw=10.0.20.1\n"
    assert (tmp_path / "registry-vm/vendor-data.yaml").read_text().startswith("#cloud-config\n")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["vm"] | {"address": "10.0.20.10", "prefix": 24, "gateway": "10.0.20.1"}
        == summary["vm"]
    )
    assert summary["upstreams"][0] == summary["upstreams"][0] | {
        "host": "docker.io",
        "container": "registry",
        "port": 5000,
        "metrics_port": 5001,
        "endpoint": "http://10.0.20.10:5000",
        "server": "https://registry-1.docker.io",
    }
    assert [u["host"] for u in summary["upstreams"]] == [
        "docker.io",
        "ghcr.io",
        "quay.io",
        "registry.k8s.io",
        "reg.kyverno.io",
    ]
    assert summary["upstreams"][1]["server"] == "https://ghcr.io"
    assert summary["nodes"][0]["name"] == "k8s-dev-cp-1"


def test_both_committed_stacks_are_valid(tmp_path: Path):
    for stack in ("dev", "prod"):
        result = run("--stack", stack, "--out", str(tmp_path / stack))
        assert result.returncode == 0, (stack, result.stderr)


def test_stack_file_writes_the_same_bundle_as_the_renderers(tmp_path: Path):
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in _sample_raw().items()}}
    stack_file = tmp_path / "Pulumi.test.yaml"
    stack_file.write_text(yaml.safe_dump(stack))
    out = tmp_path / "out"
    result = run("--stack-file", str(stack_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = render_bundle(sample_settings())
    written = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert written == expected


def test_bad_settings_exit_2_with_every_problem_and_nothing_written(tmp_path: Path):
    raw = _sample_raw()
    raw["vm"]["gateway"] = "10.0.30.1"
    raw["nodes"][1]["address"] = "10.0.20.10"
    raw["vm"]["adress"] = "x"
    stack_file = tmp_path / "Pulumi.bad.yaml"
    stack_file.write_text(
        yaml.safe_dump({"config": {f"registry-mirrors:{k}": v for k, v in raw.items()}})
    )
    out = tmp_path / "out"
    result = run("--stack-file", str(stack_file), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("vm.gateway: '10.0.30.1' is outside") for line in lines), lines
    assert any(line.startswith("nodes[1].address:") for line in lines), lines
    assert any(line.startswith("vm.adress: unknown key") for line in lines), lines
    assert not out.exists()


def test_secure_values_are_not_needed(tmp_path: Path):
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in _sample_raw().items()}}
    stack["config"]["registry-mirrors:proxmoxApiToken"] = {"secure": "v1:abc"}
    stack["config"]["proxmoxve:unrelated"] = "other namespaces are ignored"
    stack_file = tmp_path / "Pulumi.s.yaml"
    stack_file.write_text(yaml.safe_dump(stack))
    result = run("--stack-file", str(stack_file), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "v1:abc" not in "".join(
        p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )


def _sample_raw():
    from tests.sample import sample_raw

    return sample_raw()
