"""Whether Proxmox applies the VM's firewall rules at all: only while the DATACENTER firewall is on
(Datacenter -> Firewall -> Options; off by default) and the VM's own firewall is enabled. The
program sets the VM's (components/firewall.py) but not the datacenter's, which is the cluster's
owner's. Read from the Proxmox API when verify is given a token (``PROXMOX_VE_API_TOKEN``, the
form of ``proxmoxApiToken``); without one the row says how to turn the check on. A stack whose
caches run on an existing host (``host``) has no Proxmox VM and no firewall of the program's:
the row says so and passes (that host's firewall is the operator's)."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from typing import Any

from components.settings import Settings
from components.verify.check import Check

TOKEN_ENV = "PROXMOX_VE_API_TOKEN"  # noqa: S105 (the variable's name, not a value)
ADVICE = (
    "Proxmox applies the VM's rules only with the datacenter firewall on: Datacenter -> "
    "Firewall -> Options -> Firewall: Yes (`pvesh set /cluster/firewall/options --enable 1`); "
    "until then the caches are open to everyone who reaches the VM"
)


def _get(endpoint: str, path: str, token: str, timeout: float, insecure: bool) -> Any:
    request = urllib.request.Request(f"{endpoint.rstrip('/')}/api2/json{path}")  # noqa: S310
    request.add_header("Authorization", f"PVEAPIToken={token}")
    context = ssl.create_default_context()
    if insecure:  # proxmox.insecure: the stack's own choice for this endpoint
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
        return json.loads(response.read())["data"]


def check_proxmox_firewall(
    settings: Settings, outputs: dict[str, Any], timeout: float, token: str | None = None
) -> Check:
    if settings.proxmox is None or settings.vm is None:
        return Check(
            "proxmox", "-", "firewall", True,
            "skipped: the caches run on an existing host (host), not a Proxmox VM; its firewall "
            "is the operator's",
        )  # fmt: skip
    token = token if token is not None else os.environ.get(TOKEN_ENV)
    endpoint = settings.proxmox.endpoint
    if not token:
        return Check(
            "proxmox", endpoint, "firewall", True,
            f"skipped: set {TOKEN_ENV} (USER@REALM!TOKENID=SECRET, Sys.Audit is enough) to check "
            "that Proxmox applies the VM's firewall rules",
        )  # fmt: skip
    vm = outputs.get("registryVm") or {}
    vm_id = vm.get("vmId") or settings.vm.vm_id
    node = vm.get("proxmoxNode") or settings.vm.proxmox_node
    insecure = settings.proxmox.insecure
    try:
        cluster = _get(endpoint, "/cluster/firewall/options", token, timeout, insecure)
        own = _get(endpoint, f"/nodes/{node}/qemu/{vm_id}/firewall/options", token, timeout,
                   insecure)  # fmt: skip
    except (urllib.error.URLError, OSError, ValueError, KeyError) as error:
        reason = getattr(error, "reason", error)
        advice = "is the endpoint right, and may the token read /cluster/firewall?"
        return Check("proxmox", endpoint, "firewall", False, f"cannot read: {reason}", advice)
    if not int(cluster.get("enable") or 0):
        return Check("proxmox", endpoint, "firewall", False, "datacenter firewall off", ADVICE)
    if not int(own.get("enable") or 0):
        return Check(
            "proxmox", endpoint, "firewall", False, f"VM {vm_id}: its firewall is off",
            "run pulumi up (RegistryFirewall enables it)",
        )  # fmt: skip
    policy = own.get("policy_in", "?")
    return Check(
        "proxmox", endpoint, "firewall", True,
        f"datacenter firewall on; VM {vm_id}: enabled, input policy {policy}",
    )  # fmt: skip
