"""Read the registry-mirrors stack's outputs and turn them into what a new node needs.

The outputs are a documented contract (README: Outputs): ``containerd.configPath``,
``containerd.hostsToml`` (directory -> file text) and ``containerd.caFile`` (the CA the hosts.toml
files trust, TLS on), ``registriesYaml`` and ``tls`` for k3s/RKE2, ``mirrors``.
"""

from __future__ import annotations

from typing import Any

import pulumi
import yaml


def write_files(containerd: dict[str, Any]) -> list[dict[str, str]]:
    """cloud-init ``write_files`` entries: the CA the caches' certificates come from (TLS on;
    written first: every hosts.toml names it), then one hosts.toml per upstream under
    configPath."""
    config_path = containerd["configPath"].rstrip("/")
    ca = containerd.get("caFile")
    files = []
    if ca:
        files.append({"path": ca["path"], "permissions": "0644", "content": ca["pem"]})
    files += [
        {"path": f"{config_path}/{directory}/hosts.toml", "permissions": "0644", "content": text}
        for directory, text in sorted(containerd["hostsToml"].items())
    ]
    return files


def cloud_init_fragment(containerd: dict[str, Any]) -> str:
    """A ``#cloud-config`` fragment for a new node (merge it into the node's user data).

    containerd must also be told to read that directory (config_path); on a fresh node the
    program's migration does it on its first run, or the image ships it.
    """
    return "#cloud-config\n" + yaml.safe_dump(
        {"write_files": write_files(containerd)}, sort_keys=False
    )


def build() -> dict[str, pulumi.Output[Any]]:
    config = pulumi.Config()
    registry = pulumi.StackReference(config.require("registryStack"))
    exports = {
        "nodeCloudInit": registry.require_output("containerd").apply(cloud_init_fragment),
        "registriesYaml": registry.require_output("registriesYaml"),
        # k3s/RKE2: registriesYaml names this file in configs.<cache>.tls.ca_file.
        "k3sCaFile": registry.require_output("tls").apply(
            lambda tls: (
                {"path": tls["caFiles"]["k3sRke2"], "pem": tls["caCertificates"]}
                if tls["enabled"]
                else None
            )
        ),
        "mirrorEndpoints": registry.require_output("mirrors").apply(
            lambda mirrors: {host: m["endpoint"] for host, m in mirrors.items()}
        ),
    }
    for name, value in exports.items():
        pulumi.export(name, value)
    return exports
