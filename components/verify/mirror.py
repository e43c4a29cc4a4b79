"""A mirror's registry API from this machine: its certificate (TLS on: the handshake trusting
exactly the stack's CA, the VM's address in its names, the days left), it answers, a manifest of
a small known image resolves THROUGH it (which makes the mirror fetch it from upstream), and its
catalog (what it holds locally)."""

from __future__ import annotations

import datetime
import json
import socket
import ssl
import urllib.error
import urllib.parse
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


def tls_context(ca_pem: str | None) -> ssl.SSLContext | None:
    """A client context trusting exactly ``ca_pem`` (the stack's CA certificates, from the
    ``tls`` output), as the nodes do: not the system's CAs."""
    if not ca_pem:
        return None
    # With cadata given, create_default_context loads none of the system's CAs.
    return ssl.create_default_context(cadata=ca_pem)


def _request(
    url: str,
    method: str,
    timeout: float,
    accept: str | None = None,
    context: ssl.SSLContext | None = None,
):
    request = urllib.request.Request(url, method=method)  # noqa: S310 (endpoints from outputs)
    if accept:
        request.add_header("Accept", accept)
    return urllib.request.urlopen(request, timeout=timeout, context=context)  # noqa: S310


def _failure(error: Exception, container: str) -> tuple[str, str]:
    reason = getattr(error, "reason", error)
    if isinstance(reason, ssl.SSLCertVerificationError):
        return (
            f"TLS: {reason.verify_message}",
            "the cache's certificate does not come from the CA in the stack's `tls` output (or "
            "does not name this address): nodes trusting that CA bypass this cache. A VM "
            "recreated or a CA rotated: run pulumi up (the nodes get the new CA)",
        )
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


def check_tls(
    upstream: str,
    mirror: dict[str, Any],
    context: ssl.SSLContext | None,
    warning_days: int,
    timeout: float,
    now: datetime.datetime | None = None,
) -> Check:
    """The handshake as a node makes it (trusting only the stack's CA, the address checked
    against the certificate's IP names), the names it carries and the days it has left: fewer
    than ``warning_days`` means the VM's hourly renewal has not been working."""
    endpoint = mirror["endpoint"].rstrip("/")
    where = urllib.parse.urlsplit(endpoint)
    host, port = where.hostname or "", where.port or 443
    if context is None:
        return Check(upstream, endpoint, "tls", False, "no CA certificates in the `tls` output",
                     "pass the full `pulumi stack output --json` (its `tls` output)")  # fmt: skip
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            certificate = tls.getpeercert() or {}
    except ssl.SSLCertVerificationError as error:
        detail, advice = _failure(urllib.error.URLError(error), mirror.get("container", upstream))
        return Check(upstream, endpoint, "tls", False, detail, advice)
    except (OSError, ssl.SSLError) as error:
        detail, advice = _failure(urllib.error.URLError(error), mirror.get("container", upstream))
        return Check(upstream, endpoint, "tls", False, detail, advice)
    names = [f"{kind} {value}" for kind, value in certificate.get("subjectAltName", ())]
    expires = datetime.datetime.fromtimestamp(
        ssl.cert_time_to_seconds(str(certificate["notAfter"])), datetime.UTC
    )
    left = expires - (now or datetime.datetime.now(datetime.UTC))
    days = left.total_seconds() / 86400
    detail = f"{', '.join(names)}; {days:.0f} days left (until {expires:%Y-%m-%d})"
    if days < warning_days:
        return Check(
            upstream, endpoint, "tls", False, f"{detail}: fewer than {warning_days}",
            "the VM renews its certificate hourly once it has fewer than tls.renewBeforeDays "
            "left: see `journalctl -t registry-maintenance` on the VM (registry-tls renew)",
        )  # fmt: skip
    return Check(upstream, endpoint, "tls", True, detail)


def check_mirror(
    upstream: str,
    mirror: dict[str, Any],
    image: str | None,
    timeout: float,
    context: ssl.SSLContext | None = None,
) -> list[Check]:
    endpoint = mirror["endpoint"].rstrip("/")
    container = mirror.get("container", upstream)
    checks = []
    try:
        with _request(f"{endpoint}/v2/", "GET", timeout, context=context) as response:
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
        with _request(url, "HEAD", timeout, MANIFEST_TYPES, context) as response:
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


def _catalog(endpoint: str, timeout: float, context: ssl.SSLContext | None = None) -> set[str]:
    """Repositories the cache holds locally (the catalog never asks the upstream), all pages."""
    repositories: set[str] = set()
    url: str | None = f"{endpoint}/v2/_catalog?n=1000"
    while url:
        with _request(url, "GET", timeout, context=context) as response:
            repositories.update(json.loads(response.read()).get("repositories") or [])
            link = response.headers.get("Link", "")
        # Next page: Link: </v2/_catalog?last=x&n=1000>; rel="next"
        url = f"{endpoint}{link[1 : link.index('>')]}" if 'rel="next"' in link else None
    return repositories
