"""RegistryVm under Pulumi mocks: every test RETURNS its Output so the asserts really run."""

from __future__ import annotations

import json

import pulumi
import pytest

from components.registry_vm import RegistryVm, RegistryVmArgs
from components.renderers.cloud_init import render_vendor_data
from components.ssh_host_key import HostKey, generate_host_key, public_key_of
from tests.mocks import STASH, RecordingMocks, is_secret, plain
from tests.sample import TEST_KEY, sample_raw, sample_settings

TOKEN = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"


def generated_key(mocks: RecordingMocks) -> HostKey:
    """The host key the component generated: its Stash's value (the engine's output = input)."""
    private = plain(mocks.named("registry-vm-host-key").inputs["input"])
    return HostKey(private, public_key_of(private))


def build(settings=None) -> RegistryVm:
    return RegistryVm(
        "registry-vm",
        RegistryVmArgs(
            settings=settings or sample_settings(),
            api_token=pulumi.Output.secret(TOKEN),
            agent_socket="/run/agent.sock",
        ),
    )


@pulumi.runtime.test
def test_vm_gets_static_ipconfig0_and_vendor_data(mocks: RecordingMocks):
    registry_vm = build()

    def check(_):
        vm = mocks.named("registry-vm-vm").inputs
        ip_config = vm["initialization"]["ipConfigs"][0]["ipv4"]
        assert ip_config == {"address": "10.0.20.10/24", "gateway": "10.0.20.1"}
        snippet = mocks.named("registry-vm-vendor-data")
        assert vm["initialization"]["vendorDataFileId"] == "registry-vm-vendor-data-id"
        assert snippet.inputs["contentType"] == "snippets"
        assert plain(snippet.inputs["sourceRaw"])["data"] == render_vendor_data(
            sample_settings(), generated_key(mocks)
        )
        assert vm["initialization"]["userAccount"]["username"] == "debian"
        assert vm["initialization"]["dns"]["servers"] == ["10.0.20.1"]
        assert vm["onBoot"] is True and vm["started"] is True

    return registry_vm.ready.id.apply(check)


@pulumi.runtime.test
def test_vm_hardware_disk_nic_vlan(mocks: RecordingMocks):
    registry_vm = build()

    def check(_):
        vm = mocks.named("registry-vm-vm").inputs
        assert vm["vmId"] == 210
        assert vm["clone"]["vmId"] == 9000
        assert vm["cpu"]["cores"] == 2
        assert vm["memory"]["dedicated"] == 4096
        disk = vm["disks"][0]
        assert disk["size"] == 100 and disk["datastoreId"] == "local-lvm"
        nic = vm["networkDevices"][0]
        assert nic == {"bridge": "vmbr0", "vlanId": 20, "model": "virtio", "firewall": True}

    return registry_vm.vm.id.apply(check)


@pulumi.runtime.test
def test_cloud_image_source_imports_downloaded_image(mocks: RecordingMocks):
    raw = sample_raw()
    del raw["vm"]["templateVmId"]
    raw["vm"]["cloudImage"] = {
        "url": "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        "checksum": "ab" * 64,
    }
    from components.settings import load_settings

    registry_vm = build(load_settings(raw))

    def check(_):
        image = mocks.named("registry-vm-image").inputs
        assert image["contentType"] == "import"
        assert image["checksumAlgorithm"] == "sha512"
        vm = mocks.named("registry-vm-vm").inputs
        assert "clone" not in vm
        assert vm["disks"][0]["importFrom"] == "registry-vm-image-id"

    return registry_vm.vm.id.apply(check)


@pulumi.runtime.test
def test_api_token_is_secret_and_tls_verified(mocks: RecordingMocks):
    registry_vm = build()

    def check(_):
        provider = next(r for r in mocks.resources if r.type == "pulumi:providers:proxmoxve")
        assert is_secret(provider.inputs["apiToken"])
        assert plain(provider.inputs["apiToken"]) == TOKEN
        assert provider.inputs["insecure"] == "false"
        assert provider.inputs["endpoint"] == "https://pve.lan:8006/"
        assert json.loads(provider.inputs["ssh"])["agent"] is True
        # The token reaches the provider; it must never land in cloud-init.
        snippet = plain(mocks.named("registry-vm-vendor-data").inputs["sourceRaw"])["data"]
        assert TOKEN not in snippet
        vm = mocks.named("registry-vm-vm")
        assert TOKEN not in repr(vm.inputs)

    return registry_vm.vm.id.apply(check)


@pulumi.runtime.test
def test_wait_targets_static_address_and_depends_on_vm(mocks: RecordingMocks):
    registry_vm = build()

    def check(_):
        wait = plain(mocks.named("registry-vm-wait-cloud-init").inputs)
        assert wait["connection"]["host"] == "10.0.20.10"
        assert wait["connection"]["user"] == "debian"
        assert wait["connection"]["agentSocketPath"] == "/run/agent.sock"
        assert "export EXPECTED_ADDRESS=10.0.20.10" in wait["create"]
        assert "export TIMEOUT_SECONDS=900" in wait["create"]
        assert "cloud-init status --wait" in wait["create"]
        assert wait["triggers"] == ["registry-vm-vm-id"]
        # dial retries cover the cloud-init timeout (900 s / 15 s per dial)
        assert wait["connection"]["dialErrorLimit"] == 60

    return registry_vm.ready.id.apply(check)


@pytest.fixture
def mocks() -> RecordingMocks:
    from tests.mocks import install_mocks

    return install_mocks()


# --- what Proxmox makes of the VM resource (bpg provider -> VM config -> NoCloud seed) ---------


def _proxmox_conf(mocks: RecordingMocks) -> dict[str, str]:
    from tests.vm.proxmox_seed import proxmox_config, snippet_volid

    vm = plain(mocks.named("registry-vm-vm").inputs)
    snippet = plain(mocks.named("registry-vm-vendor-data").inputs)
    return proxmox_config(
        vm, "BC:24:11:00:00:01", {"registry-vm-vendor-data-id": snippet_volid(snippet)}
    )


@pulumi.runtime.test
def test_vm_config_enables_agent_serial_vendor_snippet_and_no_first_boot_upgrade(
    mocks: RecordingMocks,
):
    registry_vm = build()

    def check(_):
        conf = _proxmox_conf(mocks)
        # agent: the virtio-serial channel qemu-guest-agent (vendor-data) needs.
        assert conf["agent"] == "enabled=1"
        assert conf["serial0"] == "socket"
        assert conf["cicustom"] == "vendor=local:snippets/registry-210-vendor-data.yaml"
        # ciupgrade 0: Proxmox's user-data then has no `package_upgrade: true`.
        assert conf["ciupgrade"] == "0"
        assert conf["ipconfig0"] == "gw=10.0.20.1,ip=10.0.20.10/24"
        from tests.vm.proxmox_seed import cloudinit_userdata

        assert "package_upgrade" not in cloudinit_userdata(conf, 210)

    return registry_vm.ready.id.apply(check)


@pulumi.runtime.test
def test_changed_vendor_data_is_applied_over_ssh_not_by_replacing_the_vm(mocks: RecordingMocks):
    """Proxmox's instance-id ignores the vendor snippet, so the apply step (after the wait) is
    what brings a change to the running VM: the snippet's text is its stdin (a change is an
    in-place update); its only trigger is the VM (a trigger change replaces the Command)."""
    registry_vm = build()

    def check(_):
        apply = plain(mocks.named("registry-vm-vendor-data-apply").inputs)
        text = render_vendor_data(sample_settings(), generated_key(mocks))
        assert apply["stdin"] == text
        assert apply["triggers"] == ["registry-vm-vm-id"]
        assert "apply-vendor-data.sh" in apply["create"]
        assert apply["update"] == apply["create"]
        assert mocks.named("registry-vm-vendor-data-apply").depends_on == [
            "registry-vm-host-key",
            "registry-vm-host-key-install",
            "registry-vm-vm",
        ]
        wait = plain(mocks.named("registry-vm-wait-cloud-init").inputs)
        assert "export EXPECTED_GATEWAY=10.0.20.1" in wait["create"]

    return registry_vm.ready.id.apply(check)


# --- the VM's host key: generated, kept secret in the state, pinned everywhere -----------------


@pulumi.runtime.test
def test_the_host_key_is_a_secret_stash_whose_new_value_each_run_shows_no_diff(
    mocks: RecordingMocks,
):
    """The program makes a fresh key on every run (two runs differ); the engine keeps the first
    one as the Stash's output (builtins.go) and ``ignore_changes=["input"]`` keeps the fresh one
    from showing as a diff. The real engine's "no diff on re-run" is the engine tier's to prove."""
    first = build()

    def check(_):
        [stash] = mocks.of_type(STASH)
        assert stash.name == "registry-vm-host-key"
        assert stash.parent == "registry-vm"
        assert stash.ignore_changes == ["input"]
        assert set(stash.additional_secret_outputs) == {"input", "output"}
        assert is_secret(stash.inputs["input"])
        private = plain(stash.inputs["input"])
        assert private.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert public_key_of(private).startswith("ssh-ed25519 ")
        # Another run of the program (here: another component) draws another key.
        assert generate_host_key().private != private
        return public_key_of(private)

    def compare(values):
        public, exported = values
        assert exported == public, "the pinned public key is the Stash's key"
        assert not is_secret(exported)

    return pulumi.Output.all(first.ready.id.apply(check), first.host_public_key).apply(compare)


@pulumi.runtime.test
def test_every_input_carrying_the_private_key_is_secret(mocks: RecordingMocks):
    registry_vm = build()

    def check(_):
        key = generated_key(mocks)
        body = key.private.split("\n")[1]  # a line of the key's base64: found in any encoding
        carriers = set()
        for resource in mocks.resources:
            for name, value in resource.inputs.items():
                if body in repr(plain(value)):
                    carriers.add((resource.name, name))
                    assert is_secret(value), f"{resource.name}.{name} carries the key in plain"
        assert carriers == {
            ("registry-vm-host-key", "input"),
            ("registry-vm-vendor-data", "sourceRaw"),
            ("registry-vm-host-key-install", "stdin"),
            ("registry-vm-vendor-data-apply", "stdin"),
        }
        assert "sourceRaw" in mocks.named("registry-vm-vendor-data").additional_secret_outputs
        install = mocks.named("registry-vm-host-key-install")
        assert plain(install.inputs["logging"]) == "none"
        assert {"stdin", "stdout", "stderr"} <= set(install.additional_secret_outputs)
        assert "stdin" in mocks.named("registry-vm-vendor-data-apply").additional_secret_outputs
        # Never on a command line.
        for resource in mocks.resources:
            for field in ("create", "update", "delete"):
                assert body not in str(plain(resource.inputs.get(field, ""))), resource.name

    return registry_vm.ready.id.apply(check)


@pulumi.runtime.test
def test_every_connection_to_the_vm_pins_the_generated_key(mocks: RecordingMocks):
    """A fresh stack: the VM is made from the snippet, so it presents the generated key from its
    first boot; every step, the wait and the install step included, pins exactly that key."""
    registry_vm = build()

    def check(_):
        public = generated_key(mocks).public
        commands = [r for r in mocks.resources if r.type == "command:remote:Command"]
        assert {r.name for r in commands} == {
            "registry-vm-wait-cloud-init",
            "registry-vm-host-key-install",
            "registry-vm-vendor-data-apply",
        }
        for command in commands:
            assert plain(command.inputs["connection"])["hostKey"] == public, command.name
        install = plain(mocks.named("registry-vm-host-key-install").inputs)
        assert "install-host-key.sh" in install["create"] and install["update"] == install["create"]
        assert install["stdin"] == generated_key(mocks).private
        assert install["triggers"] == ["registry-vm-vm-id"]
        assert mocks.named("registry-vm-host-key-install").depends_on == [
            "registry-vm-host-key",
            "registry-vm-vm",
            "registry-vm-wait-cloud-init",
        ]
        assert registry_vm.ssh.host_key is registry_vm.host_public_key

    return registry_vm.ready.id.apply(check)


@pulumi.runtime.test
def test_an_upgraded_or_rotated_vm_is_reached_with_its_current_key_until_ours_is_installed(
    mocks: RecordingMocks,
):
    """vm.sshHostPublicKey = the key the running VM presents now (made before the program
    generated keys, or a rotation): the wait and the install step pin THAT key; everything after
    the install pins the generated one."""
    raw = sample_raw()
    raw["vm"]["sshHostPublicKey"] = TEST_KEY
    from components.settings import load_settings

    registry_vm = build(load_settings(raw))

    def check(_):
        public = generated_key(mocks).public
        assert public != " ".join(TEST_KEY.split()[:2])
        for name in ("registry-vm-wait-cloud-init", "registry-vm-host-key-install"):
            assert plain(mocks.named(name).inputs["connection"])["hostKey"] == TEST_KEY, name
        apply = plain(mocks.named("registry-vm-vendor-data-apply").inputs)
        assert apply["connection"]["hostKey"] == public

    return registry_vm.ready.id.apply(check)
