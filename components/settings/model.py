"""``Settings``: the sections of one stack together, and the checks that span sections
(the cache host's mode, addresses against the VM's subnet, ports and names that must be unique).

Two ways to have a cache host, one model: ``proxmox`` + ``vm`` (the default: the program creates
the VM) or ``host`` (an existing Debian/Ubuntu host the program prepares). Everything after the
host exists reads ``Settings.cache_host``, whichever mode."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from pydantic import Field, model_validator

from components.settings.budget import budget_problems
from components.settings.checks import _Model
from components.settings.containerd import ContainerdSettings
from components.settings.errors import SettingsError, key_text, shown
from components.settings.front import FrontSettings, TlsSettings
from components.settings.host import HostSettings
from components.settings.node_access import DEFAULT_READ_USER, NodeAccessSettings
from components.settings.nodes import Node
from components.settings.proxmox import ProxmoxSettings
from components.settings.registry import RegistrySettings
from components.settings.upstreams import (
    BACKEND_OFFSET,
    DEFAULT_UPSTREAMS,
    METRICS_OFFSET,
    TLS_OFFSET,
    Upstream,
)
from components.settings.vm import VmSettings


@dataclass(frozen=True)
class CacheHost:
    """Where the caches run: the VM's static address, or the existing host's."""

    address: str
    ssh_user: str
    disk_gb: int
    # True: the Proxmox VM the program creates (vm); False: an existing host (host).
    created: bool
    # The existing host's own key (always pinned); on the VM, the key it presents before the
    # program's own is installed (vm.sshHostPublicKey, usually unset).
    ssh_host_public_key: str | None


class Settings(_Model):
    """Everything one stack needs, except secrets."""

    proxmox: ProxmoxSettings | None = Field(
        default=None, description="The Proxmox VE API (with vm; not with host)."
    )
    vm: VmSettings | None = Field(
        default=None, description="The cache VM the program creates (with proxmox; not with host)."
    )
    host: HostSettings | None = Field(
        default=None,
        description="An existing cache host the program prepares instead (not with proxmox/vm).",
    )
    upstreams: list[Upstream] = Field(
        default_factory=lambda: list(DEFAULT_UPSTREAMS), min_length=1, description="Upstreams."
    )
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    nodes: list[Node] = Field(default_factory=list, description="Cluster nodes.")
    containerd: ContainerdSettings = Field(default_factory=ContainerdSettings)
    front: FrontSettings = Field(default_factory=FrontSettings)
    tls: TlsSettings = Field(default_factory=TlsSettings)
    node_access: NodeAccessSettings = Field(default_factory=NodeAccessSettings)

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems = _cross_problems(self.model_dump(by_alias=True))
        if problems:
            raise SettingsError(problems)
        return self

    @property
    def created_vm(self) -> VmSettings:
        """``vm``, where only the VM mode leads (the VM component, its firewall, their tests)."""
        if self.vm is None:
            raise ValueError("no vm section: this stack's caches run on host (an existing host)")
        return self.vm

    @property
    def proxmox_api(self) -> ProxmoxSettings:
        """``proxmox``, where only the VM mode leads."""
        if self.proxmox is None:
            raise ValueError("no proxmox section: this stack's caches run on host")
        return self.proxmox

    @property
    def cache_host(self) -> CacheHost:
        if self.host is not None:
            host = self.host
            return CacheHost(
                host.address, host.ssh_user, host.disk_gb, False, host.ssh_host_public_key
            )
        vm = self.vm
        assert vm is not None  # the cross checks made sure of one mode
        return CacheHost(vm.ip, vm.ssh_user, vm.disk_gb, True, vm.ssh_host_public_key)

    def endpoint(self, upstream: Upstream) -> str:
        """Where nodes pull this upstream from: the front's HTTPS port, or its plain one with
        TLS off."""
        if self.tls.enabled:
            return self.tls_endpoint(upstream)
        return self.plain_endpoint(upstream)

    def plain_endpoint(self, upstream: Upstream) -> str:
        return f"http://{self.cache_host.address}:{upstream.port}"

    def tls_endpoint(self, upstream: Upstream) -> str:
        return f"https://{self.cache_host.address}:{upstream.resolved_tls_port}"

    def metrics_url(self, upstream: Upstream) -> str:
        return f"http://{self.cache_host.address}:{upstream.resolved_metrics_port}/metrics"

    @property
    def allowed_cidrs(self) -> list[str]:
        if self.registry.allowed_cidrs is not None:
            return list(self.registry.allowed_cidrs)
        return [f"{node.address}/32" for node in self.nodes]


def _get(mapping: Any, key: str, default: Any = None) -> Any:
    """Read a camelCase key from raw config (or its snake_case twin) without trusting its type."""
    if not isinstance(mapping, Mapping):
        return default
    snake = re.sub(r"(?<!^)([A-Z])", r"_\\1", key).lower()
    return mapping.get(key, mapping.get(snake, default))


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):  # None, 'x', inf, nan, 5000 digits
        return None


def _cross_problems(raw: Mapping[str, Any]) -> list[str]:
    """Checks that span keys. Works on raw config so they run even when a field is invalid:
    the user sees every problem in one go."""
    problems: list[str] = _mode_problems(raw)
    vm = _get(raw, "vm", {})
    address = _get(vm, "address")
    interface = None
    if isinstance(address, str):
        try:
            interface = ipaddress.IPv4Interface(address)
        except ValueError:
            problems.append(
                f"vm.address: {shown(address)} is not an IPv4 address in CIDR form"
                " (expected e.g. 10.0.20.10/24)"
            )
    if interface is not None:
        network = interface.network
        if "/" not in address:
            problems.append(
                f"vm.address: {shown(address)} has no prefix (expected e.g. 10.0.20.10/24)"
            )
            interface = None
        elif network.prefixlen < 31 and interface.ip in (
            network.network_address,
            network.broadcast_address,
        ):
            kind = "network" if interface.ip == network.network_address else "broadcast"
            problems.append(f"vm.address: {shown(address)} is the {kind} address of {network}")
    gateway_raw = _get(vm, "gateway")
    if isinstance(gateway_raw, str):
        try:
            gateway = ipaddress.IPv4Address(gateway_raw)
        except ValueError:
            problems.append(f"vm.gateway: {shown(gateway_raw)} is not an IPv4 address")
        else:
            if interface is not None and gateway not in interface.network:
                problems.append(
                    f"vm.gateway: {shown(gateway_raw)} is outside the VM subnet {interface.network}"
                )
            elif interface is not None and gateway == interface.ip:
                problems.append(f"vm.gateway: {shown(gateway_raw)} is the VM's own address")
    if isinstance(vm, Mapping) and _get(raw, "vm") is not None:
        sources = [k for k in ("templateVmId", "cloudImage") if _get(vm, k) is not None]
        if len(sources) != 1:
            got = "neither" if not sources else "both"
            problems.append(f"vm: set exactly one source: templateVmId or cloudImage (got {got})")

    upstreams = _get(raw, "upstreams")
    if upstreams is None:
        upstreams = [u.model_dump(by_alias=True) for u in DEFAULT_UPSTREAMS]
    upstreams = [
        u if isinstance(u, Mapping) else {}
        for u in (upstreams if isinstance(upstreams, list) else [])
    ]
    problems += budget_problems(raw, upstreams)
    problems += _duplicates("upstreams", "host", [_get(u, "host") for u in upstreams])
    problems += _duplicates("upstreams", "container", [_get(u, "container") for u in upstreams])
    port_owner: dict[int, str] = {}
    tls_enabled = _get(_get(raw, "tls", {}), "enabled", True) is not False
    for index, upstream in enumerate(upstreams):
        port = _int_or_none(_get(upstream, "port"))
        # Every port the VM listens on for this cache: the front's plain (port) and HTTPS ones,
        # the registry's metrics, and the registry itself on loopback (a front port with the same
        # number would collide with it: the front listens on every address).
        derived = [("metricsPort", METRICS_OFFSET), ("backendPort", BACKEND_OFFSET)]
        if tls_enabled:
            derived.insert(1, ("tlsPort", TLS_OFFSET))
        fields: list[tuple[str, int | None]] = [("port", port)]
        for key, offset in derived:
            value = _int_or_none(_get(upstream, key))
            if value is None and port is not None and _get(upstream, key) is None:
                value = port + offset
                if not 1 <= value <= 65535:
                    problems.append(
                        f"upstreams[{index}].{key}: default port+{offset} = {value} is out of "
                        f"range (set {key})"
                    )
                    continue
            fields.append((key, value))
        for field, value in fields:
            if value is None or not 1 <= value <= 65535:
                continue
            if value == 22:
                problems.append(f"upstreams[{index}].{field}: {value} clashes with SSH on the VM")
            owner = port_owner.get(value)
            if owner is not None:
                problems.append(f"upstreams[{index}].{field}: {value} clashes with {owner}")
            else:
                port_owner[value] = (
                    f"upstreams[{index}].{field} ({key_text(_get(upstream, 'host'))})"
                )

    nodes = _get(raw, "nodes", [])
    nodes = [
        n if isinstance(n, Mapping) else {} for n in (nodes if isinstance(nodes, list) else [])
    ]
    problems += _duplicates("nodes", "name", [_get(n, "name") for n in nodes])
    problems += _duplicates("nodes", "address", [_get(n, "address") for n in nodes])
    if interface is not None:
        for index, node in enumerate(nodes):
            if _get(node, "address") == str(interface.ip):
                problems.append(
                    f"nodes[{index}].address: {shown(_get(node, 'address'))}"
                    " is the registry VM's own address"
                )
    host_address = _get(_get(raw, "host"), "address")
    if isinstance(host_address, str):
        for index, node in enumerate(nodes):
            if _get(node, "address") == host_address:
                problems.append(
                    f"nodes[{index}].address: {shown(host_address)} is the cache host's own address"
                )
    problems += _node_access_problems(raw, vm, nodes)
    return problems


def _node_access_problems(
    raw: Mapping[str, Any], vm: Any, nodes: list[Mapping[str, Any]]
) -> list[str]:
    """The read identity must be another user and another key than the apply identity's: the
    same user would give the read key a shell (its own authorized_keys line has no forced
    command), the same key would make every preview the apply identity again."""
    problems: list[str] = []
    access = _get(raw, "nodeAccess", {})
    read_user = _get(access, "readUser", DEFAULT_READ_USER)
    for index, node in enumerate(nodes):
        # root is refused by the field itself.
        if read_user != "root" and _get(node, "sshUser", "root") == read_user:
            problems.append(
                f"nodeAccess.readUser: {shown(read_user)} is nodes[{index}].sshUser, the apply "
                "identity; the read identity must be a user of its own"
            )
    read_keys = _get(access, "readPublicKeys", [])
    apply_keys = _get(vm, "sshPublicKeys", [])
    if isinstance(read_keys, list) and isinstance(apply_keys, list):
        apply_blobs = {_key_blob(key) for key in apply_keys} - {None}
        for index, key in enumerate(read_keys):
            if _key_blob(key) in apply_blobs:
                problems.append(
                    f"nodeAccess.readPublicKeys[{index}]: is also in vm.sshPublicKeys (the apply "
                    "key); the read identity needs a key of its own"
                )
    return problems


def _key_blob(key: Any) -> str | None:
    """The base64 part of a public key line (None when it is not one)."""
    parts = key.split() if isinstance(key, str) else []
    return parts[1] if len(parts) > 1 else None


def _mode_problems(raw: Mapping[str, Any]) -> list[str]:
    """Exactly one cache host: ``host``, or ``proxmox`` with ``vm``. One line, naming the key."""
    present = [key for key in ("host", "proxmox", "vm") if _get(raw, key) is not None]
    if "host" in present and len(present) > 1:
        others = " and ".join(key for key in present if key != "host")
        return [
            f"host: an existing cache host replaces the VM the program creates: remove {others} "
            "(or remove host to keep the Proxmox VM)"
        ]
    if "host" in present:
        return []
    if not present:
        return [
            "vm: required with proxmox (the cache VM the program creates), or set host "
            "(an existing cache host) instead"
        ]
    if "vm" not in present:
        return ["vm: required with proxmox (or replace proxmox with host: an existing cache host)"]
    if "proxmox" not in present:
        return ["proxmox: required with vm (or replace vm with host: an existing cache host)"]
    return []


def _duplicates(section: str, key: str, values: list[Any]) -> list[str]:
    seen: dict[Any, int] = {}
    problems = []
    for index, value in enumerate(values):
        if value is None or not isinstance(value, (str, int)):
            continue
        if value in seen:
            first = f"{section}[{seen[value]}].{key}"
            problems.append(f"{section}[{index}].{key}: {shown(value)} duplicates {first}")
        else:
            seen[value] = index
    return problems
