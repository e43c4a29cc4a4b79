"""Node flavours: plain containerd, or a distribution that runs its own containerd (k3s, RKE2).

Pure: no ``import pulumi``. One table, one code path: every difference between the flavours is a
value here (and ``scripts/node/probe.sh`` detects which row a node is; the e2e test checks that the
probe's paths and this table agree).

Why k3s and RKE2 differ from plain containerd (k3s docs "Private Registry Configuration", k3s
``pkg/agent/containerd/config.go``): they regenerate their containerd's ``config.toml`` and
``certs.d/<host>/hosts.toml`` from ``/etc/rancher/<dist>/registries.yaml`` on every start and
delete the certs.d directories they manage, so the only way in is registries.yaml followed by a
restart of the distribution's unit. Their containerd serves CRI on
``/run/k3s/containerd/containerd.sock`` (RKE2 too) and logs to a file, not to the journal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FlavourName = Literal["containerd", "k3s-server", "k3s-agent", "rke2-server", "rke2-agent"]
Role = Literal["control-plane", "worker"]
FLAVOUR_NAMES: tuple[FlavourName, ...] = (
    "containerd",
    "k3s-server",
    "k3s-agent",
    "rke2-server",
    "rke2-agent",
)
# probe.sh prints this when more than one distribution unit is enabled (a node set up as a server
# and then as an agent, say): the node setting ``flavour`` must then say which one is in use.
AMBIGUOUS = "ambiguous"


@dataclass(frozen=True)
class Flavour:
    name: FlavourName
    unit: str
    cri_socket: str
    # Only for the distributions (empty for plain containerd):
    registries_file: str = ""
    hosts_dir: str = ""  # where the distribution writes its generated <host>/hosts.toml
    bin_dir: str = ""  # its own containerd and ctr
    containerd_log: str = ""
    config_file: str = ""  # the containerd config.toml it generates at start
    # Servers run the control plane (API server, embedded etcd): restarted one at a time, before
    # the agents, and only done once healthy as a cluster member (components/plan/node_steps.py).
    role: Role = "worker"
    # The kubeconfig a server writes for root, pointing at its own API server (127.0.0.1:6443).
    kubeconfig: str = ""

    @property
    def is_distribution(self) -> bool:
        return self.name != "containerd"

    @property
    def restart_command(self) -> str:
        return f"systemctl restart {self.unit}"

    @property
    def health_command(self) -> str:
        """What a control-plane node of this flavour runs to tell it is healthy as a cluster
        member: its own API server's /readyz, which on k3s/RKE2 includes the embedded etcd's
        health (``[+]etcd ok``: a member that cannot reach a quorum fails it). The distributions'
        kubectl is a link to their multicall binary in ``bin_dir``. Plain containerd: kubeadm's
        layout (admin.conf), asked of the API server on this node (admin.conf may name a load
        balancer; the serving certificate always has the name ``kubernetes``)."""
        if self.is_distribution:
            return f"{self.bin_dir}/kubectl --kubeconfig {self.kubeconfig} get --raw /readyz"
        return (
            "kubectl --kubeconfig /etc/kubernetes/admin.conf --server https://127.0.0.1:6443 "
            "--tls-server-name kubernetes get --raw /readyz"
        )


def _distribution(name: FlavourName, unit: str, dist: str, bin_dir: str) -> Flavour:
    agent = f"/var/lib/rancher/{dist}/agent"
    server = name.endswith("-server")
    return Flavour(
        name=name,
        unit=unit,
        cri_socket="/run/k3s/containerd/containerd.sock",
        registries_file=f"/etc/rancher/{dist}/registries.yaml",
        hosts_dir=f"{agent}/etc/containerd/certs.d",
        bin_dir=bin_dir,
        containerd_log=f"{agent}/containerd/containerd.log",
        config_file=f"{agent}/etc/containerd/config.toml",
        role="control-plane" if server else "worker",
        kubeconfig=f"/etc/rancher/{dist}/{dist}.yaml" if server else "",
    )


# k3s unpacks its binaries into data/<hash>/bin and points data/current at the running set; RKE2
# links /var/lib/rancher/rke2/bin to the runtime image it extracted.
_K3S_BIN = "/var/lib/rancher/k3s/data/current/bin"
_RKE2_BIN = "/var/lib/rancher/rke2/bin"

FLAVOURS: dict[str, Flavour] = {
    "containerd": Flavour("containerd", "containerd", "/run/containerd/containerd.sock"),
    "k3s-server": _distribution("k3s-server", "k3s", "k3s", _K3S_BIN),
    "k3s-agent": _distribution("k3s-agent", "k3s-agent", "k3s", _K3S_BIN),
    "rke2-server": _distribution("rke2-server", "rke2-server", "rke2", _RKE2_BIN),
    "rke2-agent": _distribution("rke2-agent", "rke2-agent", "rke2", _RKE2_BIN),
}


class FlavourError(ValueError):
    """The node is not the flavour its settings say, or the probe cannot tell which it is."""


def resolve_flavour(
    detected: str, candidates: tuple[str, ...], forced: str | None, where: str
) -> Flavour:
    """The flavour to configure: what the probe detected, checked against the node setting.

    ``where`` names the node in the error (``node k3s-1 (10.0.20.21)``). A mismatch is an error
    naming both, never a silent choice: writing registries.yaml on a plain containerd node (or
    config.toml on a k3s node) changes nothing the runtime reads.
    """
    if detected == AMBIGUOUS:
        if forced is None:
            raise FlavourError(
                f"{where}: more than one distribution unit is enabled "
                f"({', '.join(candidates)}); set nodes[].flavour to the one in use"
            )
        if forced not in candidates:
            raise FlavourError(
                f"{where}: nodes[].flavour is {forced!r} but the node has "
                f"{', '.join(candidates)} enabled"
            )
        return FLAVOURS[forced]
    if detected not in FLAVOURS:
        raise FlavourError(f"{where}: probe.sh reported an unknown flavour {detected!r}")
    if forced is not None and forced != detected:
        raise FlavourError(
            f"{where}: nodes[].flavour is {forced!r} but the node is {detected!r} "
            "(by its enabled systemd units); fix the setting or the node"
        )
    return FLAVOURS[detected]
