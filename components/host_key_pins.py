"""Pin the nodes' SSH host keys in a stack file (scripts/pin_host_keys.py). No ``import pulumi``.

The program sends nothing to a node whose ``nodes[].sshHostPublicKey`` is unset (README "Trust
model"): this is how an operator sets it. ``ssh-keyscan`` reads the key each node presents, the
operator compares its fingerprint with the one the node itself shows (on its console, not over the
network being checked), and only then is it written into the stack file, with the file's comments,
order and quoting kept (ruamel.yaml round trip). A node that is already pinned is checked, never
re-pinned silently: a different key is a MISMATCH until the operator names that node with
``--repin`` (a reinstalled node).

``--vm`` does the same for the cache host: ``vm.sshHostPublicKey`` only for a VM made before the
program generated its own host key, so the program can log in once to install that key (README
"Upgrading"); ``host.sshHostPublicKey`` for an existing cache host (``host`` mode), whose own key
every connection pins.
"""

from __future__ import annotations

import io
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML

from components.atomic_files import AtomicFiles
from components.settings import Settings
from components.ssh_client import known_hosts_name
from components.ssh_host_key import fingerprint
from components.stack_file import PROJECT, load_stack_settings

# The first of these the host offers is pinned (pulumi-command and ssh accept any of them).
KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")
VM_TARGET = "vm"


@dataclass(frozen=True)
class Target:
    """A host to pin: ``index`` is the node's position in ``nodes`` (None: the VM)."""

    name: str
    user: str
    address: str
    port: int
    pinned: str | None
    index: int | None
    section: str = "vm"  # the cache host's section (index None): vm or host

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def key_path(self) -> str:
        return (
            f"{self.section}.sshHostPublicKey" if self.index is None else "nodes[].sshHostPublicKey"
        )


@dataclass(frozen=True)
class Scan:
    target: Target
    key: str | None  # "TYPE BASE64", or None when nothing answered
    error: str = ""

    @property
    def status(self) -> str:
        if self.key is None:
            return "unreachable"
        if self.target.pinned is None:
            return "new"
        return "ok" if _same(self.key, self.target.pinned) else "MISMATCH"


def _same(a: str, b: str) -> bool:
    return a.split()[:2] == b.split()[:2]


def targets(settings: Settings, vm: bool) -> list[Target]:
    found = [
        Target(n.name, n.ssh_user, n.address, n.ssh_port, n.ssh_host_public_key, i)
        for i, n in enumerate(settings.nodes)
    ]
    if vm:
        host = settings.cache_host
        section = "vm" if host.created else "host"
        found.append(Target(VM_TARGET, host.ssh_user, host.address, 22,
                            host.ssh_host_public_key, None, section))  # fmt: skip
    return found


def scan(target: Target, timeout: float) -> Scan:
    """The key ``target`` presents (``ssh-keyscan``), the preferred type first."""
    try:
        done = subprocess.run(
            ["ssh-keyscan", "-T", str(max(1, int(timeout))), "-p", str(target.port),
             "-t", ",".join(("ed25519", "ecdsa", "rsa")), target.address],
            capture_output=True, text=True, timeout=timeout + 30, check=False,
        )  # fmt: skip
    except FileNotFoundError:
        return Scan(target, None, "ssh-keyscan is not installed (apt install openssh-client)")
    except subprocess.TimeoutExpired:
        return Scan(target, None, f"no answer within {timeout:.0f} s")
    offered: dict[str, str] = {}
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and not line.startswith("#"):
            offered.setdefault(fields[1], f"{fields[1]} {fields[2]}")
    for key_type in KEY_TYPES:
        if key_type in offered:
            return Scan(target, offered[key_type])
    reason = done.stderr.strip().splitlines()[-1:] or ["no host key offered"]
    return Scan(target, None, reason[0])


def report_line(result: Scan) -> str:
    target = result.target
    head = f"{target.name:<20} {target.where:<28} {result.status:<11}"
    if result.key is None:
        return f"{head} {result.error}"
    line = f"{head} {result.key.split()[0]} {fingerprint(result.key)}"
    if result.status == "MISMATCH":
        assert target.pinned is not None
        line += f" (pinned: {fingerprint(target.pinned)})"
    return line


def to_write(results: Sequence[Scan], repin: set[str]) -> list[Scan]:
    """New keys, and the keys of the hosts named in ``repin`` (whatever was pinned)."""
    return [
        r
        for r in results
        if r.key is not None
        and (r.status == "new" or (r.target.name in repin and r.status == "MISMATCH"))
    ]


def _section_key(config: dict, section: str) -> str | None:
    for key in config:
        parts = str(key).split(":")
        if len(parts) == 3 and parts[1] == "config":
            parts = [parts[0], parts[2]]
        if parts == [PROJECT, section]:
            return key
    return None


def pinned_text(path: Path, pins: Sequence[Scan]) -> str:
    """The stack file's text with each scanned key written in place: comments, order, quoting
    and flow style kept (ruamel.yaml's round trip may re-space a trailing comment)."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # a key on one line, never folded
    yaml.indent(mapping=2, sequence=4, offset=2)
    text = path.read_text(encoding="utf-8-sig")
    document = yaml.load(text)
    config = document["config"]
    for pin in pins:
        assert pin.key is not None
        target = pin.target
        if target.index is None:
            section = config[_section_key(config, target.section)]
        else:
            section = config[_section_key(config, "nodes")][target.index]
        section["sshHostPublicKey"] = pin.key
    out = io.StringIO()
    yaml.dump(document, out)
    return out.getvalue()


def write_pins(path: Path, pins: Sequence[Scan]) -> Settings:
    """Write the pins (all or nothing, atomically) and return the settings read back from the
    written file. ValueError when the result would not load (nothing is written then)."""
    text = pinned_text(path, pins)
    check = path.with_name(f".{path.name}.pin-check")
    try:
        check.write_text(text, encoding="utf-8")
        settings = load_stack_settings(check)
    finally:
        check.unlink(missing_ok=True)
    for pin in pins:
        target = pin.target
        pinned = (
            settings.cache_host.ssh_host_public_key
            if target.index is None
            else settings.nodes[target.index].ssh_host_public_key
        )
        if pinned is None or not _same(pinned, pin.key or ""):
            raise ValueError(f"{target.name}: the key did not land in {path}")
    files = AtomicFiles()
    files.add(path, text.encode(), path.stat().st_mode & 0o777)
    files.write()
    return settings


def known_hosts_line(target: Target, key: str) -> str:
    return f"{known_hosts_name(target.address, target.port)} {key}"
