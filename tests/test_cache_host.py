"""``host`` mode: an existing cache host instead of the Proxmox VM. Settings (one mode, one line
naming the culprit), the one desired state behind both the vendor-data and the host's manifest,
the program under mocks (no Proxmox resource; the same cache and node components, depending on
the prepare step), and prepare-host.sh's refusals run for real (bash, a stand-in os-release)."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components import program
from components.host_key_pins import targets
from components.renderers.bundle import render_bundle, summary
from components.renderers.cloud_init import (
    HOST_KEY_PLACEHOLDER,
    host_state,
    render_host_manifest,
    render_vendor_data,
)
from components.renderers.shell import SCRIPTS_DIR, remote_command
from components.renderers.tls import CONTAINERD_CA_NAME, subject_alt_names
from components.settings import SettingsError, load_secrets, load_settings
from tests.mocks import COMMAND, TEST_CA_PEM, FakeFleet, fake_node_outputs, install_mocks, plain
from tests.sample import sample_raw, sample_settings

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0pNnkYbq8R0CkYb8bHf2nHXq0ZfT0Vb6fJp3cS2aD"
HOST = {"address": "10.0.30.5", "sshUser": "ops", "sshHostPublicKey": HOST_KEY, "diskGb": 200}


def host_raw(**changes: Any) -> dict[str, Any]:
    raw = sample_raw()
    del raw["proxmox"], raw["vm"]
    raw["host"] = {**HOST, **changes}
    return raw


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    return caught.value.problems


# --- settings -------------------------------------------------------------------------------------


def test_host_mode_loads_and_everything_points_at_the_host() -> None:
    settings = load_settings(host_raw())
    assert settings.proxmox is None and settings.vm is None
    host = settings.cache_host
    assert (host.address, host.ssh_user, host.disk_gb, host.created) == (
        "10.0.30.5", "ops", 200, False
    )  # fmt: skip
    docker_hub = next(u for u in settings.upstreams if u.host == "docker.io")
    # TLS is on by default, in this mode too: the front's HTTPS port on the host's address.
    assert settings.endpoint(docker_hub) == "https://10.0.30.5:5002"
    assert settings.plain_endpoint(docker_hub) == "http://10.0.30.5:5000"
    assert subject_alt_names(settings) == ["IP:10.0.30.5"]
    hosts = summary(settings)
    assert "vm" not in hosts and hosts["host"] == {"address": "10.0.30.5", "sshUser": "ops"}


def test_the_default_mode_is_unchanged() -> None:
    host = sample_settings().cache_host
    assert (host.address, host.ssh_user, host.disk_gb, host.created) == (
        "10.0.20.10", "debian", 100, True
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            lambda raw: raw.update(host=HOST),
            "host: an existing cache host replaces the VM the program creates: remove proxmox "
            "and vm (or remove host to keep the Proxmox VM)",
        ),
        (
            lambda raw: (raw.update(host=HOST), raw.pop("proxmox")),
            "host: an existing cache host replaces the VM the program creates: remove vm "
            "(or remove host to keep the Proxmox VM)",
        ),
        (
            lambda raw: (raw.pop("proxmox"), raw.pop("vm")),
            "vm: required with proxmox (the cache VM the program creates), or set host "
            "(an existing cache host) instead",
        ),
        (
            lambda raw: raw.pop("proxmox"),
            "proxmox: required with vm (or replace vm with host: an existing cache host)",
        ),
        (
            lambda raw: raw.pop("vm"),
            "vm: required with proxmox (or replace proxmox with host: an existing cache host)",
        ),
    ],
)
def test_exactly_one_cache_host_or_one_line_naming_the_key(change: Any, line: str) -> None:
    raw = sample_raw()
    change(raw)
    assert problems_of(raw) == [line]


@pytest.mark.parametrize(
    ("changes", "start"),
    [
        ({"address": "10.0.30.5/24"}, "host.address: '10.0.30.5/24' is not an IPv4 address"),
        ({"address": "cache.lan"}, "host.address: 'cache.lan' is not an IPv4 address"),
        ({"sshUser": "ops@cache"}, "host.sshUser: expected a user name only"),
        ({"sshHostPublicKey": "cache ssh-ed25519 AAAA"}, "host.sshHostPublicKey: looks like a"),
        ({"diskGb": 5}, "host.diskGb:"),
        ({"vmId": 210}, "host.vmId:"),
    ],
)
def test_bad_host_values_are_named(changes: dict[str, Any], start: str) -> None:
    problems = problems_of(host_raw(**changes))
    assert len(problems) == 1 and problems[0].startswith(start), problems


def test_a_node_on_the_cache_hosts_address_is_refused() -> None:
    raw = host_raw(address="10.0.20.31")
    assert problems_of(raw) == ["nodes[1].address: '10.0.20.31' is the cache host's own address"]


def test_budgets_are_shares_of_the_hosts_disk() -> None:
    raw = host_raw(diskGb=20)
    raw["registry"] = {"cacheBudget": "50GiB"}
    [line] = problems_of(raw)
    assert (
        line == "registry.cacheBudget: '50GiB' is more than the whole disk (host.diskGb = 20 GiB)"
    )


def test_no_proxmox_token_with_host_and_one_required_with_proxmox() -> None:
    token = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"
    settings = load_settings(host_raw())
    assert load_secrets({}, settings).proxmox_api_token is None
    with pytest.raises(SettingsError) as caught:
        load_secrets({"proxmoxApiToken": token}, settings)
    assert caught.value.problems == [
        "proxmoxApiToken: not used with host (an existing cache host): remove it"
    ]
    with pytest.raises(SettingsError) as caught:
        load_secrets({}, sample_settings())
    assert caught.value.problems[0].startswith("proxmoxApiToken: required secret is missing")


def test_pin_host_keys_vm_target_is_the_host_section() -> None:
    raw = host_raw()
    del raw["host"]["sshHostPublicKey"]
    [*_, cache] = targets(load_settings(raw), vm=True)
    assert (cache.where, cache.pinned, cache.key_path) == (
        "ops@10.0.30.5:22", None, "host.sshHostPublicKey"
    )  # fmt: skip


# --- one desired state ---------------------------------------------------------------------------


def test_the_manifest_and_the_vendor_data_come_from_one_state() -> None:
    """Every file, package, service and directory of the vendor-data is in the host's manifest,
    except the Proxmox-only guest agent (the one table of differences)."""
    vm = sample_settings()
    vendor = yaml.safe_load(render_vendor_data(vm, HOST_KEY_PLACEHOLDER))
    host = load_settings({**host_raw(sshUser="debian")})
    manifest = render_host_manifest(host_state(host, created=False)).splitlines()
    assert manifest[0] == "# registry-mirrors cache host manifest 1"
    items: dict[str, list[list[str]]] = {}
    for line in manifest[1:]:
        kind, *fields = line.split()
        items.setdefault(kind, []).append(fields)
    files = {
        fields[1]: (fields[0], base64.b64decode(fields[2]).decode()) for fields in items["file"]
    }
    assert files == {f["path"]: (f["permissions"], f["content"]) for f in vendor["write_files"]}
    packages = [fields[0] for fields in items["package"]]
    assert packages == [p for p in vendor["packages"] if p != "qemu-guest-agent"]
    services = [f"systemctl enable --now {fields[0]}" for fields in items["service"]]
    assert services == [c for c in vendor["runcmd"] if "enable --now" in c and "qemu" not in c]
    directories = [fields[0] for fields in items["directory"]]
    made = [c.split()[4:] for c in vendor["runcmd"] if c.startswith("install -d")]
    assert directories == [d for group in made for d in group]
    assert items["docker-user"] == [["debian"]]
    assert "usermod -aG docker debian" in vendor["runcmd"]


def test_the_manifest_installs_the_front() -> None:
    """prepare-host.sh installs Debian's trafficserver, as the VM's vendor-data does: front.sh
    (the same step in both modes) refuses to run without it. Its files come from front.sh, on
    the VM as on the host, not from the manifest."""
    manifest = render_host_manifest(host_state(load_settings(host_raw()), created=False))
    assert "package trafficserver" in manifest.splitlines()
    assert "trafficserver" not in manifest.replace("package trafficserver", "")


def test_the_bundle_shows_the_manifest_instead_of_the_vendor_data() -> None:
    files = render_bundle(load_settings(host_raw()))
    assert "registry-vm/vendor-data.yaml" not in files
    assert files["cache-host/prepare-host.manifest"].endswith("docker-user ops\n")
    # The front's files beside it, as on the VM (registry-vm/front/ there).
    assert "https" in files["cache-host/front/remap.config"]
    assert not [path for path in files if path.startswith("registry-vm/")]
    hosts = tomllib.loads(files["nodes/certs.d/docker.io/hosts.toml"])
    assert list(hosts["host"]) == ["https://10.0.30.5:5002"]


# --- the program under mocks ----------------------------------------------------------------------


def _config(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    return {f"registry-mirrors:{key}": value for key, value in raw.items()}, []


@pytest.fixture(autouse=True)
def agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/test-agent.sock")


def test_host_mode_creates_no_proxmox_resource_and_runs_the_same_components() -> None:
    mocks = install_mocks(*_config(host_raw()))
    mocks.outputs_for[COMMAND] = fake_node_outputs
    seen: list[bool] = []

    def check(values: list[Any]) -> None:
        vm, mirrors, rollout, tls, containerd = values
        assert vm == {
            "vmId": None,
            "address": "10.0.30.5",
            "sshUser": "ops",
            "proxmoxNode": None,
            "diskUsageThresholdPercent": 80,
            # 70 % of the host's 200 GiB less the front's 8 GiB store, shared by the five caches.
            "cacheBudgets": {
                u.container: (140 - 8) * 1024**3 // 5 for u in sample_settings().upstreams
            },
            "sshHostPublicKey": HOST_KEY,
        }
        # TLS on (the default): the front's HTTPS port on the host, a certificate naming its
        # address, the CA the host's trust step printed.
        assert mirrors["docker.io"]["endpoint"] == "https://10.0.30.5:5002"
        assert (tls["subjectAltNames"], tls["caCertificates"]) == (["IP:10.0.30.5"], TEST_CA_PEM)
        hosts = tomllib.loads(containerd["hostsToml"]["docker.io"])
        assert list(hosts["host"]) == ["https://10.0.30.5:5002"]
        assert hosts["host"]["https://10.0.30.5:5002"]["ca"] == [containerd["caFile"]["path"]]
        assert containerd["caFile"]["path"].endswith(CONTAINERD_CA_NAME)
        assert containerd["caFile"]["pem"] == TEST_CA_PEM
        assert rollout[0] == ["k8s-cp-1"]  # the nodes' rollout, as on the VM
        seen.append(True)

    @pulumi.runtime.test
    def deploy() -> pulumi.Output[Any]:
        exports = program.run(runner=FakeFleet())
        return pulumi.Output.all(
            exports["registryVm"],
            exports["mirrors"],
            exports["rollout"],
            exports["tls"],
            exports["containerd"],
        ).apply(check)

    deploy()  # returns once every resource is registered
    assert seen == [True]
    types = {r.type for r in mocks.resources}
    assert not [t for t in types if "proxmox" in t], types
    prepare = mocks.named("cache-host-prepare")
    assert prepare.parent == "cache-host"
    connection = plain(prepare.inputs["connection"])
    assert (connection["host"], connection["user"], connection["hostKey"]) == (
        "10.0.30.5", "ops", HOST_KEY
    )  # fmt: skip
    assert plain(prepare.inputs["stdin"]).startswith("# registry-mirrors cache host manifest")
    # The same components as on the VM, after the prepare step, pinned to the host's own key.
    for name in ("registry-mirrors-docker", "registry-mirrors-registry-config",
                 "registry-mirrors-maintenance-script"):  # fmt: skip
        assert "cache-host-prepare" in mocks.named(name).depends_on, name
    for resource in mocks.resources:
        if resource.type == COMMAND and resource.name.startswith(
            ("registry-mirrors", "registry-front-switch")
        ):
            connection = plain(resource.inputs["connection"])
            assert (connection["host"], connection["user"], connection["hostKey"]) == (
                "10.0.30.5", "ops", HOST_KEY
            ), resource.name  # fmt: skip
            # No VM id to trigger on: the program never replaces an existing host.
            assert "triggers" not in plain(resource.inputs), resource.name
    # The front and TLS: the CA and the front after the host is prepared, as root through
    # sudo (the host's user is ops), the certificate naming the host's address.
    for name in ("registry-mirrors-tls-trust", "registry-mirrors-front"):
        step = mocks.named(name)
        assert "cache-host-prepare" in step.depends_on, name
        assert plain(step.inputs["create"]).startswith("exec sudo -n bash -c "), name
    trust = plain(mocks.named("registry-mirrors-tls-trust").inputs["create"])
    assert "export SANS=IP:10.0.30.5" in trust, trust
    # FrontSwitch after the last node steps only (no VM resource to wait for).
    issue = mocks.named("registry-front-switch-tls-issue")
    assert issue.depends_on == ["containerd-k8s-worker-1-config", "containerd-k8s-worker-2-config"]
    assert "export SANS=IP:10.0.30.5" in plain(issue.inputs["create"])
    front = mocks.named("registry-front-switch-front")
    assert front.depends_on == ["registry-front-switch-tls-issue"]
    # Each node trusts the host's CA and pulls over HTTPS from the host's address.
    node_hosts = plain(mocks.named("containerd-k8s-worker-1-hosts").inputs["stdin"])
    assert TEST_CA_PEM in node_hosts and 'host."https://10.0.30.5:5002"' in node_hosts
    # The VM-only parts are absent: no firewall (the host's is the operator's).
    assert not [r.name for r in mocks.resources if "firewall" in r.name]
    # The first batch's gate waits for every cache resource, as on the VM.
    gate = mocks.named("containerd-batch-0")
    assert {"registry-mirrors-registry", "registry-mirrors-maintenance-cron"} <= set(
        gate.depends_on
    ), gate.depends_on


def test_an_unpinned_host_stops_the_program_before_any_resource() -> None:
    raw = host_raw()
    del raw["host"]["sshHostPublicKey"]
    mocks = install_mocks(*_config(raw))
    with pytest.raises(pulumi.RunError) as caught:
        program.run(runner=FakeFleet())
    assert str(caught.value) == (
        "host (ops@10.0.30.5:22): no pinned host key (host.sshHostPublicKey), so nothing is sent "
        "to it; compare and pin its key: python scripts/pin_host_keys.py --stack test --vm "
        "(nothing was changed)"
    )
    loop = asyncio.get_event_loop()
    for _ in range(10):
        loop.run_until_complete(asyncio.sleep(0.01))
    assert mocks.resources == []


# --- prepare-host.sh's refusals, run for real -----------------------------------------------------

SCRIPT = SCRIPTS_DIR / "vm" / "prepare-host.sh"


def _prepare(tmp_path: Path, manifest: str, os_release: str) -> subprocess.CompletedProcess[str]:
    release = tmp_path / "os-release"
    release.write_text(os_release)
    return subprocess.run(
        ["bash", "-c", remote_command("vm/prepare-host.sh", {"OS_RELEASE": str(release)})],
        input=manifest, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )  # fmt: skip


MANIFEST = render_host_manifest(host_state(load_settings(host_raw()), created=False))


@pytest.mark.parametrize(
    ("os_release", "name"),
    [
        ('ID=fedora\nPRETTY_NAME="Fedora Linux 41"\n', "runs Fedora Linux 41 (ID=fedora)"),
        ('ID=alpine\nNAME="Alpine Linux"\n', "runs alpine (ID=alpine)"),
        ('ID=linuxmint\nID_LIKE="ubuntu debian"\nPRETTY_NAME="Linux Mint 22"\n',
         "runs Linux Mint 22 (ID=linuxmint)"),
    ],
)  # fmt: skip
def test_a_host_that_is_not_debian_or_ubuntu_is_refused_by_name(
    tmp_path: Path, os_release: str, name: str
) -> None:
    """Refused before anything: the manifest names files this machine does not have, and none
    of them appears (this machine is Debian; only the stand-in os-release says otherwise)."""
    done = _prepare(tmp_path, MANIFEST, os_release)
    assert done.returncode == 3, done
    assert f"{name}: only Debian and Ubuntu are supported (nothing was changed)" in done.stderr
    assert not Path("/etc/docker-registry/registry-kyverno").exists()


def test_a_debian_os_release_passes_the_check(tmp_path: Path) -> None:
    """Control for the refusal above: the same stand-in saying Debian gets past the os check, to
    the next one. The script runs under a private, empty /run (a mount namespace), so it stops
    at "not running systemd" and this machine is never changed."""
    release = tmp_path / "os-release"
    release.write_text('ID=debian\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    command = remote_command("vm/prepare-host.sh", {"OS_RELEASE": str(release)})
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c",
         'mount -t tmpfs none /run && exec bash -c "$0"', command],
        input=MANIFEST, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done
    assert "Debian GNU/Linux 12 (bookworm) is not running systemd" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("", "stdin is not a cache host manifest"),
        ("hello\n", "stdin is not a cache host manifest"),
        (MANIFEST.replace("file 0644", "file 644", 1), "manifest line 2: mode"),
        (MANIFEST.replace("package docker.io", "package docker.io; rm -rf /"), "manifest line"),
        (MANIFEST.replace("directory /var/lib/registry\n", "directory var/lib\n"), "path"),
        (MANIFEST.replace("docker-user ops\n", ""), "no docker-user line"),
    ],
)
def test_a_bad_manifest_is_refused_naming_the_line(
    tmp_path: Path, manifest: str, message: str
) -> None:
    done = _prepare(tmp_path, manifest, "ID=debian\n")
    assert done.returncode == 2 and message in done.stderr, done


def test_the_script_is_a_real_executable_file() -> None:
    """A real .sh (tests/integration/test_shellcheck.py lints every script)."""
    assert SCRIPT.is_file() and os.access(SCRIPT, os.X_OK)
