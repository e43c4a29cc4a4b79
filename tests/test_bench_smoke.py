"""The benchmark code itself works: the program-cost part for N=10 only, through the same table
and JSON the full run writes, and a crash is reported as a crash. No timing assertions (targets
are read from bench/results.json)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bench import program_cost
from bench.common import Figure
from bench.run import table


def test_program_cost_part_for_ten_nodes_produces_the_result_shape() -> None:
    part = program_cost.run(
        sizes=(10,), repeats=1, before=False, read_sizes=(10,), log=lambda _line: None
    )

    entry = {"name": part.name, "figures": [f.as_json() for f in part.figures], "info": part.info}
    document = json.loads(json.dumps({"parts": [entry], "table_markdown": table([entry])}))

    figures = document["parts"][0]["figures"]
    names = [f["name"] for f in figures]
    assert "N=10 wall time, program run" in names
    assert "N=10 peak memory (maxrss)" in names
    assert "N=10 SDK: bare program, same resource count" in names
    assert "N=10 program / bare SDK" in names
    for figure in figures:
        assert set(figure) >= {"part", "name", "unit", "runs", "median", "target", "met", "note"}
        assert len(figure["runs"]) == 1, figure
        assert isinstance(figure["median"], float)
        assert figure["failure"] == ""
    peak = next(f for f in figures if f["name"] == "N=10 peak memory (maxrss)")
    assert peak["median"] > 0
    assert document["table_markdown"].startswith("| part | figure |")


def test_a_child_that_crashes_is_reported_as_a_crash_not_a_number() -> None:
    result = program_cost.run_child("no-such-mode", 1)
    assert result["status"] == "crashed"
    figure = program_cost._figure("N=1 wall time, program run", "s", [result])
    figure.check(lambda v: v < 10, "< 10 s")
    assert figure.runs == [] and figure.met is False
    assert figure.failure.startswith("crashed after")
    row = table([{"name": "program", "figures": [figure.as_json()]}]).splitlines()[-1]
    assert "**CRASH**" in row and "crashed after" in row


def test_a_child_past_its_limit_is_reported_as_stopped() -> None:
    result = program_cost.run_child("reads", 500, timeout=1)
    assert result["status"] == "stopped"
    figure = Figure("program", "x", "s", [])
    figure.failure = result["error"]
    row = table([{"name": "program", "figures": [figure.as_json()]}]).splitlines()[-1]
    assert "**STOPPED**" in row and "stopped after" in row


def test_per_node_cost_is_the_ratio_of_slopes_not_of_totals() -> None:
    # Program: 1 s fixed + 10 ms/node; bare SDK: 0.1 s fixed + 2 ms/node -> 5x per node, while
    # the totals at 100 nodes (2.0 / 0.3 = 6.7) would also count the fixed cost.
    medians = {100: (2.0, 0.3), 1000: (11.0, 2.1), 2000: (21.0, 4.1)}
    figures = program_cost.per_node_cost(medians)
    assert [f.name for f in figures] == [
        "per-node cost N=100->1000: program / bare SDK",
        "per-node cost N=1000->2000: program / bare SDK",
    ]
    assert [round(f.median, 6) for f in figures] == [5.0, 5.0]
    assert figures[0].check(lambda v: v <= 3, "<= 3").met is False
    # A bare slope of zero or less (noise at tiny sizes) gives no figure rather than a division.
    assert program_cost.per_node_cost({10: (1.0, 0.2), 20: (1.1, 0.2)}) == []


def test_a_distribution_major_that_crashed_shows_as_a_crash_in_every_row_of_it() -> None:
    """Its pulls of the crashed round are not kept (containerd fell back to the upstream), the
    rounds before stay in ``runs``, and no row of that major reads as a plain number."""
    from bench import cache
    from bench.common import PartResult

    runs = {"direct": [5.0, 5.0, 5.0]}
    link = {"direct": [31.5, 31.5, 31.5]}
    for major, rounds in ((2, 3), (3, 1)):
        for kind in ("cold", "warm", "fallback", "warm-cache-on"):
            runs[f"{kind}-{major}"] = [5.5] * rounds
            link[f"{kind}-{major}"] = [31.5] * rounds
    part = PartResult("cache")
    cache._figures(part, runs, link, {3: "round 2: ProxyCrashed('exited with 2')"}, "size")

    rows = table([{"name": "cache", "figures": [f.as_json() for f in part.figures]}])
    crashed = [line for line in rows.splitlines() if "| 3.1.1:" in line]
    assert len(crashed) == 12, rows  # 3 pulls, 3 MB, 4 ratios, 2 descriptor cache
    assert all("**CRASH**" in line and "crashed in round 2" in line for line in crashed), rows
    assert not any("**CRASH**" in line for line in rows.splitlines() if "| 2.8:" in line)
    assert all(f.met is not True for f in part.figures if f.name.startswith("3.1.1"))


def _fake_runs(full: list[dict], bare_seconds: list[float]):
    """A stand-in for run_child: ``full`` runs in order, the bare runs in order, the rest fast."""
    fulls, bares = iter(full), iter(bare_seconds)

    def run_child(mode: str, count: int, timeout: float | None = None, cwd: Any = None) -> dict:
        assert mode != "before", "no before tree: nothing of it may run"
        if mode == "full":
            return next(fulls)
        seconds = next(bares) if mode == "bare" else 1.0
        return {"status": "ok", "seconds": seconds, "process_seconds": seconds,
                "maxrss_mb": 1.0, "resources": count}  # fmt: skip

    return run_child


def _ok(seconds: float) -> dict:
    return {"status": "ok", "seconds": seconds, "process_seconds": seconds, "maxrss_mb": 1.0,
            "resources": 50}  # fmt: skip


def test_ratios_pair_the_runs_of_one_round_after_a_full_run_crashed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 2's full run crashed, so it has no bare run: round 3's full must still be divided
    by round 3's bare, not by whatever came next in the list."""
    crashed = {"status": "crashed", "seconds": 1.0, "maxrss_mb": float("nan"), "resources": None,
               "error": "crashed after 1 s: RecursionError"}  # fmt: skip
    # Round 1: 2.0 / 1.0; round 3: 4.0 / 4.0.
    fake = _fake_runs([_ok(2.0), crashed, _ok(4.0)], [1.0, 4.0])
    monkeypatch.setattr(program_cost, "run_child", fake)
    part = program_cost.run(
        sizes=(10,), repeats=3, before=False, read_sizes=(), log=lambda _line: None
    )

    figures = {f.name: f for f in part.figures}
    assert figures["N=10 program / bare SDK"].runs == [2.0, 1.0]
    bare = figures["N=10 SDK: bare program, same resource count"]
    assert bare.runs == [1.0, 4.0] and bare.failure == ""
    assert figures["N=10 wall time, program run"].failure.startswith("crashed after")


def test_a_clone_without_the_before_commit_says_so_in_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(program_cost, "BEFORE_COMMIT", "0000000")  # in no clone
    monkeypatch.setattr(program_cost, "run_child", _fake_runs([_ok(2.0)], [1.0]))
    part = program_cost.run(sizes=(10,), repeats=1, read_sizes=(), log=lambda _line: None)

    [figure] = [f for f in part.figures if f.name == "N=10 before (0000000: depends_on chain)"]
    assert figure.failure == "not run: commit 0000000 not in this clone"
    row = table([{"name": "program", "figures": [figure.as_json()]}]).splitlines()[-1]
    assert "**NOT RUN**" in row and "not run: commit 0000000 not in this clone" in row
