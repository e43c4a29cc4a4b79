#!/usr/bin/env python3
"""Check that the caches work: for each mirror, the registry API answers and a manifest for a
small known image resolves THROUGH the mirror (which makes the mirror fetch it from upstream).

    pulumi stack output --json --stack dev > outputs.json
    python scripts/verify.py --outputs outputs.json
    python scripts/verify.py --stack dev                       # runs `pulumi stack output` itself
    python scripts/verify.py --outputs o.json --image ghcr.io=org/tool:v1   # choose probe images

Prints a table; exit 0 when every check passed, 1 when any failed (with what to do), 2 on bad
input. Endpoints come only from the stack outputs: it talks to nothing else.
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
    rows = [("UPSTREAM", "ENDPOINT", "CHECK", "RESULT", "DETAIL")] + [
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

    checks: list[Check] = []
    for upstream, mirror in mirrors.items():
        checks += check_mirror(upstream, mirror, images.get(upstream), args.timeout)
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
