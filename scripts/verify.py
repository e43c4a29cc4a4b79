#!/usr/bin/env python3
"""Check that the caches work: for each mirror, the registry API answers and a manifest for a
small known image resolves THROUGH the mirror (which makes the mirror fetch it from upstream).
With --nodes, also per node over SSH (ssh-agent, as `pulumi up`): the CRI plugin is ok, the
effective config reads hosts.toml from containerd.configPath with no `mirrors` left, and each
--node-image pulls through the node's hosts.toml AND lands in its mirror's cache.

    pulumi stack output --json --stack dev > outputs.json
    python scripts/verify.py --outputs outputs.json
    python scripts/verify.py --stack dev                       # runs `pulumi stack output` itself
    python scripts/verify.py --outputs o.json --image ghcr.io=org/tool:v1   # choose probe images
    python scripts/verify.py --stack dev --nodes --node-image docker.io/library/busybox:1.36

Prints a table; exit 0 when every check passed, 1 when any failed (with what to do), 2 on bad
input. It talks only to the endpoints in the outputs and the nodes in the stack's settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.renderers.node_steps import verify_step  # noqa: E402
from components.settings import Node, Settings, SettingsError, load_settings  # noqa: E402
from components.ssh import ssh_client_options  # noqa: E402
from components.stack_file import stack_path, stack_values  # noqa: E402

# Small, long-lived images to resolve through each default upstream. Override with --image.
DEFAULT_PROBE_IMAGES = {
    "docker.io": "library/busybox:1.36",
    "ghcr.io": "fluxcd/flux-cli:v2.4.0",
    "quay.io": "prometheus/busybox:latest",
    "registry.k8s.io": "pause:3.10",
    "reg.kyverno.io": "kyverno/kyverno:v1.13.0",
}
MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


@dataclass
class Check:
    upstream: str
    endpoint: str
    check: str
    ok: bool
    detail: str
    advice: str = ""


def _request(url: str, method: str, timeout: float, accept: str | None = None):
    request = urllib.request.Request(url, method=method)  # noqa: S310 (endpoints from outputs)
    if accept:
        request.add_header("Accept", accept)
    return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310


def _failure(error: Exception, container: str) -> tuple[str, str]:
    if isinstance(error, urllib.error.HTTPError):
        if error.code >= 500:
            return (
                f"HTTP {error.code}",
                f"the mirror cannot reach its upstream or its storage: "
                f"`docker logs {container}` on the registry VM",
            )
        if error.code == 404:
            return f"HTTP {error.code}", "image not found upstream: pick another with --image"
        if error.code in (401, 403):
            return (
                f"HTTP {error.code}",
                "upstream refused the mirror's credentials: check upstreamCredentials",
            )
        return f"HTTP {error.code}", "unexpected answer; see the registry's log"
    reason = getattr(error, "reason", error)
    return (
        f"unreachable ({reason})",
        f"is the container up (`docker ps -a --filter name={container}` on the VM), and does the "
        "Proxmox firewall allow this machine (registry.allowedCidrs)?",
    )


def check_mirror(
    upstream: str, mirror: dict[str, Any], image: str | None, timeout: float
) -> list[Check]:
    endpoint = mirror["endpoint"].rstrip("/")
    container = mirror.get("container", upstream)
    checks = []
    try:
        with _request(f"{endpoint}/v2/", "GET", timeout) as response:
            checks.append(Check(upstream, endpoint, "api", True, f"HTTP {response.status}"))
    except (urllib.error.URLError, OSError) as error:
        detail, advice = _failure(error, container)
        checks.append(Check(upstream, endpoint, "api", False, detail, advice))
        return checks  # a manifest check can only repeat the same failure
    if image is None:
        checks.append(Check(upstream, endpoint, "manifest", True, "skipped: no probe image"))
        return checks
    repository, _, tag = image.rpartition(":")
    if not repository:
        repository, tag = image, "latest"
    url = f"{endpoint}/v2/{repository}/manifests/{tag}"
    try:
        with _request(url, "HEAD", timeout, MANIFEST_TYPES) as response:
            digest = response.headers.get("Docker-Content-Digest", "?")
            checks.append(Check(upstream, endpoint, "manifest", True, f"{image} -> {digest}"))
    except (urllib.error.URLError, OSError) as error:
        detail, advice = _failure(error, container)
        checks.append(Check(upstream, endpoint, "manifest", False, f"{image}: {detail}", advice))
    return checks


def split_image(reference: str) -> tuple[str, str]:
    """``docker.io/library/x:1`` -> (``docker.io``, ``library/x``)."""
    host, _, rest = reference.partition("/")
    repository = rest.split("@", 1)[0].rsplit(":", 1)[0] if ":" in rest else rest.split("@", 1)[0]
    return host, repository


def _catalog(endpoint: str, timeout: float) -> set[str]:
    """Repositories the cache holds locally (the catalog never asks the upstream), all pages."""
    repositories: set[str] = set()
    url: str | None = f"{endpoint}/v2/_catalog?n=1000"
    while url:
        with _request(url, "GET", timeout) as response:
            repositories.update(json.loads(response.read()).get("repositories") or [])
            link = response.headers.get("Link", "")
        # Next page: Link: </v2/_catalog?last=x&n=1000>; rel="next"
        url = f"{endpoint}{link[1 : link.index('>')]}" if 'rel="next"' in link else None
    return repositories


# Named by `ctr deprecations list` (containerd 1.7+) while any registry.mirrors entry is loaded.
MIRRORS_DEPRECATION = "io.containerd.deprecation/cri-registry-mirrors"


def node_report(stdout: str) -> tuple[dict[str, str], dict[str, bool]]:
    """verify-node.sh output -> (fields, {image: pulled ok})."""
    fields: dict[str, str] = {}
    pulls: dict[str, bool] = {}
    for line in stdout.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        if key == "pull":
            image, _, result = value.rpartition(" ")
            pulls[image] = result == "ok"
        else:
            fields[key] = value
    return fields, pulls


def check_node(
    settings: Settings,
    node: Node,
    mirrors: dict[str, Any],
    images: list[str],
    ssh_options: list[str],
    timeout: float,
) -> list[Check]:
    where = f"{node.ssh_user}@{node.address}:{node.ssh_port}"
    step = verify_step(settings, node, images)
    # The same client options pulumi-docker gets; --ssh-option first: for ssh the first wins.
    options = [*ssh_options, *ssh_client_options(node.address, node.ssh_host_public_key)]
    options += ["-p", str(node.ssh_port)]
    try:
        result = subprocess.run(
            ["ssh", *options, f"{node.ssh_user}@{node.address}", step.command],
            input=step.stdin, capture_output=True, text=True, timeout=timeout + 60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return [Check(node.name, where, "ssh", False, "timed out", "is the node up?")]
    if result.returncode != 0 and "cri=" not in result.stdout:
        return [
            Check(
                node.name, where, "ssh", False,
                f"exit {result.returncode}: {result.stderr.strip()[-300:]}",
                "can this machine reach the node with the program's key (ssh-agent)?",
            )
        ]  # fmt: skip
    fields, pulls = node_report(result.stdout)
    expected = settings.containerd.config_path
    checks = [
        Check(
            node.name, where, "cri", fields.get("cri") == "ok", f"cri plugin {fields.get('cri')}",
            "the CRI plugin is not ok: `ctr plugins ls --detailed` on the node; run pulumi up",
        ),
        Check(
            node.name, where, "config_path", fields.get("config_path") == expected,
            f"config_path={fields.get('config_path')!r} (expected {expected!r})",
            "config.toml was not migrated (skipConfigPath?) or was edited since: run pulumi up",
        ),
        Check(
            node.name, where, "mirrors", fields.get("mirrors") == "0",
            f"{fields.get('mirrors')} mirrors entries",
            "`mirrors` next to config_path disables the CRI plugin: run pulumi up",
        ),
    ]  # fmt: skip
    # containerd 1.7+ only (1.6 reports "unsupported"): what the RUNNING daemon loaded, where
    # config_path/mirrors above come from the file on disk.
    deprecations = fields.get("deprecations", "unsupported")
    if deprecations != "unsupported":
        left = MIRRORS_DEPRECATION in deprecations.split()
        checks.append(
            Check(
                node.name, where, "deprecations", not left,
                "running containerd still has a `mirrors` entry" if left
                else "no cri-registry-mirrors deprecation",
                "containerd was not restarted since config.toml changed, or mirrors come from an "
                "imported file: `ctr deprecations list` on the node; run pulumi up",
            )
        )  # fmt: skip
    for image in images:
        host, repository = split_image(image)
        if not pulls.get(image):
            checks.append(
                Check(node.name, where, "pull", False, f"{image}: {result.stderr.strip()[-200:]}",
                      "see the error; is the mirror up and the upstream reachable?")
            )  # fmt: skip
            continue
        mirror = mirrors.get(host)
        if mirror is None:
            checks.append(
                Check(node.name, where, "pull", True, f"{image} ok (no mirror for {host})")
            )
            continue
        try:
            cached = repository in _catalog(mirror["endpoint"].rstrip("/"), timeout)
        except (urllib.error.URLError, OSError, ValueError) as error:
            checks.append(Check(node.name, where, "pull", False, f"{image}: catalog: {error}",
                                "the mirror does not answer its catalog"))  # fmt: skip
            continue
        checks.append(
            Check(
                node.name, where, "pull", cached,
                f"{image} {'cached in' if cached else 'NOT in'} {mirror['endpoint']}",
                "the pull bypassed the mirror: check certs.d/<host>/hosts.toml on the node",
            )
        )  # fmt: skip
    return checks


def load_outputs(args: argparse.Namespace) -> dict[str, Any]:
    if args.outputs:
        return json.loads(Path(args.outputs).read_text())
    result = subprocess.run(
        ["pulumi", "stack", "output", "--json", "--stack", args.stack],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ValueError(f"pulumi stack output failed: {result.stderr.strip()}")
    return json.loads(result.stdout)


def print_table(checks: list[Check]) -> None:
    rows = [("TARGET", "WHERE", "CHECK", "RESULT", "DETAIL")] + [
        (c.upstream, c.endpoint, c.check, "ok" if c.ok else "FAIL", c.detail) for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--outputs", help="file with `pulumi stack output --json`")
    source.add_argument("--stack", help="stack name: runs `pulumi stack output --json`")
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="HOST=REPO:TAG",
        help="probe image for an upstream (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--nodes", action="store_true", help="also check every node over SSH")
    parser.add_argument(
        "--stack-file", type=Path, help="settings for --nodes (default stacks/Pulumi.<stack>.yaml)"
    )
    parser.add_argument(
        "--node-image", action="append", default=[], metavar="REF",
        help="image to pull on each node through hosts.toml, e.g. docker.io/library/busybox:1.36",
    )  # fmt: skip
    parser.add_argument(
        "--ssh-option", action="append", default=[], metavar="OPT",
        help="extra option for ssh, e.g. --ssh-option=-i --ssh-option=~/.ssh/key",
    )  # fmt: skip
    args = parser.parse_args(argv)

    images = dict(DEFAULT_PROBE_IMAGES)
    for item in args.image:
        host, sep, image = item.partition("=")
        if not sep or not image:
            print(f"--image {item!r}: expected HOST=REPO:TAG", file=sys.stderr)
            return 2
        images[host] = image
    try:
        outputs = load_outputs(args)
        mirrors = outputs["mirrors"]
        if not isinstance(mirrors, dict) or not mirrors:
            raise ValueError("output 'mirrors' is empty")
    except (OSError, ValueError, KeyError) as error:
        print(f"cannot read the stack outputs: {error!s}", file=sys.stderr)
        return 2

    settings: Settings | None = None
    if args.nodes:
        settings_file = args.stack_file or (stack_path(args.stack) if args.stack else None)
        if settings_file is None:
            print(
                "--nodes needs --stack or --stack-file (the nodes' SSH settings)", file=sys.stderr
            )
            return 2
        try:
            settings = load_settings(stack_values(settings_file))
        except (OSError, SettingsError) as error:
            print(f"{settings_file}: {error}", file=sys.stderr)
            return 2

    checks: list[Check] = []
    for upstream, mirror in mirrors.items():
        checks += check_mirror(upstream, mirror, images.get(upstream), args.timeout)
    if settings is not None:
        for node in settings.nodes:
            checks += check_node(
                settings, node, mirrors, args.node_image, args.ssh_option, args.timeout
            )
    print_table(checks)
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"\n{len(failed)} check(s) failed:", file=sys.stderr)
        for check in failed:
            print(f"  {check.upstream} {check.check}: {check.detail}", file=sys.stderr)
            print(f"    -> {check.advice}", file=sys.stderr)
        return 1
    print(f"\nall {len(checks)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
