"""An existing cache host (settings ``host``), for real: the VM tier's Debian guest booted WITHOUT
our vendor-data (a user with an authorized key and passwordless sudo, nothing else: a host made by
hand), its own host key pinned the way an operator pins it, then prepared by the program's own
prepare step (scripts/vm/prepare-host.sh over a connection pinned to that key) and checked against
what the vendor-data gives the VM: the same files byte for byte, packages, services, directories,
docker group (and Debian's trafficserver, the front). Then the same CA, cache, front and
maintenance steps as on the VM, and a pull over HTTPS through the front on the host's address.

Its own guest (the tier's guest is booted from the vendor-data); run it alone with
``flock /tmp/vm-tier.lock python -m pytest -m vm tests/vm/test_existing_host.py``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from components.renderers import maintenance
from components.renderers.cloud_init import host_state, render_vendor_data
from components.ssh_host_key import HostKey, fingerprint
from tests.integration.oci_image import build_multiarch_image
from tests.integration.registry_proc import (
    RegistryProcess,
    plain_registry_config,
    start_registry,
)
from tests.integration.test_node_e2e import push
from tests.prereq import missing, require_binary, require_root
from tests.vm import proxmox_seed, registry_image
from tests.vm.boot import GUEST_MAC, SSH_TIMEOUT, guest_image
from tests.vm.conftest import engine, image_id, wait_healthy
from tests.vm.qemu import BootShape, Guest, boot_guest, wait_for_ssh
from tests.vm.stack import (
    HostResources,
    capture_existing_host,
    engine_create_body,
    existing_host_settings,
    tier_settings,
)

pytestmark = [pytest.mark.integration, pytest.mark.vm]

USER = "debian"
# No ipconfig0 here: the host takes a DHCP lease from QEMU's user network, its first address.
HOST_ADDRESS = BootShape.dhcp_start
PREPARE_TIMEOUT = 1800  # apt installs docker.io and trafficserver under TCG
# Where the test keeps the CA the host made, for curl --cacert (not a path the program uses).
HOST_CA = "/tmp/registry-mirrors-tier-ca.pem"


@dataclass
class ExistingHost:
    guest: Guest  # pinned to the host's own key
    stack: HostResources
    upstream: RegistryProcess
    workdir: Path
    host_key: str

    def run(self, suffix: str, stdin: str | None = None, env: str = "", timeout: float = 900):
        step = self.stack.step(suffix)
        assert step.host_key == self.host_key, f"{step.name}: pins another key"
        command = env + step.command
        return self.guest.ssh(command, step.stdin if stdin is None else stdin, timeout=timeout)


def hand_made_seed(workdir: Path, public_key: str) -> Path:
    """What someone who makes a Debian host by hand gives it: a user, their key, sudo."""
    user_data = "#cloud-config\n" + yaml.safe_dump(
        {
            "users": [
                {
                    "name": USER,
                    "shell": "/bin/bash",
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "ssh_authorized_keys": [public_key],
                }
            ]
        }
    )
    meta_data = "instance-id: hand-made-cache-host\nlocal-hostname: cachehost\n"
    return proxmox_seed.commit_cloudinit_disk(
        {"user-data": user_data, "meta-data": meta_data}, workdir / "seed", workdir / "seed.iso"
    )


def scanned_key(port: int) -> str:
    """``ssh-keyscan`` as scripts/pin_host_keys.py runs it: the ed25519 key the host offers."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["ssh-keyscan", "-T", "10", "-p", str(port), "-t", "ed25519", "127.0.0.1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        for line in done.stdout.splitlines():
            fields = line.split()
            if len(fields) >= 3 and fields[1] == "ssh-ed25519":
                return f"{fields[1]} {fields[2]}"
        time.sleep(3)
    raise AssertionError("the host offered no ed25519 host key")


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExistingHost]:
    require_root()
    for binary in ("qemu-system-x86_64", "qemu-img", "genisoimage", "ssh", "ssh-keygen",
                   "ssh-keyscan", "skopeo", "docker-registry"):  # fmt: skip
        require_binary(binary)
    image = guest_image()
    if image is None:
        missing("no VM guest image: run scripts/testenv/setup-vm-guest.sh (as root)")
    assert image is not None
    workdir = tmp_path_factory.mktemp("existing-host")
    key = workdir / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "existing-host", "-f",
                    str(key)], check=True, capture_output=True)  # fmt: skip
    public_key = Path(f"{key}.pub").read_text().strip()
    upstream_dir = workdir / "upstream"
    upstream = start_registry(
        {**plain_registry_config(upstream_dir / "data"), "log": {"level": "info"}}, upstream_dir
    )
    try:
        oci = build_multiarch_image(workdir / "oci-1", "1")
        push(oci, upstream, "library/x")
        iso = hand_made_seed(workdir, public_key)
        # A small server: no Proxmox guest-agent channel.
        shape = BootShape(mac=GUEST_MAC, guest_ip=HOST_ADDRESS, agent_channel=False)
        guest = boot_guest(image, workdir / "guest", iso, shape, key, USER)
        try:
            # Host key not checked yet: `true` only, as ssh-keyscan would learn no more.
            wait_for_ssh(guest, SSH_TIMEOUT)
            host_key = scanned_key(guest.ssh_port)
            # The operator's comparison (README "Trust model"): the fingerprint the host prints
            # on its own console (cloud-init's keys-to-console) is the one scanned.
            console = guest.serial_log.read_text(errors="replace")
            assert fingerprint(host_key) in console, (
                f"scanned {fingerprint(host_key)}, not on the console:\n{guest.console(80)}"
            )
            settings = existing_host_settings(
                f"http://{BootShape.gateway}:{upstream.port}", HOST_ADDRESS, USER, host_key
            )
            stack = capture_existing_host(settings)
            yield ExistingHost(guest.pinned(host_key), stack, upstream, workdir, host_key)
        finally:
            guest.stop()
    finally:
        upstream.stop()


def test_the_mode_registers_no_proxmox_resource(host: ExistingHost) -> None:
    assert not [t for t in host.stack.types if t.startswith("proxmoxve:")]
    assert "registry-mirrors:host:CacheHost" in host.stack.types


def test_a_host_that_is_not_debian_or_ubuntu_is_refused_before_any_change(
    host: ExistingHost,
) -> None:
    """The real host, with a Fedora os-release standing in: refused by name, nothing changed.
    Control: the same stand-in as Debian passes the check (the refusal is the ID, not the file)."""
    host.guest.check(
        "printf 'ID=fedora\\nPRETTY_NAME=\"Fedora Linux 41\"\\n' > /tmp/os-release-fedora"
    )
    before = host.guest.check("ls /etc/docker 2>&1; dpkg -l docker.io 2>&1 | tail -1")
    refused = host.run("-prepare", env="export OS_RELEASE=/tmp/os-release-fedora\n")
    assert refused.returncode == 3, refused
    assert "runs Fedora Linux 41 (ID=fedora): only Debian and Ubuntu are supported" in (
        refused.stderr
    )
    assert "nothing was changed" in refused.stderr
    assert host.guest.check("ls /etc/docker 2>&1; dpkg -l docker.io 2>&1 | tail -1") == before
    assert "no packages found" in before, before  # a fresh host: nothing there to begin with


def test_prepare_brings_the_host_to_the_vendor_data_state(host: ExistingHost) -> None:
    started = time.monotonic()
    prepared = host.run("-prepare", timeout=PREPARE_TIMEOUT)
    assert prepared.returncode == 0, f"{prepared.stdout}\n{prepared.stderr}"
    lines = prepared.stdout.splitlines()
    assert lines[0] == "changed=1", prepared.stdout
    assert re.fullmatch(r"ready docker=\d+\.\S+", lines[1]), prepared.stdout
    print(f"prepare-host on a fresh host: {time.monotonic() - started:.0f}s")

    # The files the VM's vendor-data writes, byte for byte, with its modes: the vendor-data of
    # the VM stack this host stack was made from, parsed.
    vm_settings = tier_settings(host.host_key, f"http://{BootShape.gateway}:1")
    vendor = yaml.safe_load(render_vendor_data(vm_settings, HostKey("k\n", host.host_key)))
    for item in vendor["write_files"]:
        mode = host.guest.check(f"stat -c %a {shlex.quote(item['path'])}").strip()
        assert mode == item["permissions"].lstrip("0"), item["path"]
        assert host.guest.check(f"sudo cat {shlex.quote(item['path'])}") == item["content"]
    # Its packages, except the Proxmox-only guest agent; nothing Recommends would have added.
    wanted = [p for p in vendor["packages"] if p != "qemu-guest-agent"]
    status = host.guest.check(
        "dpkg-query -W -f='${Package} ${Status}\\n' " + " ".join(wanted) + " qemu-guest-agent"
        " exim4-base 2>/dev/null || true"
    )
    installed = {line.split()[0] for line in status.splitlines() if "install ok installed" in line}
    assert set(wanted) <= installed, status
    assert not {"qemu-guest-agent", "exim4-base"} & installed, status
    for service in ("docker", "cron"):
        assert host.guest.check(f"systemctl is-enabled {service}").strip() == "enabled"
        assert host.guest.check(f"systemctl is-active {service}").strip() == "active"
    # The directories and group of the vendor-data's runcmd, for the host stack's upstreams.
    for directory in host_state(host.stack.settings, created=False).directories:
        assert host.guest.check(f"stat -c %a {directory}").strip() == "755", directory
    assert "docker" in host.guest.check(f"id -nG {USER}").split()
    # The daemon runs with the vendor-data's daemon.json.
    assert host.guest.check("docker info --format '{{.LoggingDriver}} {{.LiveRestoreEnabled}}'")


def test_prepare_again_changes_nothing(host: ExistingHost) -> None:
    again = host.run("-prepare", timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == "changed=0", again.stdout + again.stderr


def test_a_changed_file_is_put_back_and_docker_restarted(host: ExistingHost) -> None:
    host.guest.check("echo '{}' | sudo tee /etc/docker/daemon.json >/dev/null")
    fixed = host.run("-prepare", timeout=600)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.splitlines()[0] == "changed=1"
    assert "restarted docker" in fixed.stderr
    assert host.guest.check("docker info --format '{{.LiveRestoreEnabled}}'").strip() == "true"


def test_the_same_cache_front_and_maintenance_steps_run_and_the_caches_are_healthy(
    host: ExistingHost,
) -> None:
    """The VM's order (tests/vm/conftest.py ``caches``): the CA made on the host, the containers
    (their registries on loopback), the front (Debian's trafficserver, which prepare-host.sh
    installed), the renewal script and cron; then FrontSwitch's two steps (the certificate from
    the CA, the plain ports refused). A pull over HTTPS through the front, trusting exactly the
    CA the host made, reaches the stand-in upstream; the certificate names the host's address."""
    settings = host.stack.settings
    assert settings.tls.enabled  # the default, in this mode too
    major = registry_image.major_of(host.stack.image)
    archive = registry_image.build_registry_archive(major, host.stack.image, host.workdir)
    host.guest.upload(archive, "docker load")
    trust = host.run("-tls-trust")
    assert trust.returncode == 0, trust.stderr
    assert "BEGIN CERTIFICATE" in trust.stdout
    host.guest.check(f"cat > {HOST_CA}", trust.stdout)
    for upstream in settings.upstreams:
        result = host.run(f"-{upstream.container}-config")
        assert result.returncode == 0, result.stderr
    resolved = image_id(host.guest, host.stack.image)
    for name, inputs in host.stack.containers.items():
        created = engine(
            host.guest, "POST", f"/containers/create?name={name}",
            engine_create_body(inputs, resolved),
        )  # fmt: skip
        engine(host.guest, "POST", f"/containers/{created['Id']}/start")
    states = wait_healthy(host.guest, list(host.stack.containers))
    assert all(state == "healthy" for state in states.values()), states
    front = host.run("registry-mirrors-front")
    assert front.returncode == 0, (
        front.stderr
        + host.guest.ssh(
            "sudo journalctl -u trafficserver --no-pager | tail -n 30; "
            "sudo tail -n 30 /var/log/trafficserver/diags.log"
        ).stdout
    )
    for suffix in ("-maintenance-script", "-tls-script", "-maintenance-cron"):
        result = host.run(suffix)
        assert result.returncode == 0, f"{suffix}: {result.stderr}"
    host.guest.check(f"test -x {maintenance.SCRIPT_PATH} && test -s {maintenance.CRON_PATH}")
    for suffix in ("-tls-issue", "front-switch-front"):
        result = host.run(suffix)
        assert result.returncode == 0, f"{suffix}: {result.stderr}"
    # A pull through the Docker Hub cache, over HTTPS on the host's address, reaches the
    # stand-in upstream.
    docker_hub = next(u for u in settings.upstreams if u.host == "docker.io")
    endpoint = settings.endpoint(docker_hub)
    assert endpoint == f"https://{HOST_ADDRESS}:{docker_hub.resolved_tls_port}"
    manifest = host.guest.check(
        f"curl -sf --cacert {HOST_CA} -H 'Accept: application/vnd.oci.image.index.v1+json' "
        f"{endpoint}/v2/library/x/manifests/1"
    )
    assert '"manifests"' in manifest
    sans = host.guest.check(
        f"openssl s_client -connect {endpoint.removeprefix('https://')} -CAfile {HOST_CA}"
        " </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
    )
    assert f"IP Address:{HOST_ADDRESS}" in sans, sans
    # The plain port refuses once FrontSwitch ran (tls.plainHttp off).
    plain = host.guest.ssh(
        f"curl -s -o /dev/null -w '%{{http_code}}' http://{HOST_ADDRESS}:{docker_hub.port}/v2/"
    )
    assert plain.stdout.strip() == "403", plain
