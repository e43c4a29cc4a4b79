"""Every shell script of the project passes shellcheck (they run as root on every node)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.prereq import require_binary

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts").rglob("*.sh"))


@pytest.mark.integration
@pytest.mark.parametrize("script", SCRIPTS, ids=[str(p.name) for p in SCRIPTS])
def test_shellcheck_clean(script: Path) -> None:
    shellcheck = require_binary("shellcheck")
    result = subprocess.run(
        # -x from the project root: follow what a script sources (scripts/testenv/lib.sh).
        [shellcheck, "--severity=style", "-x", str(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_scripts_are_found() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"probe.sh", "hosts.sh", "apply-config.sh", "restore.sh"} <= names
