"""scripts/testenv/pytest_totals.py: the one closing line scripts/test.sh prints for both tiers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location(
    "pytest_totals", ROOT / "scripts" / "testenv" / "pytest_totals.py"
)
assert _spec is not None and _spec.loader is not None
pytest_totals = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pytest_totals)


def _log(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_sums_both_tiers_errors_count_as_failed(tmp_path: Path) -> None:
    tests = _log(tmp_path, "a", "x\n===== 300 passed, 2 skipped, 5 deselected in 201.10s =====\n")
    vm = _log(tmp_path, "b", "== 10 passed, 1 failed, 1 error in 400.00s (0:06:40) ==\n")
    assert pytest_totals.totals([tests, vm]) == {"passed": 310, "failed": 2, "skipped": 2}


def test_quiet_summary_and_an_unfinished_run(tmp_path: Path) -> None:
    quiet = _log(tmp_path, "a", "....\n4 passed in 1.20s\n")
    crashed = _log(tmp_path, "b", "collecting ...\nKilled\n")
    empty = _log(tmp_path, "c", "===== no tests ran in 0.01s =====\n")
    assert pytest_totals.totals([quiet, crashed, empty]) == {
        "passed": 4,
        "failed": 1,
        "skipped": 0,
    }
