"""Part ``engine``: the real engine's own cost for programs of the rollout's shape, beside the
same program under mocks (bench/program_cost.py measures the whole program under mocks).

The program is the rollout exactly as tests/engine/test_rollout.py runs it: the program's
``ContainerdMirrors`` over N nodes planned by the real planner from ``tests.mocks.FakeFleet``
(no SSH), each node step a ``pulumi:index:Stash`` stand-in where the program has a
``remote.Command`` (no provider plugin: none can be built here), gates and all. So the engine
figures are the CLI 3.277.0 (setup-pulumi.sh) + the Automation API + the Python SDK talking to a
real engine on a file backend; what a provider plugin and SSH add on top is NOT in them.

Each measurement runs in a fresh child process (``python -m bench.engine_cost child MODE N``):
- ``engine``: a new stack, ``up`` (every resource created), then ``preview`` (no change) and
  ``up`` again (no change): the wall time of each Automation API call (CLI start, program run in
  this process, engine steps, state written).
- ``skip``: ``engine`` with ``PULUMI_SKIP_CHECKPOINTS=true``: the file backend then writes the
  state once at the end instead of after every step. The difference is the checkpointing: each
  step rewrites the whole state file, so a new stack's ``up`` grows with the square of its
  resource count. (Skipping them is a trade: an ``up`` killed midway leaves no record of the
  steps it ran, and those steps restore a node on delete.)
- ``bare``: the same number of Stash resources, flat (no parent, no dependency), with
  ``PULUMI_SKIP_CHECKPOINTS=true`` like ``skip``: the engine's floor for that many resources.
- ``mocks``: the same rollout program under the tests' recording mocks (no engine).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, PartResult
from bench.program_cost import not_run, run_child

SIZES = (100, 500)


def _settings(nodes: int) -> Any:
    from components.settings.containerd import ContainerdSettings
    from tests.engine.rollout import fleet_settings

    # The program's default batch size.
    return fleet_settings(nodes=nodes, batch_size=ContainerdSettings().batch_size)


def _child_engine(nodes: int, bare: bool, skip_checkpoints: bool = False) -> dict[str, Any]:
    import os

    import pulumi

    from tests.engine.inline import EngineStack
    from tests.engine.rollout import apply_to_nodes, program
    from tests.engine.toolchain import find
    from tests.mocks import FakeFleet

    engine = find()
    if engine is None:
        raise SystemExit("no Pulumi CLI built: run scripts/testenv/setup-pulumi.sh")
    if skip_checkpoints:
        os.environ["PULUMI_SKIP_CHECKPOINTS"] = "true"
    settings = _settings(nodes)
    seen: list[Any] = []
    fleet = FakeFleet()
    rollout = program(settings, fleet, seen)
    count_holder: dict[str, int] = {}

    def flat() -> None:
        for i in range(count_holder["count"]):
            pulumi.Stash(f"bare-{i}", input={"i": i})

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as directory:
        root = Path(directory)
        if bare:
            count_holder["count"] = nodes
            stack = EngineStack.create(engine, root, "bare", flat)
        else:
            stack = EngineStack.create(engine, root, "rollout", rollout)
        start = time.perf_counter()
        stack.up()
        up = time.perf_counter() - start
        if not bare:
            # What the steps did on the nodes: without it the next read finds every node back
            # on its original config, which the planner rightly plans again (drift detection).
            apply_to_nodes(fleet, seen[-1])
        resources = len(stack.our_resources())
        start = time.perf_counter()
        stack.preview(expect_no_changes=True)
        preview = time.perf_counter() - start
        start = time.perf_counter()
        stack.up(expect_no_changes=True)
        again = time.perf_counter() - start
    return {"seconds": up, "preview": preview, "again": again, "resources": resources}


def _child_mocks(nodes: int) -> dict[str, Any]:
    import pulumi

    from tests.engine.rollout import program
    from tests.mocks import FakeFleet, install_mocks

    mocks = install_mocks()
    settings = _settings(nodes)
    seen: list[Any] = []
    run = program(settings, FakeFleet(), seen)

    @pulumi.runtime.test
    def body() -> pulumi.Output[Any]:
        run()
        return pulumi.Output.from_input(None)

    start = time.perf_counter()
    body()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "resources": len(mocks.resources)}


def child_main(mode: str, count: int) -> None:
    if mode == "engine":
        result = _child_engine(count, bare=False)
    elif mode == "skip":
        result = _child_engine(count, bare=False, skip_checkpoints=True)
    elif mode == "bare":
        result = _child_engine(count, bare=True, skip_checkpoints=True)
    elif mode == "mocks":
        result = _child_mocks(count)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result))


def _figure(name: str, results: list[dict[str, Any]], key: str, note: str = "") -> Figure:
    failed = [r for r in results if r["status"] not in ("ok", "not run")]
    figure = Figure(
        "engine", name, "s", [r[key] for r in results if r["status"] == "ok"], note=note
    )
    if failed:
        figure.failure = failed[0]["error"]
    return figure


def run(
    sizes: tuple[int, ...] = SIZES, repeats: int = 1, timeout: float = 600, log: Any = print
) -> PartResult:
    from tests.engine.toolchain import find

    part = PartResult("engine")
    engine = find()
    part.info["cli"] = engine.cli_version if engine else "not built"
    for n in sizes:
        runs: dict[str, list[dict[str, Any]]] = {"engine": [], "skip": [], "bare": [], "mocks": []}
        for _ in range(repeats):
            skip = run_child("skip", n, timeout=timeout, module="bench.engine_cost")
            runs["skip"].append(skip)
            runs["engine"].append(
                run_child("engine", n, timeout=timeout, module="bench.engine_cost")
            )
            count = skip.get("resources") or 0
            runs["bare"].append(
                run_child("bare", count, timeout=timeout, module="bench.engine_cost")
                if count
                else not_run("the engine run did not finish")
            )
            runs["mocks"].append(run_child("mocks", n, timeout=timeout, module="bench.engine_cost"))
            log(f"  engine N={n}: " + "; ".join(
                f"{mode} {r[-1]['status']} {r[-1]['seconds']:.2f}s" for mode, r in runs.items()
            ))  # fmt: skip
        count = next((r["resources"] for r in runs["skip"] if r["status"] == "ok"), None)
        shape = f"{count} resources (N nodes x 2 steps, gates, the component, the caches stand-in)"
        part.add(_figure(f"N={n} engine up (new stack)", runs["engine"], "seconds", shape))
        part.add(_figure(f"N={n} engine preview (no change)", runs["engine"], "preview"))
        part.add(_figure(f"N={n} engine up again (no change)", runs["engine"], "again"))
        part.add(_figure(f"N={n} engine up, PULUMI_SKIP_CHECKPOINTS=true", runs["skip"], "seconds",
                         "the state written once, at the end"))  # fmt: skip
        part.add(_figure(f"N={n} engine preview, PULUMI_SKIP_CHECKPOINTS=true", runs["skip"],
                         "preview"))  # fmt: skip
        part.add(_figure(f"N={n} engine up, flat Stash x same count, no checkpoints", runs["bare"],
                         "seconds", "no parent, no dependency"))  # fmt: skip
        part.add(_figure(f"N={n} same program under mocks", runs["mocks"], "seconds",
                         "no engine: what bench/program_cost.py measures"))  # fmt: skip
        for mode, label in (
            ("engine", "engine up / mocks"),
            ("skip", "engine up (no checkpoints) / mocks"),
        ):
            pairs = [
                (e["seconds"], m["seconds"])
                for e, m in zip(runs[mode], runs["mocks"], strict=False)
                if e["status"] == "ok" and m["status"] == "ok"
            ]
            if pairs:
                part.add(Figure("engine", f"N={n} {label}", "ratio", [e / m for e, m in pairs]))
    return part


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        child_main(sys.argv[2], int(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m bench.engine_cost child MODE N (or bench/run.py)")
