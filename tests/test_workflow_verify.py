"""The deploy's verify runs in the program's own environment and checks the nodes (issue 27,
item 7): with the runner's bare python it died on `import pydantic`, and without --nodes it never
looked at a node. Its command line is parsed by scripts/verify.py itself here, with the same
files a deploy has (outputs, the stack file), so a flag it does not know fails this test."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cli_harness import run, script
from tests.sample import sample_raw

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
ENVIRONMENT = "python -m venv venv && venv/bin/python -m pip install -r requirements.txt"


def _steps(workflow: str, job: str) -> list[dict[str, Any]]:
    return yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"][job]["steps"]


def _verify_line(steps: list[dict[str, Any]]) -> str:
    [line] = [
        line.strip()
        for step in steps
        for line in str(step.get("run", "")).splitlines()
        if "scripts/verify.py" in line
    ]
    return line


def test_deploy_and_preview_build_the_same_environment_before_anything_runs_in_it() -> None:
    for workflow, job in (("pulumi-up.yml", "up"), ("pull-request.yml", "preview")):
        runs = [str(step.get("run", "")) for step in _steps(workflow, job)]
        assert ENVIRONMENT in runs, (workflow, runs)
        first_pulumi = next(
            i for i, r in enumerate(runs) if any(w.startswith("pulumi ") for w in r.splitlines())
        )
        assert runs.index(ENVIRONMENT) < first_pulumi, workflow


def test_deploy_verifies_the_nodes_in_the_programs_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    line = _verify_line(_steps("pulumi-up.yml", "up"))
    argv = shlex.split(line.replace("$STACK", "dev"))
    assert argv[:2] == ["venv/bin/python", "scripts/verify.py"], line
    assert "--nodes" in argv and "--no-vm" not in argv, line

    # The same arguments, in a deploy's working directory, reach the checks as meant.
    (tmp_path / "stacks").mkdir()
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in sample_raw().items()}}
    (tmp_path / "stacks" / "Pulumi.dev.yaml").write_text(yaml.safe_dump(stack))
    mirror = {"endpoint": "http://127.0.0.1:9", "metricsUrl": "http://127.0.0.1:9/metrics"}
    (tmp_path / "outputs.json").write_text(json.dumps({"mirrors": {"docker.io": mirror}}))
    monkeypatch.chdir(tmp_path)
    seen: dict[str, Any] = {}

    def run_checks(
        outputs, settings, images, node_images, ssh_options, timeout, vm, proxmox, node_mode
    ):
        seen.update(settings=settings, vm=vm, proxmox=proxmox, node_mode=node_mode)
        return []

    monkeypatch.setattr(script("verify"), "run_checks", run_checks)
    outcome = run("verify", argv[2:])
    assert outcome.code == 0, outcome.stdout.decode() + outcome.stderr
    assert seen["settings"] is not None and len(seen["settings"].nodes) == 3
    assert seen["vm"] is True
    # The stack's settings for the Proxmox firewall row too (skipped without a token).
    assert seen["proxmox"] is seen["settings"]
