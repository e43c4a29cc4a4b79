"""Per node and cache: did THIS node's pull go to the cache? Evidence that other traffic cannot
fake (README "Check the caches work").

For each node and each cache, verify makes a random digest and the node pulls
``<upstream>/<repository>@sha256:<digest>`` through its own hosts.toml (verify-node.sh, or the
read gate, which allows digests). Nothing has that digest, so the pull fails, as intended:
what counts is the request. A node whose hosts.toml lists the cache asks it first, and the cache
logs the request line with the digest in it; a node that bypasses the cache never asks it. The
caches' access logs are then read on the registry VM (scripts/vm/requests-seen.sh, one SSH
session for all nodes). Only that node's pull ever asked for that digest, so a busy cache (the
counter moving with every other node's pulls) proves nothing either way here, unlike a counter
read around the node's pulls, which any other client moves.
"""

from __future__ import annotations

import secrets
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from components.renderers.shell import script_text
from components.ssh_client import ssh_client_options
from components.verify.check import Check

SCRIPT = "vm/requests-seen.sh"
# A repository every upstream answers for: the probe image's own when it has one (a plain 404
# for an unknown digest), else this (the upstream may answer 401 or 404: the request is logged
# by the cache all the same).
FALLBACK_REPOSITORY = "registry-mirrors/verify"
ADVICE = (
    "this node's pull never reached the cache: containerd ignores hosts.toml (config_path not "
    "set, or a `mirrors` entry), or certs.d/<host>/hosts.toml does not list this mirror first, "
    "or the node cannot reach the cache (firewall: registry.allowedCidrs)"
)


@dataclass(frozen=True)
class Probe:
    upstream: str
    container: str
    digest: str  # 64 hex digits, random, for one node and one cache
    reference: str  # what the node pulls: <upstream>/<repository>@sha256:<digest>


def make_probes(mirrors: Mapping[str, Any], probe_images: Mapping[str, str]) -> list[Probe]:
    """One fresh random digest per cache, for one node."""
    probes = []
    for upstream, mirror in sorted(mirrors.items()):
        image = probe_images.get(upstream)
        repository = image.split("@")[0].rsplit(":", 1)[0] if image else FALLBACK_REPOSITORY
        if ":" in repository.rsplit("/", 1)[-1]:
            repository = FALLBACK_REPOSITORY
        digest = secrets.token_hex(32)
        probes.append(
            Probe(
                upstream,
                str(mirror.get("container", upstream)),
                digest,
                f"{upstream}/{repository}@sha256:{digest}",
            )
        )
    return probes


def seen_command(since: int, probes: list[Probe]) -> tuple[str, str]:
    """(command, stdin) for the VM: the script on stdin, the pairs as arguments."""
    words = ["exec", "bash", "-s", str(int(since))]
    for probe in probes:
        words += [probe.container, probe.digest]
    return " ".join(shlex.quote(word) for word in words), script_text(SCRIPT)


def parse_seen(stdout: str) -> tuple[set[tuple[str, str]], dict[str, str]]:
    """(seen (container, digest) pairs, {container: error})."""
    seen: set[tuple[str, str]] = set()
    errors: dict[str, str] = {}
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        name, _, rest = value.partition(" ")
        if key == "seen" and rest:
            seen.add((name, rest.strip()))
        elif key == "error":
            errors[name] = rest.strip()
    return seen, errors


def read_seen(
    outputs: Mapping[str, Any],
    since: int,
    probes: list[Probe],
    ssh_options: list[str],
    timeout: float,
) -> tuple[set[tuple[str, str]], dict[str, str], str]:
    """Over SSH to the registry VM (pinned to its exported host key, as the disk check): which
    probes each cache logged. Returns (seen, per-container errors, why nothing could be read)."""
    vm = outputs.get("registryVm")
    if not isinstance(vm, dict) or not vm.get("address"):
        return set(), {}, "no registryVm in the outputs: the caches' access logs cannot be read"
    host_key = str(vm.get("sshHostPublicKey") or "")
    if not host_key:
        return set(), {}, "no sshHostPublicKey in the registryVm output: the VM is not contacted"
    address, user = str(vm["address"]), str(vm.get("sshUser") or "debian")
    command, script = seen_command(since, probes)
    options = [*ssh_client_options(address, host_key), *ssh_options]
    try:
        result = subprocess.run(
            ["ssh", *options, f"{user}@{address}", command],
            input=script, capture_output=True, text=True, timeout=timeout + 60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return set(), {}, f"{user}@{address}: timed out reading the caches' logs"
    except FileNotFoundError:
        return set(), {}, "no ssh client here"
    if result.returncode != 0:
        said = result.stderr.strip().splitlines()[-1:] or [f"exit {result.returncode}"]
        return set(), {}, f"{user}@{address}: {said[0]}"
    seen, errors = parse_seen(result.stdout)
    return seen, errors, ""


def bypass_rows(
    node: str,
    probes: list[Probe],
    asked: bool,
    seen: set[tuple[str, str]],
    errors: dict[str, str],
    unreadable: str,
) -> list[Check]:
    """One row per cache for ``node``: ok only when the cache logged this node's own digest.
    ``asked``: the node's check ran its pulls (else its own rows already say why not)."""
    if not asked:
        return []
    rows = []
    for probe in probes:
        where = f"{probe.container} access log"
        if unreadable or probe.container in errors:
            why = unreadable or f"docker logs: {errors[probe.container]}"
            rows.append(
                Check(node, where, "bypass", False, f"{probe.upstream}: not checked: {why}",
                      "verify needs the registry VM (SSH as vm.sshUser, as the disk check): "
                      "drop --no-vm, or pass the outputs of this stack's pulumi up")
            )  # fmt: skip
            continue
        ok = (probe.container, probe.digest) in seen
        detail = f"{probe.upstream}: this node's request {probe.digest[:12]}... " + (
            "reached the cache" if ok else "never reached the cache"
        )
        rows.append(Check(node, where, "bypass", ok, detail, ADVICE))
    return rows
