"""A valid raw config (as it appears under the project namespace in a stack file) for tests."""

from __future__ import annotations

import copy
from typing import Any

from components.settings import Settings, load_settings

TEST_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHx0pNnkYbq8R0CkYb8bHf2nHXq0ZfT0Vb6fJp3cS2aD ops@example"
)

# The nodes' pinned host keys (the program refuses an unpinned node): fixed, valid Ed25519 keys.
NODE_HOST_KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB7oq0Xx9ubPZzKS1dBd5rCkj9ES1r9o2oMuAe6YmQ3E",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbF8Wu1Hg0aQbMuqn4vvH1NZ1Bq2yq0Gk7iV8gXn5Cf",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1cVmZ2wSx4Y2oCdXh8fF0L8l0CkqT3Gm9nR7qs4HhP",
]

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
        {"name": "k8s-cp-1", "address": "10.0.20.21", "sshHostPublicKey": NODE_HOST_KEYS[0]},
        {"name": "k8s-worker-1", "address": "10.0.20.31", "sshHostPublicKey": NODE_HOST_KEYS[1]},
        {"name": "k8s-worker-2", "address": "10.0.20.32", "sshHostPublicKey": NODE_HOST_KEYS[2]},
    ],
}


# One image per supported Distribution major: the tests that run or render for every major.
REGISTRY_IMAGES = {2: "registry:2.8.3", 3: "registry:3.1.1"}


def sample_raw() -> dict[str, Any]:
    return copy.deepcopy(_RAW)


def sample_settings() -> Settings:
    return load_settings(sample_raw())
