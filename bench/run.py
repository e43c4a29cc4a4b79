"""The benchmarks: one command, one machine, one table.

    python bench/run.py [--quick] [--out bench/results.json]
        [--only program,engine,node,cache,front,tls,rollout,vm,memory,drain,disk,evict]
    python bench/run.py --only cache --merge    # re-run one part, keep the others' results

Parts (see each module's docstring): program (bench/program_cost.py, no root), engine
(bench/engine_cost.py: the real engine on programs of the rollout's shape; no root, needs the CLI
from scripts/testenv/setup-pulumi.sh), node
(bench/node_change.py), cache (bench/cache.py), front (bench/front.py: concurrent cold pulls
and TLS through the front, on loopback, no root), tls (bench/tls.py: a CRI pull through the front
over HTTPS vs HTTP, and cold vs direct), rollout (bench/rollout.py), vm
(bench/vm_boot.py: the registry VM's boot-to-ready time under QEMU), memory
(bench/cache_memory.py: each Distribution major's memory under a sustained pull workload, ~50 min;
loopback only, no root), drain (bench/drain.py: a SIGTERM in the middle of a blob transfer, with
and without http.draintimeout; loopback, no root), disk (bench/cache_disk.py: what TTL expiry and
the GC procedure free; loopback, no root), evict (bench/cache_evict.py: the hourly eviction's
time on a cache of a few thousand blobs and the pulls served during it; loopback, no root); all
but program, engine, front, memory, drain, disk and evict need root
(network namespaces, sshd, containerd, QEMU) and what scripts/test.sh installs.
Every figure is the median of its runs; ratios pair runs of the same round. Prints a table and
writes it with every run to ``--out`` (default bench/results.json). Everything a part starts
(processes by pid, namespaces, veths, relays) is torn down in ``finally`` blocks; SIGINT and SIGTERM
are turned into an exception so those run on interruption too.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, Interrupted, PartResult, interruptible, machine_info

PARTS = (
    "program", "engine", "node", "cache", "front", "tls", "rollout", "vm", "memory", "drain",
    "disk", "evict",
)  # fmt: skip
NEEDS_ROOT = {"node", "cache", "tls", "rollout", "vm"}


def run_part(name: str, quick: bool) -> PartResult:
    if name == "program":
        from bench import program_cost

        if quick:
            return program_cost.run(sizes=(10, 100), repeats=3, before=False, read_sizes=(100,))
        return program_cost.run()
    if name == "engine":
        from bench import engine_cost

        return engine_cost.run(sizes=(10, 100) if quick else engine_cost.SIZES)
    if name == "node":
        from bench import node_change

        return node_change.run(rounds=2 if quick else 3)
    if name == "cache":
        from bench import cache

        return cache.run(rounds=1 if quick else 3)
    if name == "front":
        from bench import front

        return front.run(rounds=1 if quick else 2)
    if name == "tls":
        from bench import tls

        return tls.run(rounds=1 if quick else 2)
    if name == "disk":
        from bench import cache_disk

        return cache_disk.run()
    if name == "evict":
        from bench import cache_evict

        if quick:
            return cache_evict.run(repositories=40, tags=2)
        return cache_evict.run()
    if name == "drain":
        from bench import drain

        return drain.run(rounds=1 if quick else 3)
    if name == "memory":
        from bench import cache_memory

        if quick:
            return cache_memory.run(steady_s=120, repositories=60, tags=2)
        return cache_memory.run()
    if name == "vm":
        from bench import vm_boot

        return vm_boot.run(rounds=1 if quick else 2)
    from bench import rollout

    return rollout.run(rounds=1 if quick else 3)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(parts: list[dict[str, Any]]) -> str:
    lines = ["| part | figure | median | unit | runs | target | met | note |",
             "| --- | --- | ---: | --- | --- | --- | --- | --- |"]  # fmt: skip
    for part in parts:
        if part.get("error"):
            lines.append(f"| {part['name']} | ERROR: {part['error']} | | | | | | |")
        for f in part["figures"]:
            met = "" if f["met"] is None else ("yes" if f["met"] else "**NO**")
            runs = ", ".join(_fmt(r) for r in f["runs"])
            median = _fmt(f["median"])
            note = f["note"].strip()
            failure = f.get("failure", "")
            if failure:
                # A crash, a stop or a run that could not start is shown as such, never as a
                # number.
                median = (
                    "**CRASH**" if failure.startswith("crashed")
                    else "**NOT RUN**" if failure.startswith("not run")
                    else "**STOPPED**"
                )  # fmt: skip
                note = f"{failure}; {note}" if note else failure
            lines.append(
                f"| {f['part']} | {f['name'].strip()} | {median} | {f['unit']} | "
                f"{runs} | {f['target'] or ''} | {met} | {note} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer sizes and rounds (minutes)")
    parser.add_argument("--only", default=",".join(PARTS), help="comma-separated parts")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--merge", action="store_true",
        help="replace only the parts run in --out and keep the others (each part records the "
        "date and command of its own run)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(only) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)} (known: {', '.join(PARTS)})")
    if NEEDS_ROOT & set(only) and os.geteuid() != 0:
        parser.error(f"parts {sorted(NEEDS_ROOT & set(only))} need root (netns, sshd, containerd)")

    started = time.monotonic()
    results: list[dict[str, Any]] = []
    status = 0
    with interruptible():
        for name in only:
            print(f"== {name}", flush=True)
            part_start = time.monotonic()
            try:
                part = run_part(name, args.quick)
                entry = {"name": name, "figures": [f.as_json() for f in part.figures],
                         "info": part.info}  # fmt: skip
            except Interrupted as stop:
                print(f"interrupted ({stop}): cleaned up; no results written", file=sys.stderr)
                return 130
            except Exception as error:  # one broken part must not hide the others
                traceback.print_exc()
                entry = {"name": name, "figures": [], "info": {}, "error": repr(error)}
                status = 1
            entry["seconds"] = time.monotonic() - part_start
            results.append(entry)
    date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    command = (
        "python bench/run.py"
        + (" --quick" if args.quick else "")
        + ("" if only == list(PARTS) else f" --only {','.join(only)}")
    )
    for entry in results:
        entry.update(date=date, command=command)
    parts = results
    if args.merge and args.out.exists():
        # Parts kept from the earlier run carry their own date and command (or the document's).
        earlier = json.loads(args.out.read_text())
        kept = {
            p["name"]: {"date": earlier.get("date"), "command": earlier.get("command"), **p}
            for p in earlier.get("parts", [])
        }
        kept.update({entry["name"]: entry for entry in results})
        # Parts this checkout does not know (written by a newer one) are kept too, last.
        parts = [kept[name] for name in PARTS if name in kept]
        parts += [part for name, part in kept.items() if name not in PARTS]
    document = {
        "date": date,
        "command": command + (" --merge" if args.merge else ""),
        "machine": machine_info(),
        "total_seconds": time.monotonic() - started,
        "parts": parts,
        "table_markdown": table(parts),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print()
    print(document["table_markdown"])
    missed = [f["name"] for p in results for f in p["figures"] if f["met"] is False]
    print(f"\n{len(missed)} target(s) missed" + (f": {'; '.join(missed)}" if missed else ""))
    print(f"written: {args.out} ({document['total_seconds']:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
