"""Read and plan every node before any resource is registered.

The probe runs during the program itself, ``pulumi preview`` included, over the system ssh client
(components/ssh_client.py), so the hosts and config steps' inputs are known in a preview: the
reviewer sees exactly which nodes change and which restart, and an unchanged fleet shows no
change at all. It is read-only (scripts/node/probe.sh), stored nowhere (its output, which may hold
registry credentials, only reaches resources as secret inputs), and runs in parallel, bounded by
``containerd.probeConcurrency``: 1,000 nodes are not 1,000 sequential SSH round trips.

A node that does not answer, or whose config.toml cannot be migrated, stops the program before
anything is registered, naming every such node at once. A node set to ``state: held`` is not
read at all (components/plan/node_plan.py ``plan_held``): that is how the rest of the fleet and
the VM stay deployable while one node is down.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from components.plan.node_plan import AnyPlan, FleetCache, plan_any, plan_held
from components.plan.node_steps import NodeStepError, Step, check_step, probe_step
from components.settings import Node, Settings
from components.ssh_client import StepRun, run_on_node

StepRunner = Callable[[Node, Step], StepRun]


class FleetReadError(RuntimeError):
    """Nodes that could not be read or planned: one line each, naming the node."""

    def __init__(self, problems: list[str], total: int) -> None:
        self.problems = problems
        super().__init__(
            f"cannot read {len(problems)} of {total} node(s) (nothing was changed):\n"
            + "\n".join(f"  {problem}" for problem in problems)
            + "\n(a node that is down can be held out: nodes[].state: held, see the README's "
            "Troubleshooting)"
        )


def ssh_runner(agent_socket: str) -> StepRunner:
    """Run a step over the system ssh client with the operator's agent (the production runner)."""

    def run(node: Node, step: Step) -> StepRun:
        return run_on_node(node, step, agent_socket=agent_socket)

    return run


def read_node(settings: Settings, node: Node, runner: StepRunner) -> str:
    """probe.sh's stdout for ``node``; NodeStepError naming the node when it fails."""
    run = runner(node, probe_step(settings, node))
    check_step(node, "probe", run.exit_code, run.stderr)
    return run.stdout


def plan_fleet(settings: Settings, runner: StepRunner) -> dict[str, AnyPlan]:
    """Every node's plan, by name, in settings order. Raises FleetReadError listing every node
    that failed (probe or plan) after all were tried."""
    nodes = settings.nodes
    read = [node for node in nodes if node.state != "held"]
    futures = {}
    if read:
        workers = max(1, min(settings.containerd.probe_concurrency, len(read)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
            futures = {node.name: pool.submit(read_node, settings, node, runner) for node in read}
    cache: FleetCache = {}
    plans: dict[str, AnyPlan] = {}
    problems: list[str] = []
    for node in nodes:
        if node.state == "held":
            plans[node.name] = plan_held(node)
            continue
        try:
            plans[node.name] = plan_any(settings, node, futures[node.name].result(), cache)
        except NodeStepError as error:
            problems.append(str(error))
    if problems:
        raise FleetReadError(problems, len(nodes))
    return plans
