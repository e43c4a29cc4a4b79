#!/usr/bin/env python3
"""Check that the caches work: for each mirror, what its Prometheus /metrics say it served since
it started (requests; with Distribution 3 also hits, misses and bytes pulled from the upstream),
the registry API answers, and a manifest for a small known image resolves THROUGH the mirror
(which makes the mirror fetch it from upstream). Over SSH to the registry VM (ssh-agent, as
`pulumi up`; skip with --no-vm), the cache disk's usage against registry.diskUsageThresholdPercent.
With --nodes, also per node over SSH: the CRI plugin is ok, the effective config reads hosts.toml
from containerd.configPath with no `mirrors` left, each --node-image pulls through the node's
hosts.toml AND lands in its mirror's cache, and the mirror's request counter moved (a node that
bypasses its mirror pulls fine and leaves the counter still).

    pulumi stack output --json --stack dev > outputs.json
    python scripts/verify.py --outputs outputs.json
    python scripts/verify.py --stack dev                       # runs `pulumi stack output` itself
    python scripts/verify.py --outputs o.json --image ghcr.io=org/tool:v1   # choose probe images
    python scripts/verify.py --stack dev --nodes --node-image docker.io/library/busybox:1.36

Prints a table; exit 0 when every check passed, 1 when any failed (with what to do), 2 on bad
input. It talks only to the endpoints in the outputs (mirrors' endpoint and metricsUrl, the
registry VM) and the nodes in the stack's settings.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.cli import Parser, fail  # noqa: E402
from components.plan.node_plan import read_probe  # noqa: E402
from components.plan.node_steps import (  # noqa: E402
    NodeStepError,
    check_step,
    expected_config_path,
    probe_step,
    verify_step,
)
from components.renderers.maintenance import disk_check, parse_disk_report  # noqa: E402
from components.settings import Node, RegistrySettings, Settings, key_text  # noqa: E402
from components.ssh_client import run_on_node, ssh_client_options  # noqa: E402
from components.stack_file import StackFileError, load_stack_settings, stack_path  # noqa: E402

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
    image: str = ""  # node pulls: the image reference pulled


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
    # The same ssh client and options the program reads the nodes with (--ssh-option first).
    # First the probe, as the program reads a node: which flavour, hence which containerd.
    probe = run_on_node(
        node, probe_step(settings, node), extra_options=ssh_options, timeout=timeout + 60
    )
    try:
        check_step(node, "probe", probe.exit_code, probe.stderr)
        _, flavour = read_probe(node, probe.stdout)
    except NodeStepError as error:
        advice = "can this machine reach the node with the program's key (ssh-agent)?"
        return [Check(node.name, where, "probe", False, str(error), advice)]
    result = run_on_node(
        node,
        verify_step(settings, node, images, flavour),
        extra_options=ssh_options,
        timeout=timeout + 60,
    )
    if result.exit_code != 0 and "cri=" not in result.stdout:
        return [
            Check(
                node.name, where, "ssh", False,
                f"exit {result.exit_code}: {result.stderr.strip()[-300:]}",
                "can this machine reach the node with the program's key (ssh-agent)?",
            )
        ]  # fmt: skip
    fields, pulls = node_report(result.stdout)
    expected = expected_config_path(settings, flavour)
    not_migrated = (
        f"{flavour.name} did not generate config_path from registries.yaml: run pulumi up"
        if flavour.is_distribution
        else "config.toml was not migrated (skipConfigPath?) or was edited since: run pulumi up"
    )
    checks = [
        Check(
            node.name, where, "cri", fields.get("cri") == "ok",
            f"{flavour.name}: cri plugin {fields.get('cri')}",
            "the CRI plugin is not ok: `ctr plugins ls --detailed` on the node; run pulumi up",
        ),
        Check(
            node.name, where, "config_path", fields.get("config_path") == expected,
            f"config_path={fields.get('config_path')!r} (expected {expected!r})", not_migrated,
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
                      "see the error; is the mirror up and the upstream reachable?", image)
            )  # fmt: skip
            continue
        mirror = mirrors.get(host)
        if mirror is None:
            checks.append(
                Check(node.name, where, "pull", True, f"{image} ok (no mirror for {host})", "",
                      image)
            )  # fmt: skip
            continue
        try:
            cached = repository in _catalog(mirror["endpoint"].rstrip("/"), timeout)
        except (urllib.error.URLError, OSError, ValueError) as error:
            checks.append(Check(node.name, where, "pull", False, f"{image}: catalog: {error}",
                                "the mirror does not answer its catalog", image))  # fmt: skip
            continue
        checks.append(
            Check(
                node.name, where, "pull", cached,
                f"{image} {'cached in' if cached else 'NOT in'} {mirror['endpoint']}",
                "the pull bypassed the mirror: check certs.d/<host>/hosts.toml on the node",
                image,
            )
        )  # fmt: skip
    return checks


# --- cache health: each mirror's Prometheus /metrics ---------------------------------------------
# Both majors count requests per handler in registry_http_requests_total; only Distribution 3 has
# proxy counters (registry_proxy_{requests,hits,misses,pulled_bytes}_total, per type blob or
# manifest). 2.x keeps its proxy counters in expvar only, and counts every served blob as a hit
# there, so they are not reported.
SERVED_HANDLERS = ("blob", "manifest")
PROXY_COUNTERS = ("requests", "hits", "misses", "pulled_bytes")


@dataclass(frozen=True)
class MirrorMetrics:
    requests: dict[str, float]  # per handler (blob, manifest): what clients asked this mirror
    proxy: dict[str, dict[str, float]] | None  # counter -> type -> value; None: Distribution 2.x

    @property
    def served(self) -> float:
        return sum(self.requests.get(handler, 0.0) for handler in SERVED_HANDLERS)


def parse_metrics(text: str) -> MirrorMetrics:
    """Prometheus text format -> the counters this check reports."""
    requests: dict[str, float] = {}
    proxy: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("registry_"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name, _, labels_text = name_labels.partition("{")
        labels = dict(
            (key, raw.strip('"'))
            for key, _, raw in (p.partition("=") for p in labels_text.rstrip("}").split(",") if p)
        )
        if name == "registry_http_requests_total":
            handler = labels.get("handler", "")
            requests[handler] = requests.get(handler, 0.0) + float(value)
        elif name.startswith("registry_proxy_") and name.endswith("_total"):
            counter = name.removeprefix("registry_proxy_").removesuffix("_total")
            if counter in PROXY_COUNTERS:
                proxy.setdefault(counter, {})[labels.get("type", "")] = float(value)
    return MirrorMetrics(requests, proxy or None)


def read_metrics(url: str, timeout: float) -> MirrorMetrics:
    with _request(url, "GET", timeout) as response:
        return parse_metrics(response.read().decode())


def _size(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def describe_metrics(metrics: MirrorMetrics) -> str:
    by_handler = ", ".join(f"{metrics.requests.get(h, 0):.0f} {h}" for h in SERVED_HANDLERS)
    if metrics.served == 0:
        text = "no pulls through this mirror since its container started"
    else:
        text = f"{metrics.served:.0f} requests ({by_handler})"
    if metrics.proxy is None:
        return f"{text}; no hit/miss counters in Distribution 2.x"
    if metrics.served == 0:
        return text
    total = {counter: sum(metrics.proxy.get(counter, {}).values()) for counter in PROXY_COUNTERS}
    blob_hits = metrics.proxy.get("hits", {}).get("blob", 0)
    blob_requests = metrics.proxy.get("requests", {}).get("blob", 0)
    ratio = f", blob hit ratio {blob_hits / blob_requests:.0%}" if blob_requests else ""
    return (
        f"{text}: {total['hits']:.0f} hits, {total['misses']:.0f} misses, "
        f"{_size(total['pulled_bytes'])} pulled from upstream{ratio}"
    )


def check_metrics(upstream: str, mirror: dict[str, Any], timeout: float) -> Check:
    url = mirror.get("metricsUrl")
    container = mirror.get("container", upstream)
    if not url:
        return Check(upstream, "-", "metrics", True, "skipped: no metricsUrl in the outputs")
    try:
        metrics = read_metrics(url, timeout)
    except (urllib.error.URLError, OSError, ValueError) as error:
        detail, advice = _failure(error, container)
        advice = f"Prometheus cannot scrape it either: {advice}"
        return Check(upstream, url, "metrics", False, detail, advice)
    return Check(upstream, url, "metrics", True, describe_metrics(metrics))


def snapshot_requests(mirrors: dict[str, Any], timeout: float) -> dict[str, float | None]:
    """Per upstream host: blob+manifest requests the mirror has answered (None: unreadable)."""
    counts: dict[str, float | None] = {}
    for upstream, mirror in mirrors.items():
        try:
            counts[upstream] = read_metrics(mirror["metricsUrl"], timeout).served
        except (KeyError, urllib.error.URLError, OSError, ValueError):
            counts[upstream] = None
    return counts


def check_bypass(
    node: Node,
    mirrors: dict[str, Any],
    node_checks: list[Check],
    before: dict[str, float | None],
    after: dict[str, float | None],
) -> list[Check]:
    """A pull of this node that succeeded through hosts.toml must show up in its mirror's
    counter, read just before and just after this node's pulls."""
    checks = []
    for upstream, mirror in mirrors.items():
        pulled = sorted(
            {c.image for c in node_checks if c.check == "pull" and c.ok and c.image
             and split_image(c.image)[0] == upstream}
        )  # fmt: skip
        if not pulled:
            continue
        old, new = before.get(upstream), after.get(upstream)
        where = mirror.get("metricsUrl", "-")
        if old is None or new is None:
            checks.append(Check(node.name, where, "bypass", False,
                                f"{upstream} mirror: metrics unreadable",
                                "see the metrics check of this mirror"))  # fmt: skip
            continue
        moved = new - old
        checks.append(
            Check(
                node.name, where, "bypass", moved > 0,
                f"{moved:.0f} requests during the node pulls of {', '.join(pulled)}",
                "the nodes pulled without asking this mirror: containerd ignores hosts.toml "
                "(config_path not set, or a `mirrors` entry), or certs.d/<host>/hosts.toml does "
                "not list this mirror first",
            )
        )  # fmt: skip
    return checks


def check_nodes(
    settings: Settings,
    mirrors: dict[str, Any],
    images: list[str],
    ssh_options: list[str],
    timeout: float,
) -> list[Check]:
    """Every node's checks, each followed by its bypass rows. The counters are read around each
    node on its own: read once around the whole fleet, one node's pull through a mirror would
    move the counter and hide another node that skipped it."""
    pulled_through = {split_image(image)[0] for image in images}
    watched = {host: mirror for host, mirror in mirrors.items() if host in pulled_through}
    checks: list[Check] = []
    for node in settings.nodes:
        before = snapshot_requests(watched, timeout)
        node_checks = check_node(settings, node, mirrors, images, ssh_options, timeout)
        after = snapshot_requests(watched, timeout)
        checks += node_checks + check_bypass(node, watched, node_checks, before, after)
    return checks


# --- the registry VM: cache disk --------------------------------------------------------------
def check_vm_disk(
    outputs: dict[str, Any],
    settings: Settings | None,
    ssh_options: list[str],
    timeout: float,
) -> Check:
    vm = outputs.get("registryVm")
    if not isinstance(vm, dict) or not vm.get("address"):
        return Check("registry-vm", "-", "disk", True, "skipped: no registryVm in the outputs")
    address, user = str(vm["address"]), str(vm.get("sshUser") or "debian")
    where = f"{user}@{address}"
    default = RegistrySettings.model_fields["disk_usage_threshold_percent"].default
    threshold = int(vm.get("diskUsageThresholdPercent") or default)
    # The stack file when it was read (--nodes), else what the deploy exported: pinned either way.
    host_key = (
        settings.vm.ssh_host_public_key
        if settings is not None
        else (str(vm["sshHostPublicKey"]) if vm.get("sshHostPublicKey") else None)
    )
    options = [*ssh_options, *ssh_client_options(address, host_key)]
    command, script = disk_check(threshold)
    try:
        result = subprocess.run(
            ["ssh", *options, where, command],
            input=script, capture_output=True, text=True, timeout=timeout + 60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return Check("registry-vm", where, "disk", False, "timed out", "is the VM up?")
    except FileNotFoundError:
        return Check("registry-vm", where, "disk", False, "no ssh client here",
                     "apt install openssh-client, or --no-vm")  # fmt: skip
    try:
        report = parse_disk_report(result.stdout)
    except ValueError:
        return Check(
            "registry-vm", where, "disk", False,
            f"exit {result.returncode}: {result.stderr.strip()[-300:]}",
            "can this machine reach the VM with the program's key (ssh-agent, vm.sshUser)?",
        )  # fmt: skip
    caches = ", ".join(f"{name} {_size(size)}" for name, size in sorted(report.caches.items()))
    detail = (
        f"{report.path} {report.used_percent}% of {_size(report.size_bytes)} used "
        f"(threshold {report.threshold_percent}%)" + (f": {caches}" if caches else "")
    )
    return Check(
        "registry-vm", where, "disk", not report.over_threshold, detail,
        "Distribution never evicts by size: shorten registry.proxyTtl (Distribution 3) so "
        "unused content expires sooner, or grow vm.diskGb (journalctl -t registry-maintenance "
        "on the VM has the hourly history)",
    )  # fmt: skip


def load_outputs(args: argparse.Namespace) -> dict[str, Any]:
    """The stack outputs, with the ``mirrors`` output checked for the shape the checks read;
    ValueError: one line."""
    if args.outputs:
        name = args.outputs
        try:
            text = Path(args.outputs).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
            raise ValueError(f"{name}: cannot read: {reason or error}") from None
    else:
        name = f"pulumi stack output --stack {args.stack}"
        try:
            result = subprocess.run(
                ["pulumi", "stack", "output", "--json", "--stack", args.stack],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as error:
            raise ValueError(f"{name}: cannot run: {error.strerror}") from None
        if result.returncode != 0:
            raise ValueError(f"{name} failed: {' '.join(result.stderr.split())[-300:]}")
        text = result.stdout
    try:
        outputs = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{name}: not JSON ({error})") from None
    mirrors = outputs.get("mirrors") if isinstance(outputs, dict) else None
    if not isinstance(mirrors, dict) or not mirrors:
        raise ValueError(
            f"{name}: no 'mirrors' output (expected `pulumi stack output --json` of this program)"
        )
    url = re.compile(r"https?://[^\s/]+/?")
    for host, mirror in mirrors.items():
        endpoint = mirror.get("endpoint") if isinstance(mirror, dict) else None
        if not isinstance(endpoint, str) or not url.fullmatch(endpoint):
            raise ValueError(
                f"{name}: mirrors.{key_text(host)}.endpoint: expected http://HOST:PORT"
            )
        metrics = mirror.get("metricsUrl")
        if metrics is not None and not (
            isinstance(metrics, str) and re.fullmatch(r"https?://[^\s/]+/metrics", metrics)
        ):
            raise ValueError(
                f"{name}: mirrors.{key_text(host)}.metricsUrl: expected http://HOST:PORT/metrics"
            )
    vm = outputs.get("registryVm")
    if vm is not None:
        threshold = vm.get("diskUsageThresholdPercent") if isinstance(vm, dict) else None
        if not isinstance(vm, dict) or not (
            threshold is None or (type(threshold) is int and 1 <= threshold <= 100)
        ):
            raise ValueError(
                f"{name}: registryVm: expected {{address, sshUser, diskUsageThresholdPercent"
                " (1-100), ...}"
            )
    return outputs


_IMAGE_REFERENCE = re.compile(
    r"[a-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+(:[\w][\w.-]{0,127})?(@sha256:[0-9a-f]{64})?"
)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds greater than 0, got {key_text(text)}")
    return value


def print_table(checks: list[Check]) -> None:
    rows = [("TARGET", "WHERE", "CHECK", "RESULT", "DETAIL")] + [
        (c.upstream, c.endpoint, c.check, "ok" if c.ok else "FAIL", c.detail) for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
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
    parser.add_argument("--timeout", type=_positive, default=30.0, help="seconds per request")
    parser.add_argument("--nodes", action="store_true", help="also check every node over SSH")
    parser.add_argument(
        "--no-vm", action="store_true",
        help="skip the registry VM's cache disk check (the one check that needs SSH to the VM)",
    )  # fmt: skip
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
    problems = []
    for item in args.image:
        host, sep, image = item.partition("=")
        if not sep or not host or not image or any(c.isspace() for c in item):
            problems.append(f"--image {key_text(item)}: expected HOST=REPO:TAG")
        images[host] = image
    for reference in args.node_image:
        if not _IMAGE_REFERENCE.fullmatch(reference):
            problems.append(
                f"--node-image {key_text(reference)}: expected HOST/REPO[:TAG][@sha256:DIGEST],"
                " e.g. docker.io/library/busybox:1.36"
            )
    if args.nodes and not (args.stack_file or args.stack):
        problems.append("--nodes needs --stack or --stack-file (the nodes' SSH settings)")
    if problems:
        return fail(problems)

    settings: Settings | None = None
    try:
        outputs = load_outputs(args)
        mirrors = outputs["mirrors"]
        if args.nodes:
            settings = load_stack_settings(args.stack_file or stack_path(args.stack))
    except StackFileError as error:
        return fail(error.problems)
    except ValueError as error:
        return fail([str(error)])

    checks: list[Check] = []
    for upstream, mirror in mirrors.items():
        # Metrics first: they report what the nodes pulled, before this check's own probe.
        checks.append(check_metrics(upstream, mirror, args.timeout))
        checks += check_mirror(upstream, mirror, images.get(upstream), args.timeout)
    if not args.no_vm:
        checks.append(check_vm_disk(outputs, settings, args.ssh_option, args.timeout))
    if settings is not None:
        checks += check_nodes(settings, mirrors, args.node_image, args.ssh_option, args.timeout)
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
