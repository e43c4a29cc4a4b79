"""The registry VM on Proxmox VE, with a STATIC cloud-init address, its SSH host key, and a wait
until it is ready.

The host key is the program's (components/ssh_host_key.py): generated once and kept as a secret in
the state by a ``pulumi:index:Stash`` (``registry-vm-host-key``), given to the VM in its
vendor-data so it presents that key from its first boot, and pinned on every connection to the VM
(pulumi-command's ``host_key``, pulumi-docker's ssh options, scripts/verify.py through the
``registryVm`` output). A recreated VM gets the same key from the same snippet.

A Stash keeps the value it was created with as its ``output`` (the engine's builtins.go: Create
copies ``input`` to ``output``, Update keeps the old ``output``); the program makes a new random
key on every run as the ``input``, and ``ignore_changes=["input"]`` keeps that from showing as a
diff. Only ``pulumi up --replace <the Stash's URN>`` makes a new key (README "Trust model").
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_proxmoxve as proxmox
from pulumi_command import remote

from components.renderers.cloud_init import render_vendor_data
from components.renderers.shell import remote_command
from components.settings import Settings
from components.ssh import DIAL_SECONDS, SshTarget
from components.ssh_host_key import HostKey, generate_host_key, public_key_of


@dataclass(frozen=True)
class RegistryVmArgs:
    settings: Settings
    api_token: pulumi.Output[str]
    agent_socket: str


class RegistryVm(pulumi.ComponentResource):
    """Provider, host key, vendor-data snippet, (image,) VM, a command that waits for cloud-init,
    one that installs the host key on a VM that presents another (``vm.sshHostPublicKey``: an
    upgrade or a rotation), and one that applies a changed vendor-data to the running VM
    (``ready``: the VM is usable)."""

    provider: proxmox.Provider
    host_key: pulumi.Stash
    host_public_key: pulumi.Output[str]
    vm: proxmox.VmLegacy
    wait: remote.Command
    install_host_key: remote.Command
    ready: remote.Command
    ssh: SshTarget
    vm_id: pulumi.Output[int]
    address: pulumi.Output[str]
    ssh_user: pulumi.Output[str]

    def __init__(
        self, name: str, args: RegistryVmArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("registry-mirrors:vm:RegistryVm", name, None, opts)
        self._name = name
        self._settings = args.settings
        vm = args.settings.created_vm
        self.provider = self._create_provider(args)
        self.host_key = self._create_host_key()
        # Secret: the private key. Only its public half leaves as a plain value.
        self._private_key: pulumi.Output[str] = pulumi.Output.secret(
            self.host_key.output.apply(str)
        )
        self.host_public_key = pulumi.Output.unsecret(self._private_key.apply(public_key_of))
        self._vendor_data: pulumi.Output[str] = pulumi.Output.secret(
            self._private_key.apply(
                lambda private: render_vendor_data(
                    args.settings, HostKey(private, public_key_of(private))
                )
            )
        )
        snippet = self._create_vendor_data()
        image = self._create_cloud_image() if vm.cloud_image else None
        self.vm = self._create_vm(snippet, image)
        # The VM's address is known from config; the wait proves it is really there. Every
        # connection after the host key step pins the generated key.
        self.ssh = SshTarget(
            host=vm.ip,
            user=vm.ssh_user,
            agent_socket=args.agent_socket,
            host_key=self.host_public_key,
        )
        # Until that step has run, the VM presents the key it had: ours on a VM made from our
        # snippet, else the one the operator pinned for the upgrade or rotation.
        self._before_install = SshTarget(
            host=vm.ip,
            user=vm.ssh_user,
            agent_socket=args.agent_socket,
            host_key=vm.ssh_host_public_key or self.host_public_key,
        )
        if vm.ssh_host_public_key:
            pulumi.log.warn(
                "vm.sshHostPublicKey is set: the program logs in to the VM with it only to install "
                "its own host key there (registry-vm-host-key-install); remove it from the stack "
                "once this `pulumi up` has succeeded (README: Trust model)",
                resource=self,
            )
        self.wait = self._create_wait()
        self.install_host_key = self._create_host_key_install()
        self.ready = self._create_vendor_data_apply()
        self.vm_id = self.vm.vm_id.apply(
            lambda value: int(value) if value is not None else vm.vm_id
        )
        self.address = pulumi.Output.from_input(vm.ip)
        self.ssh_user = pulumi.Output.from_input(vm.ssh_user)
        self.register_outputs(
            {
                "vm_id": self.vm_id,
                "address": self.address,
                "ssh_user": self.ssh_user,
                "host_public_key": self.host_public_key,
            }
        )

    def _child(self, **kwargs) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self, provider=self.provider, **kwargs)

    def _create_provider(self, args: RegistryVmArgs) -> proxmox.Provider:
        proxmox_settings = args.settings.proxmox_api
        ssh = proxmox_settings.ssh
        nodes = None
        if ssh.node_address:
            nodes = [
                proxmox.ProviderSshNodeArgs(
                    name=args.settings.created_vm.proxmox_node, address=ssh.node_address
                )
            ]
        return proxmox.Provider(
            f"{self._name}-proxmox",
            proxmox.ProviderArgs(
                endpoint=proxmox_settings.endpoint,
                api_token=pulumi.Output.secret(args.api_token),
                insecure=proxmox_settings.insecure,
                # Snippet upload goes over SSH to the Proxmox host, not through the API.
                ssh=proxmox.ProviderSshArgs(
                    username=ssh.username,
                    agent=ssh.agent,
                    agent_socket=args.agent_socket if ssh.agent else None,
                    nodes=nodes,
                ),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _create_host_key(self) -> pulumi.Stash:
        return pulumi.Stash(
            f"{self._name}-host-key",
            # A fresh key on every run; only the first one is kept (see the module docstring).
            input=pulumi.Output.secret(generate_host_key().private),
            opts=pulumi.ResourceOptions(
                parent=self,
                ignore_changes=["input"],
                additional_secret_outputs=["input", "output"],
            ),
        )

    def _create_vendor_data(self) -> proxmox.FileLegacy:
        vm = self._settings.created_vm
        return proxmox.FileLegacy(
            f"{self._name}-vendor-data",
            proxmox.FileLegacyArgs(
                node_name=vm.proxmox_node,
                datastore_id=vm.snippets_datastore,
                content_type="snippets",
                source_raw=proxmox.FileLegacySourceRawArgs(
                    data=self._vendor_data,
                    file_name=f"{vm.name}-{vm.vm_id}-vendor-data.yaml",
                ),
            ),
            # The snippet carries the host key: secret in the state and in every diff.
            opts=self._child(additional_secret_outputs=["sourceRaw"]),
        )

    def _create_cloud_image(self) -> proxmox.download.File:
        vm = self._settings.created_vm
        image = vm.cloud_image
        assert image is not None
        return proxmox.download.File(
            f"{self._name}-image",
            proxmox.download.FileArgs(
                node_name=vm.proxmox_node,
                datastore_id=image.datastore,
                content_type="import",
                url=image.url,
                checksum=image.checksum,
                checksum_algorithm=image.checksum_algorithm if image.checksum else None,
                file_name=image.url.rsplit("/", 1)[-1].replace(".img", ".qcow2"),
                overwrite=False,
            ),
            opts=self._child(),
        )

    def _create_vm(
        self, snippet: proxmox.FileLegacy, image: proxmox.download.File | None
    ) -> proxmox.VmLegacy:
        vm = self._settings.created_vm
        clone = (
            proxmox.VmLegacyCloneArgs(vm_id=vm.template_vm_id, full=True, datastore_id=vm.datastore)
            if vm.template_vm_id is not None
            else None
        )
        return proxmox.VmLegacy(
            f"{self._name}-vm",
            proxmox.VmLegacyArgs(
                node_name=vm.proxmox_node,
                vm_id=vm.vm_id,
                name=vm.name,
                description="Pull-through registry caches (managed by Pulumi: registry-mirrors)",
                tags=["registry-mirrors"],
                on_boot=True,
                started=True,
                clone=clone,
                # `agent: 1`: Proxmox adds the virtio-serial channel the guest agent (installed and
                # enabled by the vendor-data) talks through; without it that unit never starts.
                agent=proxmox.VmLegacyAgentArgs(enabled=True),
                cpu=proxmox.VmLegacyCpuArgs(cores=vm.cores, type="host"),
                memory=proxmox.VmLegacyMemoryArgs(dedicated=vm.memory_mb),
                operating_system=proxmox.VmLegacyOperatingSystemArgs(type="l26"),
                scsi_hardware="virtio-scsi-single",
                # Cloud images log to a serial console; without one some hang at boot.
                serial_devices=[proxmox.VmLegacySerialDeviceArgs(device="socket")],
                disks=[
                    proxmox.VmLegacyDiskArgs(
                        interface="scsi0",
                        datastore_id=vm.datastore,
                        size=vm.disk_gb,
                        import_from=image.id if image is not None else None,
                        discard="on",
                        iothread=True,
                        ssd=True,
                    )
                ],
                network_devices=[
                    proxmox.VmLegacyNetworkDeviceArgs(
                        bridge=vm.bridge,
                        vlan_id=vm.vlan,
                        model="virtio",
                        # The Proxmox firewall rules (RegistryFirewall) only apply with this on.
                        firewall=True,
                    )
                ],
                initialization=proxmox.VmLegacyInitializationArgs(
                    datastore_id=vm.datastore,
                    ip_configs=[
                        proxmox.VmLegacyInitializationIpConfigArgs(
                            ipv4=proxmox.VmLegacyInitializationIpConfigIpv4Args(
                                address=f"{vm.ip}/{vm.prefix}", gateway=vm.gateway
                            )
                        )
                    ],
                    dns=proxmox.VmLegacyInitializationDnsArgs(
                        servers=vm.dns_servers, domain=vm.search_domain
                    ),
                    user_account=proxmox.VmLegacyInitializationUserAccountArgs(
                        username=vm.ssh_user, keys=vm.ssh_public_keys
                    ),
                    vendor_data_file_id=snippet.id,
                    # `ciupgrade: 0`. Proxmox's default puts `package_upgrade: true` in the
                    # user-data: a full upgrade at first boot (a new kernel that waits for a
                    # reboot, minutes before the registry is up; measured in the VM tier). The
                    # image's unattended-upgrades keeps it patched instead. Needs qemu-server
                    # 8.0.7+ (Proxmox VE 8) for an API token; older versions allow root@pam only.
                    upgrade=False,
                ),
            ),
            opts=self._child(
                # A changed template or image must not silently rebuild the cache VM.
                ignore_changes=["clone", "disks[0].importFrom"],
            ),
        )

    def _create_wait(self) -> remote.Command:
        vm = self._settings.created_vm
        return remote.Command(
            f"{self._name}-wait-cloud-init",
            remote.CommandArgs(
                # Retry the dial while the VM boots, bounded by the cloud-init timeout.
                connection=self._before_install.connection(
                    dial_error_limit=max(1, vm.cloud_init_timeout_seconds // DIAL_SECONDS)
                ),
                create=remote_command(
                    "vm/wait-cloud-init.sh",
                    {
                        "TIMEOUT_SECONDS": vm.cloud_init_timeout_seconds,
                        "EXPECTED_ADDRESS": vm.ip,
                        "EXPECTED_GATEWAY": vm.gateway,
                    },
                ),
                # Re-run when the VM is replaced (a new id means a new, unbooted machine).
                triggers=[self.vm.id],
            ),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.vm]),
        )

    def _create_host_key_install(self) -> remote.Command:
        """Put the generated host key on a running VM that presents another one
        (scripts/vm/install-host-key.sh), over a connection pinned to the key it presents now.

        A VM made from our snippet already has it (a no-op, ``changed=0``). A VM made before the
        program generated its key, or one whose key is being rotated (``--replace`` of the
        Stash), presents ``vm.sshHostPublicKey``: this step logs in with that key, installs the
        new one and reloads sshd; every later step pins the new key. The key travels on stdin;
        nothing of it is logged or shown in a diff.
        """
        install = remote_command("vm/install-host-key.sh")
        return remote.Command(
            f"{self._name}-host-key-install",
            remote.CommandArgs(
                connection=self._before_install.connection(),
                create=install,
                update=install,
                stdin=self._private_key,
                logging=remote.Logging.NONE,
                add_previous_output_in_env=False,
                triggers=[self.vm.id],
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.wait],
                additional_secret_outputs=["stdin", "stdout", "stderr"],
            ),
        )

    def _create_vendor_data_apply(self) -> remote.Command:
        """Apply a changed vendor-data to the running VM (scripts/vm/apply-vendor-data.sh).

        Proxmox's instance-id hashes user-data and network-config, not the vendor snippet, so
        cloud-init never re-runs a changed snippet on an existing VM; replacing the VM instead
        would lose the cache. This runs whenever the snippet's text (its stdin: an in-place
        update) or the VM (the trigger) changes, and is a no-op when the VM already has that
        vendor-data (as right after its first boot). No trigger on the text: pulumi-command
        replaces a Command on any change of ``triggers`` (pulumi-command #855), and a preview
        should show a changed snippet as what it is, an update (of a secret stdin, since the text
        carries the host key: ``scripts/render.py`` shows the text itself for review).
        """
        return remote.Command(
            f"{self._name}-vendor-data-apply",
            remote.CommandArgs(
                connection=self.ssh.connection(),
                create=remote_command("vm/apply-vendor-data.sh"),
                update=remote_command("vm/apply-vendor-data.sh"),
                # Secret: the vendor-data carries the host key (the snippet's text, as uploaded).
                stdin=self._vendor_data,
                add_previous_output_in_env=False,
                triggers=[self.vm.id],
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.install_host_key],
                additional_secret_outputs=["stdin"],
            ),
        )
