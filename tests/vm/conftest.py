"""The VM tier's world: one guest booted for the whole tier, from the program's own resources.

Session fixtures, each what ``pulumi up`` would have done by then:
- ``tier``: stand-in upstream on this host's loopback, the stack's settings, the program's
  resources captured under mocks, the Proxmox seed made from them, the guest booted, SSH up.
- ``ready``: the program's wait and vendor-data steps run (cloud-init done, Docker active).
- ``caches``: the registry image loaded and tagged as configured, each config step run, each
  container created from the component's container spec (ContainerCreate), healthy.
- ``maintenance``: the maintenance script and cron file installed by their steps.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.oci_image import MultiArchImage, build_multiarch_image
from tests.integration.registry_proc import (
    RegistryProcess,
    plain_registry_config,
    start_registry,
)
from tests.integration.test_node_e2e import push
from tests.prereq import missing, require_binary, require_root
from tests.vm import registry_image
from tests.vm.boot import READY_TIMEOUT, SSH_TIMEOUT, boot_stack, guest_image
from tests.vm.qemu import BootShape, Guest, wait_for_ssh
from tests.vm.stack import StackResources, Step, engine_create_body, tier_settings


@dataclass
class Tier:
    guest: Guest
    stack: StackResources
    upstream: RegistryProcess
    images: dict[str, MultiArchImage]
    workdir: Path
    key: Path
    public_key: str
    seed: dict[str, str]
    timings: dict[str, float]
    front_output: str = ""
    # What the trust step printed: the CA certificate the VM made (on the guest at GUEST_CA too).
    ca_pem: str = ""

    def run(self, step: Step, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """A remote.Command's create step, as pulumi-command runs it: over a connection that
        accepts only the key the step's connection pins."""
        assert step.host_key, f"{step.name}: no pinned host key"
        return self.guest.pinned(step.host_key).ssh(step.command, step.stdin, timeout=timeout)

    def journal(self, since: float, tag: str) -> str:
        return self.guest.check(
            f"sudo journalctl --no-pager -o cat -t {shlex.quote(tag)} --since @{int(since)}"
        )


TIMINGS: dict[str, float] = {}
# Where the tier keeps the CA certificate on the guest, for curl --cacert (never on the VM's
# own paths: the program does not put it there).
GUEST_CA = "/tmp/registry-mirrors-tier-ca.pem"


def pytest_sessionstart(session: Any) -> None:
    """scripts/test.sh stops a background tier with SIGTERM: tear down as on Ctrl-C, so the
    guest (QEMU) and the stand-in registry are stopped rather than left running."""

    def interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The boot's timings, seconds from QEMU's start (bench/vm_boot.py measures them too)."""
    if TIMINGS:
        figures = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in TIMINGS.items())
        terminalreporter.write_line(f"VM tier: {figures}")


@pytest.fixture(scope="session")
def tier(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tier]:
    require_root()
    for binary in ("qemu-system-x86_64", "qemu-img", "genisoimage", "ssh", "ssh-keygen",
                   "skopeo", "docker-registry", "busybox"):  # fmt: skip
        require_binary(binary)
    image = guest_image()
    if image is None:
        missing("no VM guest image: run scripts/testenv/setup-vm-guest.sh (as root)")
    assert image is not None
    workdir = tmp_path_factory.mktemp("vm-tier")
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vm-tier", "-f",
                    str(key)], check=True, capture_output=True)  # fmt: skip
    public_key = Path(f"{key}.pub").read_text().strip()

    upstream_dir = workdir / "upstream"
    upstream = start_registry(
        {**plain_registry_config(upstream_dir / "data"), "log": {"level": "info"}}, upstream_dir
    )
    try:
        images = {tag: build_multiarch_image(workdir / f"oci-{tag}", tag) for tag in ("1", "2")}
        for oci in images.values():
            push(oci, upstream, "library/x")
            push(oci, upstream, "org/y")
        # The guest reaches this host's loopback at the lab gateway address.
        settings = tier_settings(public_key, f"http://{BootShape.gateway}:{upstream.port}")
        stack, seed, guest = boot_stack(settings, image, workdir, key)
        try:
            timings = TIMINGS
            timings["ssh"] = wait_for_ssh(guest, SSH_TIMEOUT)
            yield Tier(guest, stack, upstream, images, workdir, key, public_key, seed, timings)
        finally:
            guest.stop()
    finally:
        upstream.stop()


@pytest.fixture(scope="session")
def ready(tier: Tier) -> Tier:
    """The program's wait step, then its vendor-data step: what RegistryMirrors depends on."""
    wait = tier.run(tier.stack.step("-wait-cloud-init"), timeout=READY_TIMEOUT)
    assert wait.returncode == 0, (
        f"wait-cloud-init failed on a fresh boot:\n{wait.stderr}\n--- console:\n"
        f"{tier.guest.console()}"
    )
    tier.timings["ready (cloud-init done, docker active)"] = time.monotonic() - tier.guest.started
    # The program's order: wait, host key step (a no-op on a VM made from the snippet), apply.
    installed = tier.run(tier.stack.step("-host-key-install"))
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.splitlines()[0] == "changed=0", installed.stdout
    applied = tier.run(tier.stack.step("-vendor-data-apply"))
    assert applied.returncode == 0, applied.stderr
    return tier


def image_id(guest: Guest, name: str) -> str:
    return guest.check(f"docker image inspect --format '{{{{.Id}}}}' {shlex.quote(name)}").strip()


def engine(guest: Guest, method: str, path: str, body: Any = None) -> Any:
    """One Docker Engine API call in the guest, as pulumi-docker makes it (over the socket)."""
    command = (
        "curl -sS --fail-with-body --unix-socket /var/run/docker.sock "
        f"-X {method} -H 'Content-Type: application/json' "
        + ("--data-binary @- " if body is not None else "")
        + shlex.quote(f"http://localhost{path}")
    )
    output = guest.check(command, json.dumps(body) if body is not None else "")
    return json.loads(output) if output.strip() else None


def create_containers(tier: Tier, stack: StackResources) -> dict[str, str]:
    """Config steps, then each container from its spec; returns name -> container id."""
    for upstream in stack.settings.upstreams:
        result = tier.run(stack.step(f"-{upstream.container}-config"))
        assert result.returncode == 0, result.stderr
    resolved = image_id(tier.guest, stack.image)
    ids = {}
    for name, inputs in stack.containers.items():
        created = engine(
            tier.guest, "POST", f"/containers/create?name={name}",
            engine_create_body(inputs, resolved),
        )  # fmt: skip
        engine(tier.guest, "POST", f"/containers/{created['Id']}/start")
        ids[name] = created["Id"]
    return ids


def wait_healthy(guest: Guest, names: list[str], timeout: float = 240) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        output = guest.check(
            "docker inspect --format '{{.Name}} {{.State.Health.Status}}' " + " ".join(names)
        )
        states = dict(line.strip("/").split() for line in output.splitlines() if line.strip())
        if all(state == "healthy" for state in states.values()):
            return states
        time.sleep(3)
    return states


@pytest.fixture(scope="session")
def caches(ready: Tier) -> Tier:
    tier = ready
    major = registry_image.major_of(tier.stack.image)
    archive = registry_image.build_registry_archive(major, tier.stack.image, tier.workdir)
    tier.guest.upload(archive, "docker load")
    started = time.monotonic()
    # The CA and a first certificate, made on the guest (its key never leaves it).
    trust = tier.run(tier.stack.step("-tls-trust"))
    assert trust.returncode == 0, trust.stderr
    tier.ca_pem = trust.stdout
    tier.guest.check(f"cat > {GUEST_CA}", trust.stdout)
    create_containers(tier, tier.stack)
    states = wait_healthy(tier.guest, list(tier.stack.containers))
    tier.timings["containers healthy"] = time.monotonic() - started
    assert all(s == "healthy" for s in states.values()), (
        f"containers not healthy: {states}\n"
        + tier.guest.ssh(
            "docker ps -a; for c in $(docker ps -aq); do docker logs --tail 20 $c; done"
        ).stdout
    )
    # The front (Apache Traffic Server from the guest's apt): the step that runs once every
    # container has moved its registry to the VM's loopback.
    front = tier.run(tier.stack.step("mirrors-front"))
    assert front.returncode == 0, (
        front.stderr
        + tier.guest.ssh(
            "sudo journalctl -u trafficserver --no-pager | tail -n 30; "
            "sudo tail -n 30 /var/log/trafficserver/diags.log"
        ).stdout
    )
    tier.front_output = front.stdout
    return tier


@pytest.fixture(scope="session")
def maintenance(caches: Tier) -> Tier:
    for suffix in ("-maintenance-script", "-tls-script", "-maintenance-cron"):
        result = caches.run(caches.stack.step(suffix))
        assert result.returncode == 0, f"{suffix}: {result.stderr}"
    # The tier runs the jobs itself, at moments it chooses; cron's own schedule (hourly restarts,
    # staggered by minutes) would restart caches in the middle of other checks (seen: a real
    # hourly restart of registry-ghcr during a GC test).
    caches.guest.check("sudo systemctl stop cron")
    return caches


@contextlib.contextmanager
def forwarded(guest: Guest, address: str, ports: list[int]) -> Iterator[None]:
    for port in ports:
        guest.forward(address, port)
    try:
        yield
    finally:
        for port in ports:
            with contextlib.suppress(AssertionError, OSError):
                guest.unforward(address, port)
