"""The read identity, planned (README "The read identity"): the step that installs it on a node
(apply identity), the requests the read identity sends, and how to tell whether what answered is
this program's read access. Pure: no ``import pulumi``.

The read identity runs only what the apply identity installed: the probe and the verify check
as of the last ``pulumi up``, with the parameters of the last ``pulumi up``. Its gate says which
(``scripts_sha256``, ``params_sha256``), so a reader can tell when a pull request changed them:
other parameters (a node's configFile, containerd.configPath, its flavour) would read other
files, so that answer is not used; other scripts (a pull request that edits probe.sh) are
what the node runs until the next deploy, so that answer is used with a warning when nothing
better is at hand (components/fleet.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from components.plan.node_steps import Step, probe_params, sent_step, verify_params
from components.renderers.flavours import Flavour
from components.renderers.read_access import (
    authorized_keys,
    conf_lines,
    read_access_conf,
    sudoers,
)
from components.renderers.shell import script_text
from components.settings import Node, Settings

ROLE = "read-access"
# Installed beside the gate, in this order in the bundle (install-read-access.sh reads them so).
_SCRIPTS = {"probe": "node/probe.sh", "verify": "node/verify-node.sh"}
_GATE_SCRIPT = "node/read-gate.sh"
# The gate's first line of output; read_access=1 op=... scripts_sha256=... params_sha256=...
HEADER_KEY = "read_access"
# read-gate.sh's exit codes: a request it refuses, a read-access.conf it cannot use.
REFUSED, CONF_UNUSABLE = 64, 65


def reader(settings: Settings, node: Node) -> Node:
    """``node`` as the read identity reaches it: same address, port and pinned host key, the
    read user."""
    return node.model_copy(update={"ssh_user": settings.node_access.read_user})


def read_request(operation: str, images: Sequence[str] = ()) -> Step:
    """What the read identity asks for: the command line sshd hands the gate. No parameters: the
    node has its own."""
    if operation == "probe" and images:
        raise ValueError("probe takes no images")
    return Step(" ".join([operation, *images]))


def access_conf(settings: Settings, node: Node, flavour: Flavour) -> str:
    return read_access_conf(
        probe_params(settings, node),
        verify_params(settings, node, flavour),
        [upstream.host for upstream in settings.upstreams],
    )


def expected_params_sha256(
    settings: Settings, node: Node, operation: str, flavour: Flavour | None = None
) -> str:
    """What the gate prints as ``params_sha256`` when the node's installed parameters are this
    program's (verify needs the flavour: k3s/RKE2 have their own containerd, socket, files)."""
    if operation == "probe":
        lines = conf_lines("probe", probe_params(settings, node))
    else:
        if flavour is None:
            raise ValueError("the verify parameters depend on the node's flavour")
        params = {
            **verify_params(settings, node, flavour),
            "REGISTRIES": " ".join(upstream.host for upstream in settings.upstreams),
        }
        lines = conf_lines("verify", params)
    return hashlib.sha256(lines.encode()).hexdigest()


def expected_scripts_sha256(operation: str) -> str:
    """What the gate prints as ``scripts_sha256`` when its scripts are this program's."""
    text = script_text(_GATE_SCRIPT) + script_text(_SCRIPTS[operation])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class GateAnswer:
    """The gate's first line, and the script's own output after it."""

    operation: str
    scripts_sha256: str
    params_sha256: str
    output: str


def parse_gate_answer(stdout: str) -> GateAnswer | None:
    """None when the output does not start with the gate's line (the gate never ran)."""
    first, _, rest = stdout.partition("\n")
    fields: dict[str, str] = {}
    for word in first.split():
        key, _, value = word.partition("=")
        fields[key] = value
    if fields.get(HEADER_KEY) != "1":
        return None
    return GateAnswer(
        operation=fields.get("op", ""),
        scripts_sha256=fields.get("scripts_sha256", ""),
        params_sha256=fields.get("params_sha256", ""),
        output=rest,
    )


def bundle(settings: Settings, node: Node, flavour: Flavour) -> str:
    """install-read-access.sh's stdin: every file it installs, each after a
    ``# registry-mirrors-read-file: <name> <bytes>`` line. Plain text, secret-free (public keys,
    paths and scripts): the preview shows a reviewer exactly what the read identity may run."""
    files = {
        "read-gate.sh": script_text(_GATE_SCRIPT),
        "probe.sh": script_text(_SCRIPTS["probe"]),
        "verify-node.sh": script_text(_SCRIPTS["verify"]),
        "read-access.conf": access_conf(settings, node, flavour),
        "authorized_keys": authorized_keys(settings.node_access.read_public_keys),
        "sudoers": sudoers(settings.node_access.read_user),
    }
    return "".join(
        f"# registry-mirrors-read-file: {name} {len(text.encode())}\n{text}"
        for name, text in files.items()
    )


def install_step(settings: Settings, node: Node, flavour: Flavour) -> Step:
    # Sent like every step pulumi-command runs (the script on stdin, a short command): a failed
    # install's message is not preceded by the whole script.
    return sent_step(
        node,
        "node/install-read-access.sh",
        {"READ_USER": settings.node_access.read_user},
        bundle(settings, node, flavour),
    )


def remove_step(settings: Settings, node: Node) -> Step:
    """``nodes[].state: restored``: the read identity goes with our other changes."""
    return sent_step(
        node,
        "node/install-read-access.sh",
        {"READ_USER": settings.node_access.read_user, "REMOVE": 1},
    )
