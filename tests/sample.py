"""A valid raw config (as it appears under the project namespace in a stack file) for tests."""

from __future__ import annotations

import copy
from typing import Any

from components.settings import Settings, load_settings

TEST_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0pNnkYbq8R0CkYb8bHf2nHXq0ZfT0Vb6fJp3cS2aD ops@example"
)

_RAW: dict[str, Any] = {
    "proxmox": {"endpoint": "https://pve.lan:8006/"},
    "vm": {
        "proxmoxNode": "pve",
        "vmId": 210,
        "name": "registry",
        "templateVmId": 9000,
        "address": "10.0.20.10/24",
        "gateway": "10.0.20.1",
        "dnsServers": ["10.0.20.1"],
        "vlan": 20,
        "sshPublicKeys": [TEST_KEY],
    },
    "nodes": [
        {"name": "k8s-cp-1", "address": "10.0.20.21"},
        {"name": "k8s-worker-1", "address": "10.0.20.31"},
        {"name": "k8s-worker-2", "address": "10.0.20.32"},
    ],
}


# One image per supported Distribution major: the tests that run or render for every major.
REGISTRY_IMAGES = {2: "registry:2.8.3", 3: "registry:3.1.1"}


def sample_raw() -> dict[str, Any]:
    return copy.deepcopy(_RAW)


def sample_settings() -> Settings:
    return load_settings(sample_raw())
