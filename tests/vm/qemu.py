"""Boot the VM tier's guest under QEMU the way Proxmox VE starts the registry VM.

    guest = boot_guest(image, workdir, seed_iso, BootShape(...))
    guest.ssh("cloud-init status")          # as the VM's ssh user, like pulumi-command
    guest.forward("10.231.7.1", 5000)       # host end of a test node's veth -> guest:5000
    guest.stop()

The machine (scripts/testenv/setup-vm-guest.sh builds the disk, kernel and initramfs):
- TCG, not KVM: ``/dev/kvm`` opens here but a nested KVM guest hangs or crawls.
- Kernel and initramfs given to QEMU (``-kernel/-initrd``) instead of a boot loader: same kernel
  as on the disk, no firmware step (Proxmox boots the disk through SeaBIOS and GRUB).
- The disk is a throw-away qcow2 overlay on the cached image: every boot is a first boot.
- The NIC is virtio at PCI slot 0x12 (as Proxmox places net0: the guest names it ``ens18``),
  with the MAC the seed's network-config names; the cloud-init ISO is on ide2, as Proxmox puts it.
- ``agent: 1`` in the VM config adds Proxmox's guest-agent channel (virtio-serial port
  ``org.qemu.guest_agent.0``); ``serial0: socket`` adds a serial port (logged to a file here).
- User-mode networking shaped like the lab subnet: the guest's gateway (10.0.20.1) is this host's
  loopback, its DNS server forwards to this host's resolver. Nothing else is reachable from the
  guest except what this host itself reaches (the package mirror, for the vendor-data's apt).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from components.ssh_client import ssh_client_options
from tests.integration.registry_proc import free_port, terminate
from tests.integration.testhost import ssh_run


@dataclass(frozen=True)
class GuestImage:
    """What setup-vm-guest.sh caches."""

    directory: Path

    @property
    def disk(self) -> Path:
        return self.directory / "disk.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def exists(self) -> bool:
        files = (self.disk, self.kernel, self.initrd)
        return all(p.is_file() and p.stat().st_size > 0 for p in files)


@dataclass(frozen=True)
class BootShape:
    """The lab network and VM hardware the guest sees."""

    mac: str
    guest_ip: str  # the static ipconfig0 address: SSH is forwarded there
    network: str = "10.0.20.0/24"
    gateway: str = "10.0.20.1"
    dns: str = "10.0.20.3"
    dhcp_start: str = "10.0.20.200"
    agent_channel: bool = True  # Proxmox `agent: enabled=1`
    serial_port: bool = True  # Proxmox `serial0: socket`
    memory_mb: int = 2048
    cpus: int = 2


@dataclass
class Guest:
    process: subprocess.Popen[bytes]
    workdir: Path
    ssh_port: int
    key: Path
    user: str
    shape: BootShape
    started: float
    # The one host key the guest may present (the program's generated key); None: unchecked.
    host_key: str | None = None
    forwards: list[str] = field(default_factory=list)

    @property
    def monitor(self) -> Path:
        return self.workdir / "monitor.sock"

    @property
    def agent_socket(self) -> Path:
        return self.workdir / "qga.sock"

    @property
    def serial_log(self) -> Path:
        return self.workdir / "serial.log"

    def console(self, lines: int = 60) -> str:
        if not self.serial_log.exists():
            return "(no serial output)"
        return "\n".join(self.serial_log.read_text(errors="replace").splitlines()[-lines:])

    def ssh(
        self, command: str, stdin: str = "", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``command`` as the VM's ssh user, with ``stdin``: what pulumi-command runs."""
        if self.process.poll() is not None:
            raise AssertionError(
                f"the guest has exited ({self.process.returncode}):\n{self.console()}"
            )
        return ssh_run(
            self.key,
            f"{self.user}@127.0.0.1",
            command,
            stdin,
            port=self.ssh_port,
            host_key=self.host_key,
            timeout=timeout,
        )

    def pinned(self, host_key: str) -> Guest:
        """The same guest, reached with another pinned key (what a step's connection pins)."""
        return dataclasses.replace(self, host_key=host_key)

    def check(self, command: str, stdin: str = "", timeout: float = 600) -> str:
        """``ssh`` that must succeed; its stdout."""
        result = self.ssh(command, stdin, timeout)
        assert result.returncode == 0, (
            f"guest command failed ({result.returncode}): {command[:200]}\n"
            f"stdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-2000:]}"
        )
        return result.stdout

    def upload(self, local: Path, command: str, timeout: float = 600) -> str:
        """Stream a local file into ``command``'s stdin on the guest (binary-safe)."""
        with local.open("rb") as data:
            result = subprocess.run(
                [
                    "ssh", "-i", str(self.key), *self._checking(), "-o", "LogLevel=ERROR",
                    "-p", str(self.ssh_port), f"{self.user}@127.0.0.1", command,
                ],
                stdin=data,
                capture_output=True,
                timeout=timeout,
                check=False,
            )  # fmt: skip
        assert result.returncode == 0, f"{command}: {result.stderr.decode(errors='replace')}"
        return result.stdout.decode(errors="replace")

    def _checking(self) -> list[str]:
        if self.host_key:
            return ssh_client_options("127.0.0.1", self.host_key, self.ssh_port)
        return ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null"]  # fmt: skip

    def hmp(self, command: str) -> str:
        """One QEMU human-monitor command (through QMP's human-monitor-command)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.monitor))
            reader = sock.makefile("r")
            json.loads(reader.readline())  # greeting
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            json.loads(reader.readline())
            request = {"execute": "human-monitor-command", "arguments": {"command-line": command}}
            sock.sendall(json.dumps(request).encode() + b"\n")
            while True:
                answer = json.loads(reader.readline())
                if "return" in answer or "error" in answer:
                    break
        if "error" in answer:
            raise AssertionError(f"QEMU monitor: {command}: {answer['error']}")
        return answer["return"]

    def forward(self, host_address: str, port: int, guest_port: int | None = None) -> None:
        """Forward ``host_address:port`` on this host to the guest (user-mode ``hostfwd``)."""
        rule = f"tcp:{host_address}:{port}-{self.shape.guest_ip}:{guest_port or port}"
        output = self.hmp(f"hostfwd_add net0 {rule}")
        if output.strip():
            raise AssertionError(f"hostfwd_add {rule}: {output.strip()}")
        self.forwards.append(rule)

    def unforward(self, host_address: str, port: int) -> None:
        self.hmp(f"hostfwd_remove net0 tcp:{host_address}:{port}")

    def agent(self, command: str, timeout: float = 10) -> dict:
        """Ask the QEMU guest agent, as Proxmox does over its virtio-serial channel."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.agent_socket))
            sock.sendall(json.dumps({"execute": command}).encode() + b"\n")
            return json.loads(sock.makefile("r").readline())

    def stop(self) -> None:
        terminate(self.process, grace=15)


def boot_guest(
    image: GuestImage,
    workdir: Path,
    seed_iso: Path,
    shape: BootShape,
    key: Path,
    user: str,
    host_key: str | None = None,
) -> Guest:
    """Start QEMU (returns at once; ``wait_for_ssh`` waits for the guest)."""
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "raw",
         str(overlay)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    ssh_port = free_port()
    netdev = (
        f"user,id=net0,net={shape.network},host={shape.gateway},dns={shape.dns},"
        f"dhcpstart={shape.dhcp_start},ipv6=off,"
        f"hostfwd=tcp:127.0.0.1:{ssh_port}-{shape.guest_ip}:22"
    )
    command = [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-machine", "pc",
        "-cpu", "max",
        "-smp", str(shape.cpus),
        "-m", str(shape.memory_mb),
        "-nodefaults", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", "root=LABEL=guest-root ro console=ttyS0,115200 panic=-1",
        "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
        "-drive", f"file={seed_iso},if=ide,index=2,media=cdrom,format=raw,readonly=on",
        "-netdev", netdev,
        "-device", f"virtio-net-pci,netdev=net0,mac={shape.mac},addr=0x12",
        "-qmp", f"unix:{workdir / 'monitor.sock'},server=on,wait=off",
    ]  # fmt: skip
    if shape.serial_port:
        command += [
            "-chardev", f"file,id=serial0,path={workdir / 'serial.log'}",
            "-device", "isa-serial,chardev=serial0",
        ]  # fmt: skip
    if shape.agent_channel:
        command += [
            "-chardev", f"socket,id=qga0,path={workdir / 'qga.sock'},server=on,wait=off",
            "-device", "virtio-serial,id=qga0",
            "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ]  # fmt: skip
    with (workdir / "qemu.log").open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    return Guest(process, workdir, ssh_port, key, user, shape, time.monotonic(), host_key)


def wait_for_ssh(guest: Guest, timeout: float) -> float:
    """Seconds from QEMU's start until the guest answers SSH at its static address."""
    deadline = guest.started + timeout
    while time.monotonic() < deadline:
        if guest.process.poll() is not None:
            raise AssertionError(
                f"QEMU exited ({guest.process.returncode}): "
                f"{(guest.workdir / 'qemu.log').read_text(errors='replace')[-2000:]}\n"
                f"--- console:\n{guest.console()}"
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            if guest.ssh("true", timeout=20).returncode == 0:
                return time.monotonic() - guest.started
        time.sleep(3)
    raise AssertionError(
        f"no SSH at {guest.shape.guest_ip} (the static address) within {timeout:.0f}s: either the "
        f"guest did not boot, the address from ipconfig0 was not configured, or it never "
        f"presented the pinned host key {guest.host_key}\n"
        f"--- console:\n{guest.console()}"
    )
