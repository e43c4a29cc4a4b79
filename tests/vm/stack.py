"""The program's own resources for the VM tier, captured under Pulumi mocks.

The tier never re-describes what ``pulumi up`` would do: it builds ``RegistryVm`` and
``RegistryMirrors`` exactly as ``components.program.run`` wires them, records what they register
(tests/mocks.py), and hands the tests plain data:

- the ``proxmoxve.VmLegacy`` and vendor-data ``FileLegacy`` inputs (-> tests/vm/proxmox_seed.py);
- every ``remote.Command`` as the (command, stdin) pair pulumi-command would run over SSH;
- every ``docker.Container``'s inputs (-> ``engine_create_body``: the Docker Engine API request
  pulumi-docker makes from them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from components.front_switch import FrontSwitch
from components.registry_mirrors import RegistryMirrors
from components.registry_vm import RegistryVm, RegistryVmArgs
from components.settings import Settings
from components.ssh_host_key import HostKey, public_key_of
from tests.mocks import STASH, install_mocks, plain

VM_TYPE = "proxmoxve:index/vmLegacy:VmLegacy"
FILE_TYPE = "proxmoxve:index/fileLegacy:FileLegacy"
COMMAND_TYPE = "command:remote:Command"
CONTAINER_TYPE = "docker:index/container:Container"
IMAGE_TYPE = "docker:index/remoteImage:RemoteImage"
DOCKER_PROVIDER_TYPE = "pulumi:providers:docker"


@dataclass(frozen=True)
class Step:
    """One remote.Command's create step: what pulumi-command runs, and its stdin."""

    name: str
    command: str
    stdin: str
    triggers: tuple[Any, ...] = ()
    host_key: str = ""  # the connection's hostKey: the one key pulumi-command accepts


@dataclass(frozen=True)
class StackResources:
    settings: Settings
    vm: dict[str, Any]
    files: dict[str, dict[str, Any]]  # mocks id -> FileLegacy inputs
    steps: dict[str, Step]  # logical name -> step
    containers: dict[str, dict[str, Any]]  # container name -> inputs
    image: str  # the RemoteImage's name: the configured registry image
    host_key: HostKey  # the VM's host key, as the Stash holds it
    docker_ssh_opts: list[str]  # pulumi-docker's ssh options (its ssh:// transport)

    def step(self, suffix: str) -> Step:
        [match] = [step for name, step in self.steps.items() if name.endswith(suffix)]
        return match


def capture(settings: Settings, host_key: HostKey | None = None) -> StackResources:
    """Run the VM half of the program under mocks and return what it registered.

    ``host_key``: the key a stack already holds. The engine then answers the host key Stash with
    the value it was created with, whatever fresh key this run passes (the Stash's update keeps
    its output); None is a new stack, whose Stash keeps this run's key."""
    mocks = install_mocks()
    # pulumi-docker answers with the pulled image's id; the tier resolves that id in the guest.
    mocks.outputs_for[IMAGE_TYPE] = lambda args: {"imageId": args.inputs["name"]}
    if host_key is not None:
        mocks.outputs_for[STASH] = lambda _args: {"output": host_key.private}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        registry_vm = RegistryVm(
            "registry-vm",
            RegistryVmArgs(
                settings=settings,
                api_token=pulumi.Output.secret("pulumi@pve!vm-tier=unused"),
                agent_socket="/run/vm-tier-agent.sock",
            ),
        )
        mirrors = RegistryMirrors(
            "registry-mirrors", settings=settings, ssh=registry_vm.ssh, ready=registry_vm.ready
        )
        waits = [mirrors.mirrors, mirrors.maintenance.id, registry_vm.ready.id]
        if settings.tls.enabled:
            # What runs after every node step (the tier has no node of the program's).
            switch = FrontSwitch(
                "registry-front-switch", settings=settings, ssh=registry_vm.ssh, after=[mirrors]
            )
            waits += [switch.issue.id, switch.front.id]
        return pulumi.Output.all(*waits)

    program()

    [vm] = mocks.of_type(VM_TYPE)
    files = {f"{r.name}-id": plain(r.inputs) for r in mocks.of_type(FILE_TYPE)}
    steps = _steps(mocks)
    containers = {plain(r.inputs)["name"]: plain(r.inputs) for r in mocks.of_type(CONTAINER_TYPE)}
    [image] = mocks.of_type(IMAGE_TYPE)
    [stash] = [r for r in mocks.of_type(STASH) if r.name.endswith("-host-key")]
    [docker] = mocks.of_type(DOCKER_PROVIDER_TYPE)
    docker_ssh_opts = json.loads(plain(docker.inputs)["sshOpts"])  # providers get JSON
    private = host_key.private if host_key is not None else plain(stash.inputs["input"])
    return StackResources(
        settings,
        plain(vm.inputs),
        files,
        steps,
        containers,
        plain(image.inputs)["name"],
        HostKey(private, public_key_of(private)),
        docker_ssh_opts,
    )


def _steps(mocks: Any) -> dict[str, Step]:
    steps = {
        r.name: Step(
            r.name,
            plain(r.inputs)["create"],
            plain(r.inputs).get("stdin", ""),
            tuple(plain(r.inputs).get("triggers") or ()),
            plain(r.inputs)["connection"].get("hostKey", ""),
        )
        for r in mocks.of_type(COMMAND_TYPE)
    }
    # Every step the tier runs as pulumi-command would: its connection pins a host key.
    for r in mocks.of_type(COMMAND_TYPE):
        assert plain(r.inputs["connection"]).get("hostKey"), f"{r.name}: no hostKey"
    return steps


@dataclass(frozen=True)
class HostResources:
    """What the program registers for an existing cache host (settings ``host``)."""

    settings: Settings
    steps: dict[str, Step]
    containers: dict[str, dict[str, Any]]
    image: str
    types: frozenset[str]  # every resource type registered

    def step(self, suffix: str) -> Step:
        [match] = [step for name, step in self.steps.items() if name.endswith(suffix)]
        return match


def capture_existing_host(settings: Settings) -> HostResources:
    """The cache half of the program for ``host`` mode, as components.program wires it: the
    prepare step (CacheHost), then the same RegistryMirrors (the CA, the caches, the front) and,
    with TLS, FrontSwitch as on the VM (no VM id: nothing to trigger on)."""
    from components.program import create_cache_host
    from components.settings import Secrets

    mocks = install_mocks()
    mocks.outputs_for[IMAGE_TYPE] = lambda args: {"imageId": args.inputs["name"]}

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        cache_host = create_cache_host(settings, Secrets(), "/run/vm-tier-agent.sock")
        mirrors = RegistryMirrors(
            "registry-mirrors", settings=settings, ssh=cache_host.ssh, ready=cache_host.ready
        )
        waits = [mirrors.mirrors, mirrors.maintenance.id, cache_host.ready.id]
        if settings.tls.enabled:
            # What runs after every node step (the tier has no node of the program's).
            switch = FrontSwitch(
                "registry-front-switch", settings=settings, ssh=cache_host.ssh, after=[mirrors]
            )
            waits += [switch.issue.id, switch.front.id]
        return pulumi.Output.all(*waits)

    program()
    [image] = mocks.of_type(IMAGE_TYPE)
    return HostResources(
        settings,
        _steps(mocks),
        {plain(r.inputs)["name"]: plain(r.inputs) for r in mocks.of_type(CONTAINER_TYPE)},
        plain(image.inputs)["name"],
        frozenset(r.type for r in mocks.resources),
    )


# --- pulumi-docker: docker.Container inputs -> Docker Engine API ContainerCreate --------------
# kreuzwerker/terraform-provider-docker resource_docker_container_funcs.go (what pulumi-docker
# wraps) builds a ContainerCreate request; `docker run` cannot express all of it (an exec-form
# health check, for one), so the tier sends the same request to the guest's Engine API.

_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")
# Inputs this translation understands; anything else fails the tier instead of being dropped.
_KNOWN = {
    "name", "image", "restart", "ports", "volumes", "memory", "memorySwap", "healthcheck",
    "logDriver",
    "logOpts", "labels", "envs", "mustRun", "command", "entrypoints", "stopTimeout",
    # The provider's own delete (the stop's grace before removal), not part of ContainerCreate.
    "destroyGraceSeconds",
}  # fmt: skip


class UnknownContainerInput(ValueError):
    pass


def _nanoseconds(duration: str) -> int:
    match = _DURATION.match(duration)
    if not duration or match is None:
        raise ValueError(f"not a Go duration the tier understands: {duration!r}")
    hours, minutes, seconds = match.groups()
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    return int(total * 1_000_000_000)


def engine_create_body(inputs: Mapping[str, Any], image_id: str) -> dict[str, Any]:
    """The ContainerCreate body pulumi-docker sends for these inputs (``image_id``: what the
    RemoteImage resolved to on the VM)."""
    unknown = set(inputs) - _KNOWN
    if unknown:
        raise UnknownContainerInput(
            f"docker.Container inputs the VM tier does not translate yet: {sorted(unknown)}"
        )
    exposed: dict[str, dict] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for port in inputs.get("ports", []):
        key = f"{int(port['internal'])}/{port.get('protocol', 'tcp')}"
        exposed[key] = {}
        bindings.setdefault(key, []).append(
            {"HostIp": port.get("ip", "0.0.0.0"), "HostPort": str(int(port["external"]))}
        )
    binds = [
        f"{v['hostPath']}:{v['containerPath']}" + (":ro" if v.get("readOnly") else "")
        for v in inputs.get("volumes", [])
    ]
    host_config: dict[str, Any] = {
        "Binds": binds,
        "PortBindings": bindings,
        "RestartPolicy": {"Name": inputs.get("restart", "no")},
    }
    if "memory" in inputs:
        host_config["Memory"] = int(inputs["memory"]) * 1024 * 1024
    if "memorySwap" in inputs:  # MB, or -1 (unlimited swap), as the provider passes it
        swap = int(inputs["memorySwap"])
        host_config["MemorySwap"] = swap * 1024 * 1024 if swap > 0 else swap
    if "logDriver" in inputs:
        host_config["LogConfig"] = {
            "Type": inputs["logDriver"],
            "Config": dict(inputs.get("logOpts", {})),
        }
    body: dict[str, Any] = {
        "Image": image_id,
        "Env": list(inputs.get("envs", [])),
        "Labels": {entry["label"]: entry["value"] for entry in inputs.get("labels", [])},
        "ExposedPorts": exposed,
        "HostConfig": host_config,
    }
    if "stopTimeout" in inputs:
        body["StopTimeout"] = int(inputs["stopTimeout"])
    if "command" in inputs:
        body["Cmd"] = list(inputs["command"])
    if "entrypoints" in inputs:
        body["Entrypoint"] = list(inputs["entrypoints"])
    health = inputs.get("healthcheck")
    if health:
        body["Healthcheck"] = {
            "Test": list(health["tests"]),
            "Interval": _nanoseconds(health.get("interval", "0s")),
            "Timeout": _nanoseconds(health.get("timeout", "0s")),
            "StartPeriod": _nanoseconds(health.get("startPeriod", "0s")),
            "Retries": int(health.get("retries", 0)),
        }
    return body


# --- the tier's stack settings ------------------------------------------------------------------

TIER_DNS = "10.0.20.3"  # QEMU user-mode DNS (forwards to this host's resolver)
# The wait step's own limit (vm.cloudInitTimeoutSeconds) in the tier. The stack's 900 s is for a
# real VM; the tier's first boot installs docker.io on an emulated CPU (TCG) on a shared 2-core
# machine, where dpkg alone was seen still configuring packages at 960 s (load average ~10).
# boot.READY_TIMEOUT, the SSH call's limit, is a minute longer: the step reports its own reason.
TIER_CLOUD_INIT_TIMEOUT = 1500


def tier_settings(
    public_key: str,
    upstream_url: str,
    *,
    stack: str = "dev",
    node_view: tuple[str, str] | None = None,
    tls_ip_addresses: tuple[str, ...] = (),
) -> Settings:
    """``stacks/Pulumi.<stack>.yaml`` as the tier runs it. Only what cannot be real here changes:
    the SSH key (the tier's own), the DNS server (QEMU's), the cloud-init wait's limit (an
    emulated guest's first boot), every upstream's ``server`` (a stand-in registry on this host,
    reached from the guest through the lab gateway address) and the nodes (none: the tier's test
    node is not the program's to configure). ``node_view`` = (the host end,
    the node end) of a test node's veth: the VM as that node reaches it (forwarded to the guest),
    for rendering the node's hosts.toml; ``tls_ip_addresses``: that address in the certificate."""
    from components.settings import DEFAULT_UPSTREAMS, load_settings
    from components.stack_file import read_stack_file, stack_path

    raw = read_stack_file(stack_path(stack)).values
    raw["vm"]["sshPublicKeys"] = [public_key]
    raw["vm"]["dnsServers"] = [TIER_DNS]
    raw["vm"]["cloudInitTimeoutSeconds"] = TIER_CLOUD_INIT_TIMEOUT
    if node_view is not None:
        raw["vm"]["address"] = f"{node_view[0]}/30"
        raw["vm"]["gateway"] = node_view[1]
    upstreams = raw.get("upstreams") or [
        u.model_dump(by_alias=True, exclude_none=True) for u in DEFAULT_UPSTREAMS
    ]
    raw["upstreams"] = [{**u, "server": upstream_url} for u in upstreams]
    raw["nodes"] = []
    if tls_ip_addresses:
        # The address a test node dials for the VM (forwarded to the guest) in its certificate.
        raw["tls"] = {**raw.get("tls", {}), "ipAddresses": list(tls_ip_addresses)}
    return load_settings(raw)


def existing_host_settings(
    upstream_url: str, address: str, user: str, host_public_key: str
) -> Settings:
    """``stacks/Pulumi.dev.yaml`` turned into ``host`` mode: no proxmox, no vm, the guest as an
    existing host (its own host key pinned); upstreams as in ``tier_settings``."""
    from components.settings import DEFAULT_UPSTREAMS, load_settings
    from components.stack_file import read_stack_file, stack_path

    raw = read_stack_file(stack_path("dev")).values
    disk_gb = raw["vm"].get("diskGb", 100)
    del raw["proxmox"], raw["vm"]
    raw["host"] = {
        "address": address,
        "sshUser": user,
        "sshHostPublicKey": host_public_key,
        "diskGb": disk_gb,
    }
    upstreams = raw.get("upstreams") or [
        u.model_dump(by_alias=True, exclude_none=True) for u in DEFAULT_UPSTREAMS
    ]
    raw["upstreams"] = [{**u, "server": upstream_url} for u in upstreams]
    raw["nodes"] = []
    return load_settings(raw)
