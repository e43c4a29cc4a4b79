"""Part 1: the whole program under mocks as the fleet grows (wall time, peak memory), before and
after the batch gates, and the node reads that run during the program.

Each measurement runs in a fresh child process (``python -m bench.program_cost child MODE N``)
so its peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that run alone. Modes:

- ``full``: what ``pulumi up`` executes in the Python program: ``program.tune_gc()``, then
  ``program.run()`` with the five default upstreams and N nodes under the tests' recording mocks,
  the nodes read through ``tests.mocks.FakeFleet`` (a stand-in for SSH that answers at once with
  a broken wildcard-mirror node), until every export resolved.
- ``nogc``: ``full`` without ``tune_gc()`` (what the collector tuning buys).
- ``bare``: a program that only registers the same number of resources (one trivial
  CustomResource each, same mocks): the SDK's own per-resource cost.
- ``before``: ``full`` of the program as it was at ``BEFORE_COMMIT`` (rollout order by a
  ``depends_on`` chain from batch to batch, probes as resources), run from ``git archive`` of that
  commit: the same machine, the same run. The SDK's cycle check walked that chain on every edge
  (quadratic) and raised ``RecursionError`` past ~1,650 nodes.
- ``reads``: the node reads alone (``components.fleet.plan_fleet``) with a stand-in that sleeps
  ``READ_SECONDS`` per node (one SSH round trip measured on this machine), at the default
  ``containerd.probeConcurrency``.

A child that exits non-zero is a crash (reported with its last error line), one that runs past
its time limit is stopped (reported with the time it ran): never a number.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import ROOT, Figure, PartResult
from tests.sample import NODE_HOST_KEYS

SIZES = (100, 1000, 2000, 5000)
QUICK_SIZES = (10, 100, 1000)
READ_SIZES = (100, 1000)
# The last commit whose rollout was a depends_on chain
# (docs/upstream/pulumi-python-cycle-check.md).
BEFORE_COMMIT = "707aa7b"
# One SSH round trip to a test host on this machine (FIELD-NOTES: ~0.45 s).
READ_SECONDS = 0.45
TOKEN = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"  # noqa: S105 (a fake)


def node_entries(count: int) -> list[dict[str, Any]]:
    # Every node pinned, as the program requires (the same key: nothing connects here).
    return [
        {
            "name": f"node-{i:05d}",
            "address": f"10.100.{i // 250}.{i % 250 + 1}",
            "sshHostPublicKey": NODE_HOST_KEYS[0],
        }
        for i in range(count)
    ]


def _child_full(nodes: int, tune: bool) -> dict[str, Any]:
    import pulumi

    from components import program
    from tests.mocks import COMMAND, FakeFleet, fake_node_outputs, install_mocks
    from tests.sample import sample_raw

    if tune:
        program.tune_gc()
    raw = sample_raw()
    raw["nodes"] = node_entries(nodes)
    config: dict[str, Any] = {f"registry-mirrors:{k}": v for k, v in raw.items()}
    config["registry-mirrors:proxmoxApiToken"] = TOKEN
    os.environ.setdefault("SSH_AUTH_SOCK", "/run/bench-agent.sock")
    mocks = install_mocks(config, ["registry-mirrors:proxmoxApiToken"])
    mocks.outputs_for[COMMAND] = fake_node_outputs
    resolved: dict[str, Any] = {}

    @pulumi.runtime.test
    def body() -> pulumi.Output[Any]:
        exports = program.run(runner=FakeFleet())
        keys = list(exports)
        return pulumi.Output.all(*exports.values()).apply(
            lambda values: resolved.update(zip(keys, values, strict=True))
        )

    start = time.perf_counter()
    body()
    seconds = time.perf_counter() - start
    nodes_out = resolved.get("nodes") or {}
    assert len(nodes_out) == nodes, f"expected {nodes} node reports, got {len(nodes_out)}"
    return {"seconds": seconds, "resources": len(mocks.resources)}


def _child_bare(count: int) -> dict[str, Any]:
    import pulumi

    from tests.mocks import install_mocks

    mocks = install_mocks()

    @pulumi.runtime.test
    def body() -> pulumi.Output[Any]:
        resources = [
            pulumi.CustomResource("bench:index:Bare", f"bare-{i}", {"value": str(i)})
            for i in range(count)
        ]
        return pulumi.Output.all(*[r.urn for r in resources])

    start = time.perf_counter()
    body()
    seconds = time.perf_counter() - start
    assert len(mocks.resources) == count
    return {"seconds": seconds, "resources": count}


def _child_reads(nodes: int) -> dict[str, Any]:
    from components.fleet import plan_fleet
    from components.settings import load_settings
    from tests.mocks import FakeFleet
    from tests.sample import sample_raw

    class SlowFleet(FakeFleet):
        def __call__(self, node: Any, step: Any) -> Any:
            time.sleep(READ_SECONDS)
            return super().__call__(node, step)

    raw = sample_raw()
    raw["nodes"] = node_entries(nodes)
    settings = load_settings(raw)
    start = time.perf_counter()
    plans = plan_fleet(settings, SlowFleet())
    seconds = time.perf_counter() - start
    assert len(plans) == nodes
    return {
        "seconds": seconds,
        "resources": 0,
        "concurrency": settings.containerd.probe_concurrency,
    }


def child_main(mode: str, count: int) -> None:
    if mode == "bare":
        result = _child_bare(count)
    elif mode == "reads":
        result = _child_reads(count)
    elif mode in ("full", "nogc"):
        result = _child_full(count, tune=mode == "full")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    # Linux: ru_maxrss is in KiB.
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@contextlib.contextmanager
def before_tree() -> Iterator[Path | None]:
    """The project as it was at BEFORE_COMMIT (None when this clone does not have it)."""
    directory = Path(tempfile.mkdtemp(prefix="bench-before-"))
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", BEFORE_COMMIT],
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            yield None
            return
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive.stdout, check=True)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_child(
    mode: str,
    count: int,
    timeout: float | None = None,
    cwd: Path = ROOT,
    module: str = "bench.program_cost",
) -> dict[str, Any]:
    """One measurement in a fresh interpreter. Its ``status`` is ``ok``, ``crashed`` (with the
    child's last error line in ``error``) or ``stopped`` (killed after ``timeout``; the peak RSS
    it had reached is then a lower bound)."""
    start = time.perf_counter()
    child_mode = "full" if mode == "before" else mode
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "child", child_mode, str(count)],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(cwd)},
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hwm = _hwm_mb(proc.pid)
        proc.kill()
        proc.communicate()
        elapsed = time.perf_counter() - start
        return {"status": "stopped", "seconds": elapsed, "maxrss_mb": hwm, "resources": None,
                "error": f"stopped after {elapsed:.0f} s (limit {timeout:.0f} s)"}  # fmt: skip
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit {proc.returncode}"
        return {"status": "crashed", "seconds": elapsed, "maxrss_mb": float("nan"),
                "resources": None, "error": f"crashed after {elapsed:.0f} s: {reason}"}  # fmt: skip
    result = json.loads(stdout.strip().splitlines()[-1])
    result["process_seconds"] = elapsed
    result["status"] = "ok"
    return result


def not_run(reason: str) -> dict[str, Any]:
    """The place of a run that was not started, so that lists of runs stay aligned by round."""
    return {"status": "not run", "seconds": float("nan"), "maxrss_mb": float("nan"),
            "resources": None, "error": f"not run: {reason}"}  # fmt: skip


def _figure(
    name: str, unit: str, results: list[dict[str, Any]], key: str = "seconds", note: str = ""
) -> Figure:
    """A figure of the runs that finished; a crash or a stop is the figure's failure (a run
    that was not started is not: the crash that prevented it is reported where it happened)."""
    failed = [r for r in results if r["status"] not in ("ok", "not run")]
    figure = Figure("program", name, unit, [r[key] for r in results if r["status"] == "ok"],
                    note=note)  # fmt: skip
    if failed:
        figure.failure = failed[0]["error"]
    return figure


def per_node_cost(medians: dict[int, tuple[float, float]]) -> list[Figure]:
    """The cost of one more node, program vs bare SDK, between consecutive sizes: the slope of
    each run time, so the fixed cost of a run (imports done, settings parsed, five caches and a
    VM declared) does not count as per-node cost. ``medians``: size -> (program s, bare s)."""
    sizes = sorted(medians)
    figures = []
    for small, large in itertools.pairwise(sizes):
        program = (medians[large][0] - medians[small][0]) / (large - small)
        bare = (medians[large][1] - medians[small][1]) / (large - small)
        if bare <= 0:  # noise at tiny sizes: no slope to compare against
            continue
        figures.append(
            Figure("program", f"per-node cost N={small}->{large}: program / bare SDK", "ratio",
                   [program / bare], note=f"{program * 1000:.2f} ms vs {bare * 1000:.2f} ms "
                   "per node (slopes of the median runs)")
        )  # fmt: skip
    return figures


def run(
    sizes: tuple[int, ...] = SIZES,
    repeats: int = 3,
    slow_repeats: int = 1,
    slow_from: int = 1000,
    timeout: float = 420,
    before: bool = True,
    read_sizes: tuple[int, ...] = READ_SIZES,
    log: Any = print,
) -> PartResult:
    """``repeats`` runs per size below ``slow_from``, ``slow_repeats`` from there on. ``before``
    also measures BEFORE_COMMIT's program at each size (stopped after ``timeout`` s)."""
    part = PartResult("program")
    full_runs: dict[int, list[dict[str, Any]]] = {}
    # Per size: median program run and median bare-SDK run (both finished).
    medians: dict[int, tuple[float, float]] = {}
    with before_tree() as old_tree:
        for n in sizes:
            results: dict[str, list[dict[str, Any]]] = {"full": [], "nogc": [], "bare": []}
            results["before"] = []
            for _ in range(repeats if n < slow_from else slow_repeats):
                full = run_child("full", n, timeout=timeout)
                results["full"].append(full)
                results["nogc"].append(run_child("nogc", n, timeout=timeout))
                count = full.get("resources") or 0
                # Always one bare entry per round: the ratio below pairs the lists by position,
                # so a round without one would pair later rounds' full runs with the wrong bare.
                results["bare"].append(
                    run_child("bare", count) if count else not_run("the full run did not finish")
                )
                if before and old_tree is not None:
                    results["before"].append(run_child("before", n, timeout, cwd=old_tree))
                log(f"  program N={n}: " + "; ".join(
                    f"{mode} {r[-1]['status']} {r[-1]['seconds']:.2f}s"
                    for mode, r in results.items() if r
                ))  # fmt: skip
            full_runs[n] = results["full"]
            count = next((r["resources"] for r in results["full"] if r["status"] == "ok"), None)
            wall = part.add(
                _figure(f"N={n} wall time, program run", "s", results["full"],
                        note=f"{count} resources; tune_gc + run() until every export resolved")
            )  # fmt: skip
            part.add(_figure(f"N={n} wall time, whole process", "s",
                             [r if r["status"] != "ok" else {**r, "seconds": r["process_seconds"]}
                              for r in results["full"]],
                             note="interpreter start + imports + program"))  # fmt: skip
            part.add(_figure(f"N={n} without tune_gc (default collector)", "s", results["nogc"]))
            part.add(_figure(f"N={n} SDK: bare program, same resource count", "s",
                             results["bare"], note="one trivial CustomResource each"))  # fmt: skip
            ok = [
                (f["seconds"], b["seconds"])
                for f, b in zip(results["full"], results["bare"], strict=False)
                if f["status"] == "ok" and b["status"] == "ok"
            ]
            if ok:
                part.add(
                    Figure("program", f"N={n} program / bare SDK", "ratio", [f / b for f, b in ok],
                           note="whole runs: includes the fixed cost (settings, components)")
                )  # fmt: skip
                medians[n] = (
                    statistics.median(f for f, _ in ok),
                    statistics.median(b for _, b in ok),
                )
            before_name = f"N={n} before ({BEFORE_COMMIT}: depends_on chain)"
            if results["before"]:
                part.add(_figure(before_name, "s", results["before"]))
            elif before and old_tree is None:
                # A shallow clone lacks the commit: say so in the table rather than leave out
                # the rows the comparison is about.
                missing = f"not run: commit {BEFORE_COMMIT} not in this clone"
                part.add(Figure("program", before_name, "s", [], failure=missing))
            rss = part.add(_figure(f"N={n} peak memory (maxrss)", "MB", results["full"],
                                   key="maxrss_mb"))  # fmt: skip
            if n == 1000:
                wall.check(lambda v: v < 10, "< 10 s (2 cores)")
            if n == 2000:
                rss.check(lambda v: v < 1024, "< 1024 MB")
            if n == 5000:
                wall.check(lambda v: v < 60, "completes, < 60 s")
    for figure in per_node_cost(medians):
        part.add(figure).check(lambda v: v <= 3, "<= 3")
    if 1000 in full_runs and 2000 in full_runs:
        pairs = [
            (a["seconds"], b["seconds"])
            for a, b in zip(full_runs[2000], full_runs[1000], strict=False)
            if a["status"] == "ok" and b["status"] == "ok"
        ]
        part.add(
            Figure("program", "t(2000)/t(1000), program run", "ratio", [a / b for a, b in pairs])
        ).check(lambda v: v <= 2.0, "<= 2.0")
    for n in read_sizes:
        reads = run_child("reads", n, timeout=timeout)
        log(f"  node reads N={n}: {reads['status']} {reads['seconds']:.2f}s")
        part.add(
            _figure(f"N={n} node reads during the program ({READ_SECONDS} s per read)", "s",
                    [reads], note=f"stand-in for SSH; probeConcurrency "
                    f"{reads.get('concurrency', '?')}; {n * READ_SECONDS:.0f} s if sequential")
        )  # fmt: skip
    part.info["upstreams"] = 5
    part.info["batch_size"] = 5
    part.info["timeout_seconds"] = timeout
    part.info["before_commit"] = BEFORE_COMMIT
    return part


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        child_main(sys.argv[2], int(sys.argv[3]))
    else:
        sizes = tuple(int(a) for a in sys.argv[1:]) or QUICK_SIZES
        for figure in run(sizes, repeats=1).figures:
            print(figure.name, figure.median, figure.met, figure.failure)
