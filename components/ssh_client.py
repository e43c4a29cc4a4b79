"""The system ssh client, for what runs on a node outside pulumi-command: reading every node
while the program runs (``pulumi preview`` included, see components/fleet.py) and the operator's
checks (scripts/verify.py).

The same SSH story as every other remote action (components/ssh.py): the operator's ssh-agent,
and the host key pinned where configured (a ``KnownHostsCommand`` that prints the pinned line, so
no known_hosts file is needed), else accepted on first use. No ``import pulumi`` here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from components.plan.node_steps import SSH_FAILURE, Step
from components.settings import Node

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


def ssh_client_options(host: str, host_key: str | None, port: int = 22) -> list[str]:
    """Options for the system ssh client (pulumi-docker, the node reads, scripts/verify.py):
    batch mode, and the host key pinned when known, else accepted on first use."""
    opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={DIAL_SECONDS}"]
    if host_key:
        line = shlex.quote(f"{known_hosts_name(host, port)} {host_key}")
        opts += ["-o", "StrictHostKeyChecking=yes", "-o", f"KnownHostsCommand=/bin/echo {line}"]
    else:
        opts += ["-o", "StrictHostKeyChecking=accept-new"]
    return opts


def run_on_node(
    node: Node,
    step: Step,
    *,
    agent_socket: str | None = None,
    extra_options: Sequence[str] = (),
    timeout: float = 120.0,
) -> StepRun:
    """Run ``step`` on ``node`` as its ``sshUser``, exactly as pulumi-command would (the command is
    the remote login shell's command line, the content on stdin). ``extra_options`` come first:
    for ssh the first value of an option wins."""
    options = [
        *extra_options,
        *ssh_client_options(node.address, node.ssh_host_public_key, node.ssh_port),
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
