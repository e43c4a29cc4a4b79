"""ContainerdMirrors: every node's containerd switched to config_path + one hosts.toml per upstream.

Per node, three pulumi-command remote Commands run our scripts (components/renderers/node_steps.py
builds each (command, stdin); the e2e test runs exactly those over real SSH):
- ``<name>-<node>-probe``: reads containerd's version and config.toml. It must run on EVERY
  ``pulumi up`` (someone may have edited config.toml, or containerd was upgraded), so it gets
  ``update`` = ``create`` plus a per-run value in ``triggers``: with an ``update`` command a trigger
  change is an in-place update, never a replacement. The price: every preview shows the probes as
  updates.
- ``<name>-<node>-hosts``: writes the hosts.toml files; stdin = the rendered bundle, so it re-runs
  only when a file's content changes. containerd re-reads hosts.toml per pull: no restart.
- ``<name>-<node>-config``: writes the migrated config.toml (computed from the probe's output in one
  ``apply``), restarts containerd and waits for the CRI plugin, rolling back on failure. When the
  text is already migrated the script sees identical text and does nothing. Not created for nodes
  with ``skip_config_path`` (the summary says what they still need).
``delete`` undoes them (hosts.sh REMOVE_ALL=1, restore.sh). Neither has ``triggers``: a
replacement would run the old resource's delete (= restore) after the new create and undo it.

Secrets: config.toml may hold ``configs.*.auth``; a Command's stdout shows up in the diff even when
secret (pulumi-command #260), so probe and config log nothing (``Logging.NONE``), their stdout,
stderr and stdin are secret outputs, and the previous stdout is not put into the next run's
environment (``add_previous_output_in_env=False``).

Rollout: the first node is a canary; the rest go in batches of ``containerd.batch_size``; every
resource of a batch depends on the previous batch's last step, so a broken config stops at the
canary. ``self.batches`` lists node names per batch.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pulumi
from pulumi_command import remote

from components.renderers.node_probe import parse_step_result
from components.renderers.node_steps import (
    FleetCache,
    NodePlan,
    hosts_step,
    plan_node,
    probe_step,
    restore_config_step,
    restore_hosts_step,
)
from components.settings import Node, Settings
from components.ssh import SshTarget

TYPE = "registry-mirrors:cluster:ContainerdMirrors"


def rollout_batches(nodes: Sequence[Node], batch_size: int) -> list[list[Node]]:
    """Canary first (alone), then the rest in batches of ``batch_size``."""
    if not nodes:
        return []
    rest = list(nodes[1:])
    return [[nodes[0]]] + [rest[i : i + batch_size] for i in range(0, len(rest), batch_size)]


def _report(plan: NodePlan, config_stdout: str | None) -> dict[str, Any]:
    result = parse_step_result(config_stdout or "")
    return {
        "containerdVersion": plan.probe.containerd_version,
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
        agent_socket: str,
        nodes: Sequence[Node] | None = None,
        depends_on: Sequence[pulumi.Resource] = (),
        run_id: str | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(TYPE, name, None, opts)
        self._base_name = name
        self._settings = settings
        self._agent_socket = agent_socket
        # Changes on every program run: makes the probes re-run (see module docstring).
        self._run_id = run_id or uuid.uuid4().hex
        self._fleet_cache: FleetCache = {}
        node_list = list(settings.nodes if nodes is None else nodes)
        batches = rollout_batches(node_list, settings.containerd.batch_size)
        self.batches = [[node.name for node in batch] for batch in batches]
        self.nodes = {}
        self.commands: dict[str, dict[str, remote.Command]] = {}
        # Resource name -> names of the resources it waits for (inspectable rollout order).
        self.waits_for: dict[str, list[str]] = {}

        previous: list[pulumi.Resource] = list(depends_on)
        for batch in batches:
            finished: list[pulumi.Resource] = []
            for node in batch:
                finished.append(self._create_node(node, previous))
            previous = finished

        self.register_outputs({"batches": self.batches, "nodes": self.nodes})

    def _opts(
        self, resource_name: str, depends_on: Sequence[pulumi.Resource], secret: bool
    ) -> pulumi.ResourceOptions:
        self.waits_for[resource_name] = [r.pulumi_resource_name for r in depends_on]
        return pulumi.ResourceOptions(
            parent=self,
            depends_on=list(depends_on),
            additional_secret_outputs=["stdout", "stderr", "stdin"] if secret else None,
        )

    def _create_node(self, node: Node, previous: Sequence[pulumi.Resource]) -> pulumi.Resource:
        settings = self._settings
        prefix = f"{self._base_name}-{node.name}"
        connection = SshTarget(
            host=node.address,
            user=node.ssh_user,
            agent_socket=self._agent_socket,
            port=node.ssh_port,
            host_key=node.ssh_host_public_key,
        ).connection()

        probe = probe_step(settings, node)
        probe_cmd = remote.Command(
            f"{prefix}-probe",
            connection=connection,
            create=probe.command,
            update=probe.command,
            triggers=[self._run_id],
            logging=remote.Logging.NONE,
            add_previous_output_in_env=False,
            opts=self._opts(f"{prefix}-probe", previous, secret=True),
        )
        # Pure computation only: parse the probe, migrate config.toml, render hosts.toml.
        plan = probe_cmd.stdout.apply(
            lambda stdout: plan_node(settings, node, stdout, self._fleet_cache)
        )

        hosts_cmd = remote.Command(
            f"{prefix}-hosts",
            connection=connection,
            create=hosts_step(settings, node, {}).command,
            delete=restore_hosts_step(settings, node).command,
            stdin=pulumi.Output.secret(plan.apply(lambda p: p.hosts.stdin)),
            add_previous_output_in_env=False,
            # No depends_on the previous batch here or below: both take their input from the probe,
            # which waits for it. Every edge costs the SDK a walk over all ancestors (its
            # cycle check), so redundant edges to earlier batches make large fleets slow.
            opts=self._opts(f"{prefix}-hosts", [probe_cmd], secret=False),
        )
        commands = {"probe": probe_cmd, "hosts": hosts_cmd}
        last: remote.Command = hosts_cmd
        config_stdout: pulumi.Output[str] | None = None
        if not node.skip_config_path:
            config_cmd = remote.Command(
                f"{prefix}-config",
                connection=connection,
                # The command carries only the script and the probed checksum: shown in the diff.
                create=pulumi.Output.unsecret(plan.apply(lambda p: p.config.command)),
                delete=restore_config_step(settings, node).command,
                stdin=pulumi.Output.secret(plan.apply(lambda p: p.config.stdin)),
                logging=remote.Logging.NONE,
                add_previous_output_in_env=False,
                # hosts.toml first: once config_path is set, containerd only reads the files.
                opts=self._opts(f"{prefix}-config", [hosts_cmd], secret=True),
            )
            commands["config"] = config_cmd
            last = config_cmd
            config_stdout = config_cmd.stdout
        self.commands[node.name] = commands

        if config_stdout is None:
            report = plan.apply(lambda p: _report(p, None))
        else:
            report = pulumi.Output.all(plan, config_stdout).apply(
                lambda values: _report(values[0], values[1])
            )
        # Versions, booleans and summary lines only: no config text, so no secret.
        self.nodes[node.name] = pulumi.Output.unsecret(report)
        return last
