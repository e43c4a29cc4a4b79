"""ContainerdMirrors: every node's containerd switched to config_path + one hosts.toml per upstream.

Input: every node's ``NodePlan``, decided before any resource exists: components/fleet.py reads
each node while the program runs (``pulumi preview`` included) and plans it from what it read. So
every step's inputs are known in a preview, and a step runs on ``pulumi up`` only when its inputs
differ from the last apply: an unchanged fleet shows no change, a node whose config.toml was
edited by hand shows exactly its config step.

Per node, the plan's steps become pulumi-command remote Commands (components/plan/node_steps.py
builds each (command, stdin); the end-to-end test runs exactly those over real SSH), each after
the one before:
- ``<name>-<node>-hosts``: writes the hosts.toml files (stdin: the bundle). containerd re-reads
  hosts.toml per pull: no restart.
- ``<name>-<node>-config``: writes the migrated config.toml, restarts containerd and waits for the
  CRI plugin, rolling back on failure. Not created for nodes with ``skip_config_path`` (the
  summary says what they still need).
- k3s and RKE2 nodes instead: ``<name>-<node>-registries``: writes the merged registries.yaml,
  restarts the distribution's unit, waits for its CRI plugin, checks the hosts.toml it generated,
  rolling back on failure. Those distributions regenerate their containerd config and certs.d
  from registries.yaml at start.
- ``nodes[].state: restored``: ``<name>-<node>-restore-config`` then ``-restore-hosts`` (k3s/RKE2:
  ``-restore-registries``) put the node's original files back, once (and remove the CA file).
- TLS on (issue 20): the stdin of the hosts and registries steps is the script, then the CA
  certificates the VM made (``trust_bundle``; node_steps.with_trust), then the content. The step
  writes them to its CA file before any file naming it and records that file with what it left
  (APPLY_MARK), so a CA file removed or changed on the node shows as drift like a hosts.toml.

Nothing is ever undone as a side effect. No step has a delete command, and every step is
``retain_on_delete``: a step that leaves the program (its node removed, renamed, set to
skipConfigPath or restored; ``pulumi destroy``) leaves the state and nothing runs on the node. (A
delete that restored, as before, undid a renamed node's config and removed the hosts.toml files
its new steps had just written.) Undoing our changes is the explicit ``restored`` state. Reorder
and batch-size changes move steps between gates: the URN of a child holds its parent's TYPE, the
same Stash for every gate, so each step keeps its URN.

``nodes[].state: held``: the node is not read (components/fleet.py) and its steps are registered
with ``ignore_changes`` on every input: the engine keeps what the state holds for them (no diff:
nothing runs, nothing is read), they stay in the state, and the batch gates still wait for them
(an unchanged step: at once). A held node is never a canary, and a held control-plane node takes
no turn among the servers: it is not restarted, and no server waits on its health.
A held node that has no step in the state yet gets steps with no ``create``: pulumi-command then
runs nothing (and dials nothing) on create.

No step has ``triggers``: pulumi-command's Python SDK gives every ``remote.Command``
``replace_on_changes=["triggers[*]"]`` (pulumi-command #855), so a changed trigger REPLACES the
command.

Secrets: config.toml and registries.yaml may hold ``configs.*.auth``; a Command's stdout shows
up in the diff even when secret (pulumi-command #260), so the config and registries steps log
nothing (``Logging.NONE``), their stdout, stderr and stdin are secret outputs, and the previous
stdout is not put into the next run's environment (``add_previous_output_in_env=False``).

Rollout (``rollout_batches``): control-plane nodes (k3s/RKE2 servers, or ``nodes[].role``) first,
one per batch whatever ``containerd.batch_size``; then the workers: the first is a canary, the rest
go in batches of ``containerd.batch_size``; a batch starts only after the last step of every node of
the batch before, so a broken config stops at the canary, and a server's step ends only once it is
healthy as a cluster member again. The order is carried by one gate per batch, a
``pulumi:index:Stash`` (a value kept in the state; nothing runs): gate k depends on the last step
of every node of batch k-1 (gate 0 on ``depends_on``, the caches), and the steps of batch k are
its CHILDREN. The engine creates a child only after its parent and deletes children before their
parent, so ``pulumi up``, ``destroy`` and ``--target`` keep the order. A step's URN names its
parent's type, not its name: a node that moves to another batch keeps its URN. Why parents and
not ``depends_on`` from batch to batch: the Python SDK checks every dependency edge for a cycle by
walking all transitive dependencies of its target (pulumi/runtime/resource_cycle_breaker.py, a
recursive generator), so a chain of batches made every walk cover every earlier batch: quadratic,
and a ``RecursionError`` past ~1,650 nodes. It does not walk parents.
docs/upstream/pulumi-python-cycle-check.md has the numbers and the upstream report.

The node steps used to be children of this component: ``Alias(parent=self)`` tells the engine they
are the same resources (a gate's type in their URN is new), so an existing stack updates them in
place instead of replacing them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import pulumi
from pulumi_command import remote

from components.plan.node_plan import AnyPlan, HeldPlan, NodeStep, step_to_send
from components.plan.node_probe import parse_step_result
from components.plan.node_steps import node_role
from components.settings import Node, Settings
from components.ssh import SshTarget

TYPE = "registry-mirrors:cluster:ContainerdMirrors"
# Steps whose stdin and output may hold registry credentials (components/plan/node_plan.py).
SENSITIVE_ROLES = frozenset({"config", "registries"})


def rollout_batches(
    nodes: Sequence[Node],
    batch_size: int,
    control_planes: Collection[str] = (),
    held: Collection[str] = (),
) -> list[list[Node]]:
    """Control-plane nodes first, each alone, in the settings' order (the first is the canary);
    then the workers: the first alone (their canary), the rest in batches of ``batch_size``.

    One at a time whatever ``batch_size``: two of three k3s servers with embedded etcd restarting
    together lose quorum, and each server's step only ends once it is healthy as a cluster member
    again (components/plan/node_steps.py HEALTH_COMMAND). Before the workers: as in any Kubernetes
    upgrade, the control plane first. A fleet without control-plane nodes is batched as before
    (same gates, same order).

    A ``held`` node runs nothing (nodes[].state: held): it is never a canary, and a held
    control-plane node takes no turn of its own among the servers (nothing of it restarts or is
    waited for); it keeps its place among the other nodes of the batches."""
    servers = [[node] for node in nodes if node.name in control_planes and node.name not in held]
    others = [node for node in nodes if node.name not in control_planes or node.name in held]
    canary = next((node for node in others if node.name not in held), None)
    if canary is None:
        return [*servers, others] if others else servers
    rest = [node for node in others if node is not canary]
    return [
        *servers,
        [canary],
        *(rest[i : i + batch_size] for i in range(0, len(rest), batch_size)),
    ]


# Every input of a remote.Command: what a held node's steps keep from the state.
COMMAND_INPUTS = [
    "connection",
    "create",
    "update",
    "delete",
    "stdin",
    "environment",
    "logging",
    "triggers",
    "add_previous_output_in_env",
]


def _report(plan: AnyPlan, role: str, stdout: str | None) -> dict[str, Any]:
    """What the last apply did to the node (its config or registries step's output)."""
    result = parse_step_result(stdout or "")
    return {
        "state": plan.state,
        "flavour": plan.flavour.name,
        "role": role,
        "containerdVersion": None if plan.probe is None else plan.probe.containerd_version,
        "configChanged": result.changed,
        "restarted": result.restarted,
        # containerd 1.7+ after a restart: what `ctr deprecations list` names (None otherwise).
        "deprecations": None if result.deprecations is None else list(result.deprecations),
        "summary": list(plan.summary),
    }


class ContainerdMirrors(pulumi.ComponentResource):
    batches: list[list[str]]
    nodes: dict[str, pulumi.Output[dict[str, Any]]]

    def __init__(
        self,
        name: str,
        settings: Settings,
        plans: Mapping[str, AnyPlan],
        agent_socket: str,
        depends_on: Sequence[pulumi.Resource] = (),
        trust_bundle: pulumi.Output[str] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        self._base_name = name
        self._agent_socket = agent_socket
        # The CA certificates the VM made (TLS on): on the stdin of each step that writes a file
        # naming them, after the script and before its content (node_steps.with_trust).
        self._trust_bundle = trust_bundle
        roles = {node.name: node_role(node, plans[node.name].flavour) for node in settings.nodes}
        control_planes = {name for name, role in roles.items() if role == "control-plane"}
        held = {name for name, plan in plans.items() if plan.state == "held"}
        batches = rollout_batches(
            settings.nodes, settings.containerd.batch_size, control_planes, held
        )
        self.batches = [[node.name for node in batch] for batch in batches]
        self.nodes = {}
        self.commands: dict[str, dict[str, remote.Command]] = {}
        self.gates: list[pulumi.Stash] = []

        previous: list[pulumi.Resource] = list(depends_on)
        for index, batch in enumerate(batches):
            gate = pulumi.Stash(
                f"{name}-batch-{index}",
                input={"batch": index, "nodes": [node.name for node in batch]},
                opts=pulumi.ResourceOptions(parent=self, depends_on=previous),
            )
            self.gates.append(gate)
            previous = [
                self._create_node(node, plans[node.name], gate, roles[node.name]) for node in batch
            ]
        # The last step of every node of the last batch (the gates make them wait for every
        # earlier batch); with no nodes, what the first gate would wait for.
        self.last_steps: list[pulumi.Resource] = previous

        self.register_outputs({"batches": self.batches, "nodes": self.nodes})

    def _create_node(
        self, node: Node, plan: AnyPlan, gate: pulumi.Stash, role: str
    ) -> remote.Command:
        connection = SshTarget(
            host=node.address,
            user=node.ssh_user,
            agent_socket=self._agent_socket,
            port=node.ssh_port,
            # Unpinned nodes are refused before planning; SshTarget refuses an empty key too.
            host_key=node.ssh_host_public_key or "",
        ).connection()
        commands: dict[str, remote.Command] = {}
        last: remote.Command | None = None
        if isinstance(plan, HeldPlan):
            for step_role in plan.roles:
                last = self._create_held_step(node, step_role, connection, gate, last)
                commands[step_role] = last
        for step in plan.steps:
            last = self._create_step(node, step, connection, gate, last)
            commands[step.role] = last
        assert last is not None, "a node plan has at least one step"
        self.commands[node.name] = commands

        reporter = commands.get(plan.report_role)
        report = (
            pulumi.Output.from_input(_report(plan, role, None))
            if reporter is None
            else reporter.stdout.apply(lambda stdout: _report(plan, role, stdout))
        )
        # Versions, booleans and summary lines only: no config text, so no secret.
        self.nodes[node.name] = pulumi.Output.unsecret(report)
        return last

    def _create_step(
        self,
        node: Node,
        step: NodeStep,
        connection: remote.ConnectionArgs,
        gate: pulumi.Stash,
        previous: remote.Command | None,
    ) -> remote.Command:
        secret = step.sensitive
        stdin: pulumi.Input[str] = step.create.stdin
        if step.trusts_ca:
            if self._trust_bundle is None:
                raise ValueError(f"{node.name} {step.role}: TLS is on but no CA was given")
            stdin = self._trust_bundle.apply(lambda pem: step_to_send(step, pem).stdin)
        return remote.Command(
            f"{self._base_name}-{node.name}-{step.role}",
            connection=connection,
            # The command carries the parameters (checksums and a mark, never a secret) and the
            # script's checksum: shown in the diff. The script and the content travel on stdin.
            create=step.create.command,
            stdin=pulumi.Output.secret(stdin) if secret else stdin,
            logging=remote.Logging.NONE if secret else None,
            add_previous_output_in_env=False,
            opts=pulumi.ResourceOptions.merge(
                self._step_options(gate, previous),
                pulumi.ResourceOptions(
                    additional_secret_outputs=["stdout", "stderr", "stdin"] if secret else None
                ),
            ),
        )

    def _create_held_step(
        self,
        node: Node,
        role: str,
        connection: remote.ConnectionArgs,
        gate: pulumi.Stash,
        previous: remote.Command | None,
    ) -> remote.Command:
        """A held node's step: every input as the state has it (ignore_changes), so the engine
        sees no diff and runs nothing; ``create`` None for a step the state does not hold yet."""
        return remote.Command(
            f"{self._base_name}-{node.name}-{role}",
            connection=connection,
            opts=pulumi.ResourceOptions.merge(
                self._step_options(gate, previous, ignore_changes=COMMAND_INPUTS),
                pulumi.ResourceOptions(
                    additional_secret_outputs=["stdout", "stderr", "stdin"]
                    if role in SENSITIVE_ROLES
                    else None
                ),
            ),
        )

    def _step_options(
        self,
        gate: pulumi.Stash,
        previous: pulumi.Resource | None,
        ignore_changes: list[str] | None = None,
    ) -> pulumi.ResourceOptions:
        """Where a step sits in the rollout: a child of its batch's gate, after the node's step
        before it, and the same resource as when it was a child of this component; kept on the
        node when it leaves the program, and (a held node) every input as the state has it. The
        engine tier (tests/engine/test_rollout.py) builds its stand-in steps with exactly these."""
        return pulumi.ResourceOptions(
            parent=gate,
            depends_on=[previous] if previous is not None else None,
            aliases=[pulumi.Alias(parent=self)],
            # Leaving the program never runs anything on the node (module docstring).
            retain_on_delete=True,
            ignore_changes=ignore_changes,
        )
