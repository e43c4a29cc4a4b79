"""The files that make the read identity on a node (README "The read identity"): its
``authorized_keys`` (a forced command per key), its sudo rule, and the parameters the read gate
runs the installed scripts with. Pure: no ``import pulumi``; plain functions of plain values.

Why a forced command AND a sudo rule: the probe needs root (config.toml and registries.yaml may
be 0600, the CRI socket is root's), so the read user reaches root through exactly one sudo rule,
for exactly one root-owned script (scripts/node/read-gate.sh) that runs only what is installed
beside it, with only the parameters installed beside it. ``restrict`` turns off everything else
sshd would grant a key (port, agent and X11 forwarding, a pty, ~/.ssh/rc); the forced command
replaces whatever the client asks to run, sftp and scp included.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

INSTALL_DIR = "/usr/local/lib/registry-mirrors"
GATE = f"{INSTALL_DIR}/read-gate.sh"
CONF = "read-access.conf"
# The operations the gate knows, and the parameters each installed script is run with.
OPERATIONS = ("probe", "verify")
# sshd runs the forced command with the user's shell (``sh -c``): "$SSH_ORIGINAL_COMMAND" in
# double quotes is ONE word, never evaluated; the gate gets it as its one argument.
FORCED_COMMAND = f'exec sudo -n {GATE} "$SSH_ORIGINAL_COMMAND"'

_PARAM_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")
_VALUE = re.compile(r"^[^\n\r]*$")


def home_of(user: str) -> str:
    """The read user's home: root-owned, holds only its authorized_keys."""
    return f"/var/lib/{user}"


def authorized_keys(public_keys: Sequence[str]) -> str:
    """One line per read key: ``restrict,command="..." TYPE BASE64 comment``. The key's own
    comment is dropped (the line is ours); sshd unescapes ``\\"`` inside the option."""
    if not public_keys:
        raise ValueError("no read key to authorize")
    command = FORCED_COMMAND.replace("\\", "\\\\").replace('"', '\\"')
    lines = []
    for key in public_keys:
        kind, blob = key.split()[:2]
        lines.append(f'restrict,command="{command}" {kind} {blob} registry-mirrors read identity')
    return "\n".join(lines) + "\n"


def sudoers(user: str) -> str:
    """The one rule: ``user`` may run the gate as root without a password; nothing else. The
    gate checks its one argument itself (sudo cannot say "one word of this form")."""
    return (
        "# registry-mirrors read identity (written by pulumi up; see README 'The read identity'):\n"
        f"# {user} may run the read gate as root, and nothing else.\n"
        f"{user} ALL=(root) NOPASSWD: {GATE}\n"
    )


def conf_lines(operation: str, params: Mapping[str, str]) -> str:
    """``<operation>.<KEY>=<value>`` lines, in the order given: the gate hashes them as they
    stand, and the client compares that with this text."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown read operation {operation!r}")
    lines = []
    for key, value in params.items():
        if not _PARAM_KEY.match(key) or not _VALUE.match(value):
            raise ValueError(f"{operation}.{key}: cannot be installed as a read parameter")
        lines.append(f"{operation}.{key}={value}\n")
    return "".join(lines)


def read_access_conf(
    probe: Mapping[str, str], verify: Mapping[str, str], registries: Sequence[str]
) -> str:
    """The gate's parameters: what probe.sh and verify-node.sh run with, and the registries
    verify may pull images of (those with a cache)."""
    return (
        "# registry-mirrors read access: the parameters read-gate.sh runs the installed scripts\n"
        "# with. Written by pulumi up (install-read-access.sh); edits are overwritten.\n"
        + conf_lines("probe", probe)
        + conf_lines("verify", {**verify, "REGISTRIES": " ".join(registries)})
    )
