"""One Distribution pull-through cache per upstream on the registry VM, the front in front of
them (one Apache Traffic Server: it coalesces concurrent cold blob fetches and terminates TLS),
plus their maintenance.

Wiring only: config text comes from ``renderers.registry_config`` and ``renderers.front_proxy``,
cron text from ``renderers.maintenance``, VM-side actions from ``scripts/vm/*.sh``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import pulumi
import pulumi_docker as docker
from pulumi_command import remote

from components.renderers import maintenance
from components.renderers.bundle import mirrors_export
from components.renderers.front_proxy import (
    FRONT_SCRIPT,
    front_bundle,
    front_params,
    settings_front,
)
from components.renderers.registry_config import (
    container_spec,
    distribution,
    render_registry_config,
    vm_config_path,
    vm_data_dir,
)
from components.renderers.shell import as_root, remote_command, script_text
from components.renderers.tls import TLS_SCRIPT, TLS_SCRIPT_PATH, tls_params
from components.settings import Settings, Upstream
from components.ssh import SshTarget

CONFIG_SHA_LABEL = "registry-mirrors.config-sha256"
INSTALL_FILE = "vm/install-file.sh"

# Credentials per upstream host: {"username": ..., "password": ...} (plain strings inside a secret
# Output) or the settings model's UpstreamCredentials.
CredentialsInput = pulumi.Input[Mapping[str, Any]]


def _credential_pair(value: Any) -> tuple[str, str] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return str(value["username"]), str(value["password"])
    password = value.password  # UpstreamCredentials
    secret = password.get_secret_value() if hasattr(password, "get_secret_value") else password
    return str(value.username), str(secret)


class RegistryMirrors(pulumi.ComponentResource):
    """Caches as docker containers on the VM, reached by pulumi-docker over SSH."""

    mirrors: pulumi.Output[dict[str, dict[str, Any]]]
    # The CA certificates nodes must trust (PEM, public), with TLS on.
    trust_bundle: pulumi.Output[str] | None

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        ssh: SshTarget,
        ready: pulumi.Resource,
        credentials: CredentialsInput | None = None,
        vm_id: pulumi.Input[Any] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("registry-mirrors:vm:RegistryMirrors", name, None, opts)
        self._name = name
        self._settings = settings
        self._ssh = ssh
        self._ready = ready
        # A new VM (a new id) has none of what the steps below made on the old one.
        self._vm_triggers = [vm_id] if vm_id is not None else None
        # Secret end to end: the rendered configs derived from it stay secret too.
        self._credentials = pulumi.Output.secret(credentials if credentials is not None else {})

        self.provider = docker.Provider(
            f"{name}-docker",
            host=ssh.docker_host(),
            ssh_opts=ssh.ssh_opts(),
            # The docker daemon exists only once cloud-init on the VM has finished.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]),
        )
        for note in distribution(settings.registry).notes:
            pulumi.log.warn(f"registry.image {settings.registry.image}: {note}", resource=self)
        self.image = docker.RemoteImage(
            f"{name}-image",
            name=settings.registry.image,
            keep_locally=True,
            opts=pulumi.ResourceOptions(parent=self, provider=self.provider),
        )
        self.containers: dict[str, docker.Container] = {}
        self.configs: dict[str, remote.Command] = {}
        for upstream in settings.upstreams:
            # Secret because self._credentials is: an apply keeps its input's secret-ness.
            content = self._credentials.apply(
                lambda creds, upstream=upstream: render_registry_config(
                    upstream, self._settings.registry, _credential_pair(creds.get(upstream.host))
                )
            )
            config = self._create_config(upstream, content)
            self.configs[upstream.host] = config
            self.containers[upstream.host] = self._create_container(upstream, config, content)
        self.tls_trust = self._create_tls_trust() if settings.tls.enabled else None
        self.trust_bundle = self.tls_trust.stdout if self.tls_trust is not None else None
        self.front = self._create_front()
        self.maintenance = self._create_maintenance()

        plain = mirrors_export(settings)
        # Resolves once every container and the front exist, so consumers never point nodes at a
        # missing cache.
        self.mirrors = pulumi.Output.all(
            self.front.id, *[c.id for c in self.containers.values()]
        ).apply(lambda _ids: plain)
        self.register_outputs({"mirrors": self.mirrors})

    def _create_config(self, upstream: Upstream, content: pulumi.Output[str]) -> remote.Command:
        path = vm_config_path(upstream)
        install = remote_command(
            INSTALL_FILE,
            # Always 0600: the file may hold upstream credentials, and only root (the registry
            # container's user) reads it.
            {"DEST": path, "MODE": "0600", "EXTRA_DIR": vm_data_dir(upstream)},
        )
        return remote.Command(
            f"{self._name}-{upstream.container}-config",
            connection=self._ssh.connection(),
            create=install,
            update=install,
            delete=remote_command(INSTALL_FILE, {"DEST": path, "REMOVE": 1}),
            # On stdin: never on a command line; logging NONE: pulumi-command shows output in the
            # diff even when it is secret (pulumi-command #260).
            stdin=content,
            logging=remote.Logging.NONE,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self._ready],
                additional_secret_outputs=["stdin", "stdout", "stderr"],
                # A replacement created before the delete would have its new file removed.
                delete_before_replace=True,
            ),
        )

    def _create_container(
        self, upstream: Upstream, config: remote.Command, content: pulumi.Output[str]
    ) -> docker.Container:
        # A label with the config's hash: any config change replaces exactly this container
        # (Distribution reads its config only at start). Derived from the secret content, so it
        # stays secret (a hash of a short password could be brute-forced).
        config_sha = content.apply(lambda text: hashlib.sha256(text.encode()).hexdigest())
        # Every value below comes from container_spec (plain values): `docker run` with the same
        # values is this container. An image change replaces the container and keeps both host
        # paths, so the cached data survives an upgrade (2.8 -> 3.1.1 read the same layout).
        spec = container_spec(upstream, self._settings.registry)
        return docker.Container(
            f"{self._name}-{upstream.container}",
            name=spec.name,
            image=self.image.image_id,
            # A proxy panics at start when its upstream is unreachable (e.g. VM boot before the
            # network is up): docker must keep restarting it. It never acts in a drain: the stop
            # signal of `docker stop`/`restart` cancels the restart manager and marks the
            # container stopped by hand (moby daemon/kill.go killWithSignal; restart.go), so the
            # exit at the end of the drain is not restarted by the policy, and a GC's stop stays
            # stopped until the script starts it again.
            restart="always",
            # SIGKILL only after the drain (http.draintimeout): for `docker stop`/`restart`
            # without --time (an operator's) and a daemon that stops its containers on shutdown
            # (with the VM's live-restore it leaves them running; at the VM's shutdown systemd
            # gives each container scope 90 s after its SIGTERM) ...
            stop_timeout=spec.stop_timeout,
            # ... and for a replacement (config or image change): the provider's delete
            # (kreuzwerker resource_docker_container_funcs.go) stops the old container with this
            # grace before its forced removal; unset, the grace is 0 s: a SIGKILL mid-transfer.
            destroy_grace_seconds=spec.stop_timeout,
            # The registry on the VM's loopback (the front forwards to it), its metrics public.
            ports=[
                docker.ContainerPortArgs(internal=internal, external=external, ip=address)
                for address, external, internal in spec.published
            ],
            volumes=[
                docker.ContainerVolumeArgs(
                    host_path=spec.config_host_path,
                    container_path=spec.config_container_path,
                    read_only=True,
                ),
                docker.ContainerVolumeArgs(
                    host_path=spec.data_host_path, container_path=spec.data_container_path
                ),
            ],
            envs=list(spec.env),
            # The hard backstop. Measured with the descriptor cache off, neither major grows per
            # request: memory follows the cached entries, ~0.6 KB each, released at their expiry
            # (docs/measurements/drain-and-memory.md).
            memory=self._settings.registry.memory_mb,
            # Set, or every preview plans an update of every cache: the provider reads back the
            # daemon's MemorySwap (docker makes it twice the memory when unset) into an input
            # that is not computed (kreuzwerker memory_swap), so the unset input always differs
            # (the engine tier saw `update [diff: -memorySwap]` right after an up). Equal to the
            # memory: no swap on top of the limit, the backstop stays a backstop.
            memory_swap=self._settings.registry.memory_mb,
            healthcheck=docker.ContainerHealthcheckArgs(
                tests=list(spec.healthcheck),
                interval="30s",
                timeout="5s",
                retries=3,
                start_period="10s",
            ),
            # Access logs are on (info): rotate them or they fill the cache disk.
            log_driver="json-file",
            log_opts={"max-size": "20m", "max-file": "5"},
            labels=[
                docker.ContainerLabelArgs(label=CONFIG_SHA_LABEL, value=config_sha),
                *(
                    docker.ContainerLabelArgs(label=label, value=value)
                    for label, value in sorted(spec.labels.items())
                ),
            ],
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=self.provider,
                depends_on=[config],
                # Same name and host ports: the old container must go before the new one starts.
                delete_before_replace=True,
            ),
        )

    def _create_tls_trust(self) -> remote.Command:
        """The CA on the VM (made there, its key never leaving it) and a first certificate if
        there is none; stdout: the CA certificates the nodes must trust (public). Fails, before
        any node is touched, when the settings would make the nodes drop the CA of the
        certificate served now (a CA rotation in one step)."""
        command = as_root(
            remote_command(TLS_SCRIPT, tls_params(self._settings, "trust")),
            self._settings.cache_host.ssh_user,
        )
        return remote.Command(
            f"{self._name}-tls-trust",
            connection=self._ssh.connection(),
            create=command,
            update=command,
            triggers=self._vm_triggers,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self._ready]),
        )

    def _create_front(self) -> remote.Command:
        """The front's files installed and live (scripts/vm/front.sh): after the containers, so
        each public port is free for it (a cache used to publish its registry there), and after
        the certificate exists; plain ports serving, since a node not yet switched to https://
        still uses them (FrontSwitch refuses them once every node is switched)."""
        front = settings_front(self._settings, serve_plain=True)
        user = self._settings.cache_host.ssh_user
        command = as_root(remote_command(FRONT_SCRIPT, front_params(front)), user)
        after: list[pulumi.Resource] = [self._ready, *self.containers.values()]
        if self.tls_trust is not None:
            after.append(self.tls_trust)
        return remote.Command(
            f"{self._name}-front",
            connection=self._ssh.connection(),
            create=command,
            update=command,
            # The caches stay; nothing listens on their public ports any more.
            delete=as_root("systemctl disable --now trafficserver\n", user),
            stdin=front_bundle(front),
            triggers=self._vm_triggers,
            opts=pulumi.ResourceOptions(parent=self, depends_on=after, delete_before_replace=True),
        )

    def _create_maintenance(self) -> remote.Command:
        scripts = [
            self._create_installed_script(
                "maintenance-script", maintenance.SCRIPT_SOURCE, maintenance.SCRIPT_PATH
            )
        ]
        if self._settings.tls.enabled:
            scripts.append(self._create_installed_script("tls-script", TLS_SCRIPT, TLS_SCRIPT_PATH))
        install_cron = remote_command(INSTALL_FILE, {"DEST": maintenance.CRON_PATH, "MODE": "0644"})
        return remote.Command(
            f"{self._name}-maintenance-cron",
            connection=self._ssh.connection(),
            create=install_cron,
            update=install_cron,
            # Removing the stack removes the schedule: no cron job left stopping containers.
            delete=remote_command(INSTALL_FILE, {"DEST": maintenance.CRON_PATH, "REMOVE": 1}),
            stdin=maintenance.render_cron(self._settings),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[*scripts, *self.containers.values()],
                delete_before_replace=True,
            ),
        )

    def _create_installed_script(self, role: str, source: str, path: str) -> remote.Command:
        """A script of ours installed on the VM for cron (0755)."""
        install = remote_command(INSTALL_FILE, {"DEST": path, "MODE": "0755"})
        return remote.Command(
            f"{self._name}-{role}",
            connection=self._ssh.connection(),
            create=install,
            update=install,
            delete=remote_command(INSTALL_FILE, {"DEST": path, "REMOVE": 1}),
            stdin=script_text(source),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self._ready], delete_before_replace=True
            ),
        )
