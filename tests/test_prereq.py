"""The front's prerequisite: installed by scripts/test.sh, and missing under CI=true a FAILURE.

A test tier that skips where ATS is missing would pass on a runner without it while proving
nothing about the front (tests/prereq.py: a skipped proof is no proof).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests import prereq
from tests.integration import front_proc

ROOT = Path(__file__).resolve().parent.parent


def _debian_packages() -> list[str]:
    text = (ROOT / "scripts" / "test.sh").read_text()
    block = re.search(r"^DEBIAN_PACKAGES=\(\n(.*?)^\)", text, re.S | re.M)
    assert block, "scripts/test.sh has no DEBIAN_PACKAGES=( ... ) block"
    words = [line.split("#", 1)[0].split() for line in block[1].splitlines()]
    return [word for line in words for word in line]


def test_the_test_environment_installs_the_front() -> None:
    # Debian's trafficserver ships traffic_server, what front_proc.py runs (the VM installs the
    # same package).
    assert "trafficserver" in _debian_packages()


def test_without_ats_the_front_tests_fail_under_ci_and_skip_on_a_laptop(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        shutil, "which", lambda name: None if name == "traffic_server" else real_which(name)
    )
    monkeypatch.setattr(prereq, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match="prerequisite missing under CI=true: traffic"):
        front_proc.verify_config(None, tmp_path)  # type: ignore[arg-type]  # never reached
    # Control: the same check off CI is a skip, so the failure above comes from CI=true.
    monkeypatch.setattr(prereq, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="traffic_server is not installed"):
        front_proc.verify_config(None, tmp_path)  # type: ignore[arg-type]
