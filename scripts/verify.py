#!/usr/bin/env python3
"""Check that the caches work: for each mirror, what its Prometheus /metrics say it served since
it started (requests; with Distribution 3 also hits, misses and bytes pulled from the upstream),
the registry API answers, and a manifest for a small known image resolves THROUGH the mirror
(which makes the mirror fetch it from upstream); with TLS, first the handshake trusting exactly
the stack's CA, the certificate's names and days left. With the stack's settings (--stack or
--stack-file) and PROXMOX_VE_API_TOKEN, whether Proxmox applies the VM's firewall rules (the
datacenter firewall on). Over SSH to the registry VM (ssh-agent, as
`pulumi up`; skip with --no-vm), the cache disk's usage against registry.diskUsageThresholdPercent.
With --nodes, also per node over SSH: the CRI plugin is ok, the effective config reads hosts.toml
from containerd.configPath with no `mirrors` left, each --node-image pulls through the node's
hosts.toml AND lands in its mirror's cache, and per cache a request only this node made (a random
digest) is in that cache's access log on the VM: a node that bypasses its mirror never asks it,
whatever other clients pull meanwhile (without the VM, --no-vm, that check fails as not checked).

    pulumi stack output --json --stack dev > outputs.json
    python scripts/verify.py --outputs outputs.json
    python scripts/verify.py --stack dev                       # runs `pulumi stack output` itself
    python scripts/verify.py --outputs o.json --image ghcr.io=org/tool:v1   # choose probe images
    python scripts/verify.py --stack dev --nodes --node-image docker.io/library/busybox:1.36
    python scripts/verify.py --stack dev --nodes --identity read   # the read identity only

The nodes are read as a preview reads them (README "The read identity"): with the read identity
when the stack has one (nodeAccess.readPublicKeys), the apply identity (nodes[].sshUser) where
it cannot answer; `--identity read` never falls back, `--identity apply` never tries it.

Prints a table; exit 0 when every check passed, 1 when any failed (with what to do), 2 on bad
input. It talks only to the endpoints in the outputs (mirrors' endpoint and metricsUrl, the
registry VM) and the nodes in the stack's settings.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from components.cli import Parser, fail  # noqa: E402
from components.fleet import ReadMode  # noqa: E402
from components.settings import Settings, key_text  # noqa: E402
from components.stack_file import StackFileError, load_stack_settings, stack_path  # noqa: E402
from components.verify.mirror import DEFAULT_PROBE_IMAGES  # noqa: E402
from components.verify.outputs import load_outputs  # noqa: E402
from components.verify.run import report, run_checks  # noqa: E402

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
        "--identity", choices=("auto", "read", "apply"), default="auto",
        help="who reads the nodes: auto (default: the read identity when the stack has one, the"
        " apply identity where it cannot answer), read (the read identity only), apply",
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
    stack_settings: Settings | None = None
    try:
        outputs = load_outputs(args)
        stack_file = args.stack_file or (stack_path(args.stack) if args.stack else None)
        if args.nodes or (stack_file is not None and stack_file.exists()):
            assert stack_file is not None
            stack_settings = load_stack_settings(stack_file)
        if args.nodes:
            settings = stack_settings
    except StackFileError as error:
        return fail(error.problems)
    except ValueError as error:
        return fail([str(error)])

    node_mode: ReadMode = "apply"
    if settings is not None and args.identity != "apply" and settings.node_access.enabled:
        node_mode = "read-only" if args.identity == "read" else "read-first"
    elif settings is not None and args.identity == "read":
        return fail(
            ["--identity read: the stack has no read identity (nodeAccess.readPublicKeys is empty)"]
        )
    checks = run_checks(
        outputs, settings, images, args.node_image, args.ssh_option, args.timeout,
        vm=not args.no_vm, proxmox=stack_settings, node_mode=node_mode,
    )  # fmt: skip
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
