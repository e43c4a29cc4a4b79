"""One Distribution pull-through cache per upstream on the registry VM, plus their maintenance.

Wiring only: config text comes from ``renderers.registry_config``, cron text from
``renderers.maintenance``, node-side actions from ``scripts/vm/*.sh``.
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
from components.renderers.registry_config import (
    container_spec,
    distribution,
    render_registry_config,
    vm_config_path,
    vm_data_dir,
)
from components.renderers.shell import remote_command
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

    def __init__(
        self,
        name: str,
        *,
        settings: Settings,
        ssh: SshTarget,
        ready: pulumi.Resource,
        credentials: CredentialsInput | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("registry-mirrors:vm:RegistryMirrors", name, None, opts)
        self._name = name
        self._settings = settings
        self._ssh = ssh
        self._ready = ready
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
        self.maintenance = self._create_maintenance()

        plain = mirrors_export(settings)
        # Resolves once every container exists, so consumers never point nodes at a missing cache.
        self.mirrors = pulumi.Output.all(*[c.id for c in self.containers.values()]).apply(
            lambda _ids: plain
        )
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
            ports=[docker.ContainerPortArgs(internal=port, external=port) for port in spec.ports],
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

    def _create_maintenance(self) -> remote.Command:
        script = remote.Command(
            f"{self._name}-maintenance-script",
            connection=self._ssh.connection(),
            create=remote_command(INSTALL_FILE, {"DEST": maintenance.SCRIPT_PATH, "MODE": "0755"}),
            update=remote_command(INSTALL_FILE, {"DEST": maintenance.SCRIPT_PATH, "MODE": "0755"}),
            delete=remote_command(INSTALL_FILE, {"DEST": maintenance.SCRIPT_PATH, "REMOVE": 1}),
            stdin=maintenance.script_text(),
            opts=pulumi.ResourceOptions(
                parent=self, depends_on=[self._ready], delete_before_replace=True
            ),
        )
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
                depends_on=[script, *self.containers.values()],
                delete_before_replace=True,
            ),
        )
