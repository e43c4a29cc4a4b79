"""`pulumi up` of the node steps over real SSH, with the engine's decision modelled.

The program's own parts run as in ``pulumi up``: every node is read and planned over real SSH
(components/fleet.py ``plan_fleet``, the system ssh client and agent), and ContainerdMirrors
registers the steps (under Pulumi mocks: no engine can be installed here). What the engine then
does is modelled from the state the previous run left (tests/mocks.py ``engine_plan``: a
resource is the old one with its URN or an alias's, ``ignoreChanges`` puts the state's inputs back
before the diff, ``retainOnDelete`` and a missing delete command keep a delete from running), and
each step it would create or update runs over real SSH with exactly the inputs pulumi-command
gets: its ``create`` command as the login shell's command line, its ``stdin``. In rollout order:
batch by batch, each node's steps in order (an order the engine may choose too).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pulumi

from components.containerd_mirrors import ContainerdMirrors
from components.fleet import plan_fleet, ssh_runner
from components.settings import Settings
from tests.integration.testhost import NodeHost
from tests.mocks import EnginePlan, Registered, engine_plan, install_mocks, plain

NAME = "containerd"


@dataclass
class Up:
    """What one run did: the state it leaves, the engine's decision, each step's output that ran."""

    state: list[Registered]
    plan: EnginePlan
    ran: dict[str, str] = field(default_factory=dict)


def fleet_up(
    settings: Settings,
    hosts: Mapping[str, NodeHost],
    agent_socket: str,
    state: list[Registered] | None = None,
    ca_pem: str | None = None,
) -> Up:
    """``hosts``: the test host of each node name that can be reached (a held node needs none).
    ``ca_pem``: with TLS on, the CA certificates the VM's trust step would print (they go on the
    hosts and registries steps' stdin, as in the program)."""
    plans = plan_fleet(settings, ssh_runner(agent_socket))
    mocks = install_mocks()
    built: dict[str, ContainerdMirrors] = {}

    def body() -> pulumi.Output[Any]:
        trust = pulumi.Output.from_input(ca_pem) if ca_pem is not None else None
        mirrors = ContainerdMirrors(NAME, settings, plans, agent_socket, trust_bundle=trust)
        built["mirrors"] = mirrors
        urns = [step.urn for steps in mirrors.commands.values() for step in steps.values()]
        return pulumi.Output.all(*urns, *[gate.urn for gate in mirrors.gates])

    pulumi.runtime.test(body)()
    mirrors = built["mirrors"]
    plan = engine_plan(state or [], mocks.resources)
    up = Up(plan.state, plan)
    runs = set(plan.creates) | set(plan.updates)
    kept = {resource.name: resource for resource in plan.state}
    for batch in mirrors.batches:
        for node in batch:
            for role in mirrors.commands[node]:
                name = f"{NAME}-{node}-{role}"
                inputs = plain(kept[name].inputs)
                if name not in runs or not inputs.get("create"):
                    continue  # pulumi-command runs nothing for a create that is not set
                result = hosts[node].ssh(inputs["create"], inputs.get("stdin") or "")
                assert result.returncode == 0, f"{name} failed:\n{result.stderr}"
                up.ran[name] = result.stdout
    for old in plan.deletes:
        if old.name in plan.deletes_that_run():
            node = next(n for n in hosts if old.name.startswith(f"{NAME}-{n}-"))
            inputs = plain(old.inputs)
            hosts[node].ssh(inputs["delete"], inputs.get("stdin") or "")
            up.ran[old.name] = "delete"
    return up
