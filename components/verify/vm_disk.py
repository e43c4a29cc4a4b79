"""The registry VM's cache disk over SSH (ssh-agent, as ``pulumi up``): its usage against
``registry.diskUsageThresholdPercent``, by the maintenance script's own ``disk`` action."""

from __future__ import annotations

import subprocess
from typing import Any

from components.renderers.maintenance import disk_check, parse_disk_report
from components.settings import RegistrySettings, Settings
from components.ssh_client import ssh_client_options
from components.verify.check import Check, _size


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
    # The VM's generated host key, as the deploy exported it: the one key it may present.
    host_key = str(vm.get("sshHostPublicKey") or "")
    if not host_key:
        return Check(
            "registry-vm", where, "disk", False,
            "no sshHostPublicKey in the registryVm output: the VM's host key cannot be checked,"
            " so it is not contacted",
            "run `pulumi up` with this release (it makes and pins the VM's host key), or --no-vm",
        )  # fmt: skip
    # The pin first: for ssh the first value of an option wins (--ssh-option cannot loosen it).
    options = [*ssh_client_options(address, host_key), *ssh_options]
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
    if result.returncode == 255 and "Host key verification failed" in result.stderr:
        return Check(
            "registry-vm", where, "disk", False,
            "Host key verification failed: the VM presents another key than the exported "
            "sshHostPublicKey, so nothing was run on it",
            "a VM not made by this stack's pulumi up, or a host answering in its place: check "
            "the VM's key on its console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)",
        )  # fmt: skip
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
