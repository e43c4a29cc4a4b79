"""Read and plan every node before any resource is registered.

The probe runs during the program itself, ``pulumi preview`` included, over the system ssh client
(components/ssh_client.py), so the hosts and config steps' inputs are known in a preview: the
reviewer sees exactly which nodes change and which restart, and an unchanged fleet shows no
change at all. It is read-only (scripts/node/probe.sh), stored nowhere (its output, which may hold
registry credentials, only reaches resources as secret inputs), and runs in parallel, bounded by
``containerd.probeConcurrency``: 1,000 nodes are not 1,000 sequential SSH round trips.

Who reads (README "The read identity"): the apply identity (``nodes[].sshUser``, sending the
program's own probe) unless the stack has a read identity (``nodeAccess.readPublicKeys``) and the
run is a preview. Then the read identity first (the probe installed on the node); the apply
identity only where the read identity cannot give this program's answer: not installed yet
(a new node, the first ``pulumi up``), installed for other parameters, or older scripts. In a
pull request's preview only the read key is in the agent, so that fallback fails, and the node
is named with both reasons; only older scripts (a pull request that edits probe.sh) are still
read, with a warning: that is the probe the node really runs until the deploy.

A node that does not answer, or whose config.toml cannot be migrated, stops the program before
anything is registered, naming every such node at once. A node set to ``state: held`` is not
read at all (components/plan/node_plan.py ``plan_held``): that is how the rest of the fleet and
the VM stay deployable while one node is down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from components.plan import read_access
from components.plan.node_plan import AnyPlan, FleetCache, plan_any, plan_held
from components.plan.node_steps import (
    SSH_FAILURE,
    NodeStepError,
    Step,
    check_step,
    probe_step,
)
from components.renderers.flavours import Flavour
from components.settings import Node, Settings
from components.ssh_client import StepRun, run_on_node

StepRunner = Callable[[Node, Step], StepRun]
# apply: the apply identity only (no read identity, or `pulumi up` itself). read-first: the read
# identity, the apply identity where it cannot answer (previews). read-only: the read identity
# or nothing (scripts/verify.py --identity read: proves the read identity works).
ReadMode = Literal["apply", "read-first", "read-only"]


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


@dataclass(frozen=True)
class NodeRead:
    """One read of one node: the script's exit code and output (the gate's line removed), the
    node as it was reached (its ``ssh_user`` says which identity answered), and why not the
    read identity (``fallback``) or why its answer is used although not this program's
    (``warning``)."""

    run: StepRun
    node: Node
    fallback: str = ""
    warning: str = ""


@dataclass(frozen=True)
class _Judged:
    run: StepRun
    # Why this is not this program's read access answering ("" when it is).
    reason: str = ""
    # The read identity's answer is still a real one (its scripts are older, its parameters ours).
    usable: bool = False


def _judge(
    settings: Settings, node: Node, operation: str, flavour: Flavour | None, run: StepRun
) -> _Judged:
    answer = read_access.parse_gate_answer(run.stdout)
    if answer is None:
        lines = run.stderr.strip().splitlines()
        said = lines[-1] if lines else "no output"
        if run.exit_code == SSH_FAILURE:
            if "Permission denied" in run.stderr:
                return _Judged(run, "the read key is not accepted (read access not installed "
                               "on the node yet, or the read key is not in the agent)")  # fmt: skip
            # Unreachable, or a host key that is not the pinned one: the apply identity would
            # meet the same node. The caller reports it as it stands.
            return _Judged(run)
        if run.exit_code == read_access.REFUSED:
            return _Judged(run, f"the read gate refused the request: {said}")
        if run.exit_code == read_access.CONF_UNUSABLE:
            return _Judged(run, f"the installed read access is unusable: {said}")
        return _Judged(run, f"the read access does not work (exit {run.exit_code}): {said}")
    script = StepRun(run.exit_code, answer.output, run.stderr)
    if answer.params_sha256 != read_access.expected_params_sha256(
        settings, node, operation, flavour
    ):
        return _Judged(script, "installed for other parameters than this program's (configFile, "
                       "containerd.configPath, flavour or upstreams changed since the last "
                       "pulumi up)")  # fmt: skip
    if answer.scripts_sha256 != read_access.expected_scripts_sha256(operation):
        return _Judged(
            script,
            "the installed read gate or script is not this program's (changed since the last "
            "pulumi up)",
            usable=True,
        )
    return _Judged(script)


def run_read(
    settings: Settings,
    node: Node,
    runner: StepRunner,
    operation: str,
    apply_step: Step,
    *,
    mode: ReadMode,
    flavour: Flavour | None = None,
    images: Sequence[str] = (),
) -> NodeRead:
    """Run the probe (or verify) on ``node`` as ``mode`` says. Returns the script's run; raises
    NodeStepError (naming the node and, after a fallback, both identities' reasons) only when
    no identity could run it. A failing script is the caller's to judge (``check_step``)."""
    if mode == "apply" or not settings.node_access.enabled:
        return NodeRead(runner(node, apply_step), node)
    as_reader = read_access.reader(settings, node)
    judged = _judge(
        settings,
        node,
        operation,
        flavour,
        runner(as_reader, read_access.read_request(operation, images)),
    )
    if not judged.reason:
        return NodeRead(judged.run, as_reader)
    where = f"node {node.name} ({as_reader.ssh_user}@{node.address}:{node.ssh_port}) {operation}"
    if mode == "read-only":
        raise NodeStepError(f"{where}: the read identity cannot read it: {judged.reason}")
    applied = runner(node, apply_step)
    if applied.exit_code == 0:
        return NodeRead(applied, node, fallback=judged.reason)
    if judged.usable and judged.run.exit_code == 0:
        return NodeRead(judged.run, as_reader, warning=judged.reason)
    try:
        check_step(node, operation, applied.exit_code, applied.stderr)
    except NodeStepError as error:
        raise NodeStepError(
            f"{error} (tried first as {as_reader.ssh_user}: {judged.reason})"
        ) from None
    raise AssertionError("check_step passes only exit 0")  # pragma: no cover


def read_node_as(
    settings: Settings, node: Node, runner: StepRunner, mode: ReadMode = "apply"
) -> NodeRead:
    """probe.sh's answer for ``node``; NodeStepError naming the node when it fails."""
    read = run_read(settings, node, runner, "probe", probe_step(settings, node), mode=mode)
    check_step(read.node, "probe", read.run.exit_code, read.run.stderr)
    return read


def read_node(settings: Settings, node: Node, runner: StepRunner, mode: ReadMode = "apply") -> str:
    """probe.sh's stdout for ``node``; NodeStepError naming the node when it fails."""
    return read_node_as(settings, node, runner, mode).run.stdout


def plan_fleet(
    settings: Settings,
    runner: StepRunner,
    mode: ReadMode = "apply",
    reads: dict[str, NodeRead] | None = None,
) -> dict[str, AnyPlan]:
    """Every node's plan, by name, in settings order. Raises FleetReadError listing every node
    that failed (probe or plan) after all were tried. ``reads`` (when given) gets how each node
    was read: which identity, and why not the read identity."""
    nodes = settings.nodes
    read = [node for node in nodes if node.state != "held"]
    futures = {}
    if read:
        workers = max(1, min(settings.containerd.probe_concurrency, len(read)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe") as pool:
            futures = {
                node.name: pool.submit(read_node_as, settings, node, runner, mode) for node in read
            }
    cache: FleetCache = {}
    plans: dict[str, AnyPlan] = {}
    problems: list[str] = []
    for node in nodes:
        if node.state == "held":
            plans[node.name] = plan_held(settings, node)
            continue
        try:
            read = futures[node.name].result()
        except NodeStepError as error:
            problems.append(str(error))
            continue
        if reads is not None:
            reads[node.name] = read
        try:
            plans[node.name] = plan_any(settings, node, read.run.stdout, cache)
        except NodeStepError as error:
            # An older probe's output the planner cannot read: say whose probe it was.
            hint = f" (read as {read.node.ssh_user}: {read.warning})" if read.warning else ""
            problems.append(f"{error}{hint}")
    if problems:
        raise FleetReadError(problems, len(nodes))
    return plans


def read_summary(settings: Settings, reads: dict[str, NodeRead]) -> tuple[list[str], list[str]]:
    """(notes, warnings) for the operator: which nodes were read with the apply identity and
    why, and which with a read access that is not this program's."""
    user = settings.node_access.read_user
    notes = [
        f"node {name} read as {read.node.ssh_user} (the apply identity), not {user}: "
        f"{read.fallback}"
        for name, read in reads.items()
        if read.fallback
    ]
    warnings = [
        f"node {name} read as {user} with scripts that are not this program's ({read.warning}); "
        "this preview shows what the node's installed probe reads, and the next pulumi up "
        "installs this program's"
        for name, read in reads.items()
        if read.warning
    ]
    return notes, warnings
