"""The system ssh client, for what runs on a node outside pulumi-command: reading every node
while the program runs (``pulumi preview`` included, see components/fleet.py) and the operator's
checks (scripts/verify.py).

The same SSH story as every other remote action (components/ssh.py): the operator's ssh-agent,
and ALWAYS a pinned host key: a ``KnownHostsCommand`` that prints the pinned line is the only
source of known keys (no known_hosts file is read or written, so a key some earlier session
accepted is not trusted, and a new CI runner needs nothing), with strict checking. A node with no
pinned key is refused before anything is sent to it. No ``import pulumi`` here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from components.plan.node_steps import SSH_FAILURE, Step
from components.settings import Node, Settings

# Seconds per SSH dial attempt (pulumi-command retries; the ssh client's ConnectTimeout).
DIAL_SECONDS = 15


@dataclass(frozen=True)
class StepRun:
    exit_code: int
    stdout: str
    stderr: str


def known_hosts_name(host: str, port: int = 22) -> str:
    """The name ssh looks a host key up by: ``[host]:port`` on any port but 22 (a line for the
    bare host does not match there, and the connection fails host key verification)."""
    return host if port == 22 else f"[{host}]:{port}"


PIN_TOOL = "python scripts/pin_host_keys.py"


def ssh_client_options(host: str, host_key: str, port: int = 22) -> list[str]:
    """Options for the system ssh client (pulumi-docker, the node reads, scripts/verify.py):
    batch mode, and ``host_key`` the one key the host may present."""
    if not host_key:
        raise ValueError(f"{host}: no host key to pin; the program never connects unverified")
    line = shlex.quote(f"{known_hosts_name(host, port)} {host_key}")
    return [
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={DIAL_SECONDS}",
        "-o", "StrictHostKeyChecking=yes",
        # The pinned line is the only known key: the user's and the system's known_hosts files
        # are neither read (a key accepted there earlier would be trusted too) nor written.
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"KnownHostsCommand=/bin/echo {line}",
        "-o", "UpdateHostKeys=no",
    ]  # fmt: skip


def unpinned_problem(node: Node, stack: str | None = None) -> str:
    """One line naming a node that has no ``sshHostPublicKey``, and the command that pins it."""
    command = f"{PIN_TOOL} --stack {stack or '<stack>'}"
    return (
        f"node {node.name} ({node.ssh_user}@{node.address}:{node.ssh_port}): no pinned host key "
        f"(nodes[].sshHostPublicKey), so nothing is sent to it; compare and pin its key: {command}"
    )


def unpinned_cache_host(settings: Settings, stack: str | None = None) -> list[str]:
    """An existing cache host (``host``) without ``sshHostPublicKey``, as one line, like a node."""
    host = settings.host
    if host is None or host.ssh_host_public_key:
        return []
    command = f"{PIN_TOOL} --stack {stack or '<stack>'} --vm"
    return [
        f"host ({host.ssh_user}@{host.address}:22): no pinned host key (host.sshHostPublicKey), "
        f"so nothing is sent to it; compare and pin its key: {command}"
    ]


def unpinned_nodes(nodes: Sequence[Node], stack: str | None = None) -> list[str]:
    """``unpinned_problem`` for every node without a pinned host key, in settings order."""
    return [unpinned_problem(node, stack) for node in nodes if not node.ssh_host_public_key]


def run_on_node(
    node: Node,
    step: Step,
    *,
    agent_socket: str | None = None,
    extra_options: Sequence[str] = (),
    timeout: float = 120.0,
) -> StepRun:
    """Run ``step`` on ``node`` as its ``sshUser``, exactly as pulumi-command would (the command is
    the remote login shell's command line, the content on stdin). The pinning options come before
    ``extra_options`` (``-i KEY`` and the like): for ssh the first value of an option wins, so an
    extra option cannot loosen the host key check. A node with no pinned key is refused
    (SSH_FAILURE) and nothing is sent."""
    if not node.ssh_host_public_key:
        return StepRun(SSH_FAILURE, "", unpinned_problem(node))
    options = [
        *ssh_client_options(node.address, node.ssh_host_public_key, node.ssh_port),
        *extra_options,
    ]
    env = dict(os.environ)
    if agent_socket:
        env["SSH_AUTH_SOCK"] = agent_socket
    argv = ["ssh", *options, "-p", str(node.ssh_port), f"{node.ssh_user}@{node.address}"]
    try:
        done = subprocess.run(
            [*argv, step.command],
            input=step.stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return StepRun(SSH_FAILURE, "", f"no answer within {timeout:.0f} s")
    except FileNotFoundError:
        return StepRun(
            SSH_FAILURE, "", "the ssh client is not installed (apt install openssh-client)"
        )
    return StepRun(done.returncode, done.stdout, done.stderr)
