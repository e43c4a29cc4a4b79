"""Boot the registry VM the program describes: its resources under mocks, the config and seed
Proxmox makes of them, the devices Proxmox adds for that config, QEMU. Used by the VM tier's
fixtures and by bench/vm_boot.py."""

from __future__ import annotations

import os
from pathlib import Path

from components.settings import Settings
from components.ssh_host_key import HostKey
from tests.vm import proxmox_seed
from tests.vm.qemu import BootShape, Guest, GuestImage, boot_guest
from tests.vm.stack import TIER_CLOUD_INIT_TIMEOUT, StackResources, capture

ROOT = Path(__file__).resolve().parents[2]
GUEST_MAC = "BC:24:11:5E:A0:01"  # a Proxmox-style MAC (its OUI), named in the seed and on the NIC
SSH_TIMEOUT = 600
# Until the program's wait step succeeds (first boot installs docker.io under TCG); the step
# itself gives up a minute earlier and says why.
READY_TIMEOUT = TIER_CLOUD_INIT_TIMEOUT + 60


def guest_image() -> GuestImage | None:
    """The newest guest setup-vm-guest.sh cached (under $TESTENV_CACHE or .cache)."""
    cache = Path(os.environ.get("TESTENV_CACHE", ROOT / ".cache")) / "vm-guest"
    images = [GuestImage(d) for d in cache.glob("*") if GuestImage(d).exists()]
    return max(images, key=lambda i: i.disk.stat().st_mtime) if images else None


def make_seed(stack: StackResources, workdir: Path) -> tuple[dict[str, str], dict[str, str], Path]:
    """The VM config Proxmox gets from the provider, and the seed ISO it makes from it."""
    file_ids = {fid: proxmox_seed.snippet_volid(inputs) for fid, inputs in stack.files.items()}
    snippets = proxmox_seed.SnippetStore(
        {file_ids[fid]: inputs["sourceRaw"]["data"] for fid, inputs in stack.files.items()}
    )
    conf = proxmox_seed.proxmox_config(stack.vm, GUEST_MAC, file_ids)
    files = proxmox_seed.generate_nocloud(conf, stack.settings.created_vm.vm_id, snippets)
    iso = proxmox_seed.commit_cloudinit_disk(files, workdir / "seed", workdir / "seed.iso")
    return conf, files, iso


def boot_stack(
    settings: Settings,
    image: GuestImage,
    workdir: Path,
    key: Path,
    host_key: HostKey | None = None,
) -> tuple[StackResources, dict[str, str], Guest]:
    """Capture the program's resources for ``settings``, make the seed, start QEMU (not waited).
    ``host_key``: the key the stack already holds (a recreated VM), else a new stack's."""
    stack = capture(settings, host_key)
    conf, seed, iso = make_seed(stack, workdir)
    # The devices Proxmox adds for this config: `agent: enabled=1`, `serial0: socket`.
    shape = BootShape(
        mac=GUEST_MAC,
        guest_ip=settings.cache_host.address,
        agent_channel=conf.get("agent") == "enabled=1",
        serial_port="serial0" in conf,
    )
    # Every SSH connection of the tier pins the key the program generated for this stack.
    guest = boot_guest(
        image,
        workdir / "guest",
        iso,
        shape,
        key,
        settings.cache_host.ssh_user,
        stack.host_key.public,
    )
    return stack, seed, guest
