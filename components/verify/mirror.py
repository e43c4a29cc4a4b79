"""A mirror's registry API from this machine: it answers, a manifest of a small known image
resolves THROUGH it (which makes the mirror fetch it from upstream), and its catalog (what it
holds locally)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from components.verify.check import Check

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
