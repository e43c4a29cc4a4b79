"""Boot-to-ready time of the registry VM: from QEMU's start until the program's wait step
succeeds (cloud-init done with the static address, Docker active), under QEMU TCG.

Each round boots a fresh guest (scripts/testenv/setup-vm-guest.sh builds it) from the dev
stack's settings with the seed Proxmox would make (tests/vm/boot.py), exactly as the VM tier does,
and runs the program's wait step over SSH. First boot installs docker.io and the rest of the
vendor-data's packages from this host's Debian mirror, so the figure includes that download.
Figures: SSH reachable at the static address; ready (the wait step succeeded). Needs root.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import Figure, PartResult
from tests.vm.boot import READY_TIMEOUT, SSH_TIMEOUT, boot_stack, guest_image
from tests.vm.qemu import BootShape, wait_for_ssh
from tests.vm.stack import tier_settings


def one_boot(workdir: Path) -> tuple[float, float]:
    image = guest_image()
    if image is None:
        raise RuntimeError("no VM guest image: run scripts/testenv/setup-vm-guest.sh (as root)")
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, capture_output=True)  # fmt: skip
    public_key = Path(f"{key}.pub").read_text().strip()
    # No cache is started here: the upstream URL only lands in registry configs.
    settings = tier_settings(public_key, f"http://{BootShape.gateway}:9")
    stack, _seed, guest = boot_stack(settings, image, workdir, key)
    try:
        ssh = wait_for_ssh(guest, SSH_TIMEOUT)
        wait = stack.step("-wait-cloud-init")
        result = guest.ssh(wait.command, wait.stdin, timeout=READY_TIMEOUT)
        if result.returncode != 0:
            raise RuntimeError(f"wait-cloud-init failed: {result.stderr[-2000:]}")
        return ssh, time.monotonic() - guest.started
    finally:
        guest.stop()


def run(rounds: int = 1) -> PartResult:
    part = PartResult("vm")
    ssh_runs: list[float] = []
    ready_runs: list[float] = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="bench-vm-") as tmp:
            ssh, ready = one_boot(Path(tmp))
        ssh_runs.append(ssh)
        ready_runs.append(ready)
    part.add(Figure("vm", "boot: SSH at the static address", "s", ssh_runs))
    part.add(
        Figure(
            "vm",
            "boot to ready (cloud-init done, docker active)",
            "s",
            ready_runs,
            note="QEMU TCG, 2 vCPU; first boot installs docker.io from the Debian mirror",
        )
    )
    return part
