"""Every check in the order the table shows them, and the table itself."""

from __future__ import annotations

import sys
from typing import Any

from components.fleet import ReadMode
from components.settings import Settings
from components.verify.check import Check
from components.verify.metrics import check_metrics
from components.verify.mirror import check_mirror, check_tls, tls_context
from components.verify.nodes import check_nodes
from components.verify.proxmox_firewall import check_proxmox_firewall
from components.verify.vm_disk import check_vm_disk


def run_checks(
    outputs: dict[str, Any],
    settings: Settings | None,
    images: dict[str, str],
    node_images: list[str],
    ssh_options: list[str],
    timeout: float,
    vm: bool = True,
    proxmox: Settings | None = None,
    node_mode: ReadMode = "apply",
) -> list[Check]:
    """Each mirror (metrics, TLS, API, ``images[host]`` through it), the VM's disk unless ``vm``
    is false, whether Proxmox applies the VM's firewall (``proxmox``: the stack's settings), and
    every node of ``settings`` when given (pulling ``node_images``; read as ``node_mode`` says:
    components/fleet.py)."""
    mirrors = outputs["mirrors"]
    tls = outputs.get("tls") or {}
    context = tls_context(tls.get("caCertificates"))
    checks: list[Check] = []
    for upstream, mirror in mirrors.items():
        # Metrics first: they report what the nodes pulled, before this check's own probe.
        checks.append(check_metrics(upstream, mirror, timeout))
        if mirror["endpoint"].startswith("https://"):
            warning_days = int(tls.get("expiryWarningDays") or 21)
            checks.append(check_tls(upstream, mirror, context, warning_days, timeout))
        checks += check_mirror(upstream, mirror, images.get(upstream), timeout, context)
    if vm:
        checks += check_vm_disk(outputs, settings, ssh_options, timeout)
    if proxmox is not None:
        checks.append(check_proxmox_firewall(proxmox, outputs, timeout))
    if settings is not None:
        checks += check_nodes(
            settings, outputs, images, node_images, ssh_options, timeout, context, node_mode,
            vm=vm,
        )  # fmt: skip
    return checks


def print_table(checks: list[Check]) -> None:
    rows = [("TARGET", "WHERE", "CHECK", "RESULT", "DETAIL")] + [
        (c.upstream, c.endpoint, c.check, "ok" if c.ok else "FAIL", c.detail) for c in checks
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


def report(checks: list[Check]) -> int:
    """The table on stdout, each failure with what to do on stderr; the exit code."""
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
