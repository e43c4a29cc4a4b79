"""The stack outputs verify reads (``pulumi stack output --json``), checked for the shape the checks
read, so a malformed file is one line and exit 2, not a traceback."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from components.settings import key_text


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
                f"{name}: mirrors.{key_text(host)}.endpoint: expected http(s)://HOST:PORT"
            )
        metrics = mirror.get("metricsUrl")
        if metrics is not None and not (
            isinstance(metrics, str) and re.fullmatch(r"https?://[^\s/]+/metrics", metrics)
        ):
            raise ValueError(
                f"{name}: mirrors.{key_text(host)}.metricsUrl: expected http://HOST:PORT/metrics"
            )
    tls = outputs.get("tls")
    if tls is not None:
        certificates = tls.get("caCertificates") if isinstance(tls, dict) else None
        if not isinstance(tls, dict) or not (
            certificates is None
            or (isinstance(certificates, str) and "-----BEGIN CERTIFICATE-----" in certificates)
        ):
            raise ValueError(
                f"{name}: tls: expected {{enabled, caCertificates (PEM), expiryWarningDays, ...}}"
            )
    elif any(str(m.get("endpoint", "")).startswith("https://") for m in mirrors.values()):
        raise ValueError(
            f"{name}: the mirrors are https:// but there is no 'tls' output (its CA certificates "
            "are what verify trusts): use the whole `pulumi stack output --json`"
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
