"""The registry VM's cache disk over SSH (ssh-agent, as ``pulumi up``): its usage against
``registry.diskUsageThresholdPercent``, and per cache its size against its budget, its oldest
last pull, what the next eviction would remove and how long its last GC kept it down, by the
maintenance script's own ``disk`` action."""

from __future__ import annotations

import subprocess
import time
from typing import Any

from components.renderers.maintenance import DiskReport, disk_check, parse_disk_report
from components.settings import RegistrySettings, Settings
from components.settings.budget import cache_budgets
from components.ssh_client import ssh_client_options
from components.verify.check import Check, _size


def check_vm_disk(
    outputs: dict[str, Any],
    settings: Settings | None,
    ssh_options: list[str],
    timeout: float,
) -> list[Check]:
    """The disk's row, then one row per cache."""
    vm = outputs.get("registryVm")
    if not isinstance(vm, dict) or not vm.get("address"):
        return [Check("registry-vm", "-", "disk", True, "skipped: no registryVm in the outputs")]
    address, user = str(vm["address"]), str(vm.get("sshUser") or "debian")
    where = f"{user}@{address}"
    default = RegistrySettings.model_fields["disk_usage_threshold_percent"].default
    threshold = int(vm.get("diskUsageThresholdPercent") or default)
    # The VM's generated host key, as the deploy exported it: the one key it may present.
    host_key = str(vm.get("sshHostPublicKey") or "")
    if not host_key:
        return [Check(
            "registry-vm", where, "disk", False,
            "no sshHostPublicKey in the registryVm output: the VM's host key cannot be checked,"
            " so it is not contacted",
            "run `pulumi up` with this release (it makes and pins the VM's host key), or --no-vm",
        )]  # fmt: skip
    # The pin first: for ssh the first value of an option wins (--ssh-option cannot loosen it).
    options = [*ssh_client_options(address, host_key), *ssh_options]
    # The stack file's budgets, else the deployed ones; else the script reports what the last
    # hourly eviction run recorded on the VM.
    budgets = cache_budgets(settings) if settings is not None else _exported(vm)
    command, script = disk_check(threshold, budgets)
    try:
        result = subprocess.run(
            ["ssh", *options, where, command],
            input=script, capture_output=True, text=True, timeout=timeout + 60, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return [Check("registry-vm", where, "disk", False, "timed out", "is the VM up?")]
    except FileNotFoundError:
        return [Check("registry-vm", where, "disk", False, "no ssh client here",
                      "apt install openssh-client, or --no-vm")]  # fmt: skip
    if result.returncode == 255 and "Host key verification failed" in result.stderr:
        return [Check(
            "registry-vm", where, "disk", False,
            "Host key verification failed: the VM presents another key than the exported "
            "sshHostPublicKey, so nothing was run on it",
            "a VM not made by this stack's pulumi up, or a host answering in its place: check "
            "the VM's key on its console (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)",
        )]  # fmt: skip
    try:
        report = parse_disk_report(result.stdout)
    except ValueError:
        return [Check(
            "registry-vm", where, "disk", False,
            f"exit {result.returncode}: {result.stderr.strip()[-300:]}",
            "can this machine reach the VM with the program's key (ssh-agent, vm.sshUser)?",
        )]  # fmt: skip
    caches = ", ".join(f"{name} {_size(size)}" for name, size in sorted(report.caches.items()))
    detail = (
        f"{report.path} {report.used_percent}% of {_size(report.size_bytes)} used "
        f"(threshold {report.threshold_percent}%)" + (f": {caches}" if caches else "")
    )
    disk = Check(
        "registry-vm", where, "disk", not report.over_threshold, detail,
        "lower the caches' budgets (registry.cacheBudget, upstreams[].cacheBudget) or grow "
        "vm.diskGb (journalctl -t registry-maintenance on the VM has the hourly history)",
    )  # fmt: skip
    return [disk, *cache_rows(report, where)]


def _exported(vm: dict[str, Any]) -> dict[str, int]:
    budgets = vm.get("cacheBudgets")
    if not isinstance(budgets, dict):
        return {}
    return {str(k): v for k, v in budgets.items() if type(v) is int and v > 0}


def _ago(epoch: int, now: float) -> str:
    seconds = max(0, int(now - epoch))
    for unit, length in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= length:
            return f"{seconds // length}{unit} ago"
    return f"{seconds}s ago"


def cache_rows(report: DiskReport, where: str, now: float | None = None) -> list[Check]:
    """Per cache: size against budget, oldest last pull, the next eviction, the last GC's
    downtime. Fails only when a cache is over its budget and nothing in it may be evicted (all
    pulled in the last day): the budget is too small for what the nodes use. Over it with
    something to evict is what the next hourly run fixes."""
    now = time.time() if now is None else now
    rows = []
    for name, size in sorted(report.caches.items()):
        budget = report.budgets.get(name)
        parts = [f"{_size(size)} of " + (f"{_size(budget)} budget" if budget else "no budget yet")]
        oldest = report.oldest_pulls.get(name)
        if oldest is not None:
            parts.append(f"oldest pull {_ago(oldest[0], now)} ({oldest[1]})")
        nxt = report.next_evictions.get(name)
        if nxt is not None:
            if nxt.repositories:
                more = "" if nxt.repositories <= len(nxt.first) else ", ..."
                parts.append(
                    f"next eviction: {nxt.repositories} repositories, ~{_size(nxt.freed_bytes)} "
                    f"({','.join(nxt.first)}{more})"
                )
            elif budget and size > budget:
                parts.append(f"over budget, all {nxt.protected} left pulled in the last day")
            else:
                parts.append("next eviction: nothing")
        gc = report.last_gcs.get(name)
        if gc is not None:
            what = "eviction + GC" if gc.kind == "evict" else "GC"
            parts.append(f"last {what} down {gc.down_seconds}s ({_ago(gc.at, now)})")
        stuck = bool(budget and size > budget and nxt is not None and not nxt.repositories)
        advice = (
            "every repository over the budget was pulled in the last day: raise "
            "upstreams[].cacheBudget (or registry.cacheBudget) for this cache"
        )
        rows.append(Check("registry-vm", name, "cache budget", not stuck, "; ".join(parts), advice))
    return rows
