"""The benchmark code itself works: the program-cost part for N=10 only, through the same table
and JSON the full run writes. No timing assertions (targets are read from bench/results.json)."""

from __future__ import annotations

import json

from bench import program_cost
from bench.run import table


def test_program_cost_part_for_ten_nodes_produces_the_result_shape() -> None:
    part = program_cost.run(sizes=(10,), repeats=1, log=lambda _line: None)

    entry = {"name": part.name, "figures": [f.as_json() for f in part.figures], "info": part.info}
    document = json.loads(json.dumps({"parts": [entry], "table_markdown": table([entry])}))

    figures = document["parts"][0]["figures"]
    names = [f["name"] for f in figures]
    assert "N=10 wall time, program run" in names
    assert "N=10 peak memory (maxrss)" in names
    assert "N=10 SDK: bare program, 55 resources" in names
    for figure in figures:
        assert set(figure) >= {"part", "name", "unit", "runs", "median", "target", "met", "note"}
        assert len(figure["runs"]) == 1
        assert isinstance(figure["median"], float)
    peak = next(f for f in figures if f["name"] == "N=10 peak memory (maxrss)")
    assert peak["median"] > 0
    assert document["parts"][0]["info"]["resources_per_n"] == {"10": 55}
    assert document["table_markdown"].startswith("| part | figure |")
