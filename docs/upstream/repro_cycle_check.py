"""Minimal reproduction for docs/upstream/pulumi-python-cycle-check.md (Pulumi Python SDK only).

A rollout in batches: every resource of batch k depends_on every resource of batch k-1. Run
under the SDK's own mocks (no CLI, no engine), one size per process:

    python docs/upstream/repro_cycle_check.py 2000 5      # nodes, batch size
    python docs/upstream/repro_cycle_check.py 2000 5 --parent   # the same order through parents

Prints the program's wall time, or the exception it died with.
"""

from __future__ import annotations

import asyncio
import sys
import time

import pulumi


class Mocks(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        return {}, []


def program(nodes: int, batch_size: int, through_parent: bool) -> pulumi.Output:
    previous: list[pulumi.Resource] = []
    last: list[pulumi.Resource] = []
    for start in range(0, nodes, batch_size):
        batch = range(start, min(start + batch_size, nodes))
        if through_parent:
            # One gate per batch that waits for the previous batch; the batch's resources are its
            # children (the engine creates a child after its parent): the SDK walks no parents.
            gate = pulumi.CustomResource(
                "repro:index:Gate", f"gate-{start}", {}, pulumi.ResourceOptions(depends_on=previous)
            )
            opts = pulumi.ResourceOptions(parent=gate)
        else:
            opts = pulumi.ResourceOptions(depends_on=previous)
        previous = [pulumi.CustomResource("repro:index:Step", f"step-{i}", {}, opts) for i in batch]
        last = previous
    return pulumi.Output.all(*[r.urn for r in last])


def main() -> None:
    nodes, batch_size = int(sys.argv[1]), int(sys.argv[2])
    through_parent = "--parent" in sys.argv
    asyncio.set_event_loop(asyncio.new_event_loop())
    pulumi.runtime.set_mocks(Mocks(), preview=False)
    start = time.perf_counter()
    try:
        pulumi.runtime.test(lambda: program(nodes, batch_size, through_parent))()
    except BaseException as error:  # the point is to report it
        print(f"{nodes} nodes: {type(error).__name__} after {time.perf_counter() - start:.1f} s")
        raise SystemExit(1) from None
    print(f"{nodes} nodes: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
