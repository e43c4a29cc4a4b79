"""Every file the program puts anywhere, rendered from settings alone (for review and tests).

``scripts/render.py`` writes this bundle; the components use the same renderers, so what a person
reviews is what ``pulumi up`` ships. Secrets are never part of it.
"""

from __future__ import annotations

import json

from components.renderers.cloud_init import (
    HOST_KEY_PLACEHOLDER,
    host_state,
    ipconfig0,
    render_host_manifest,
    render_vendor_data,
)
from components.renderers.hosts_toml import render_node_hosts
from components.renderers.registries_yaml import render_registries_yaml
from components.renderers.registry_config import registry_summary, render_registry_files
from components.renderers.talos import render_talos_patch
from components.settings import Settings


def summary(settings: Settings) -> dict:
    """Resolved settings without secrets (``summary.json``)."""
    vm = settings.vm
    cache_host: dict[str, dict] = (
        {
            "vm": {
                "name": vm.name,
                "vmId": vm.vm_id,
                "proxmoxNode": vm.proxmox_node,
                "address": vm.ip,
                "prefix": vm.prefix,
                "gateway": vm.gateway,
                "ipconfig0": ipconfig0(vm),
            }
        }
        if vm is not None
        else {
            "host": {
                "address": settings.cache_host.address,
                "sshUser": settings.cache_host.ssh_user,
            }
        }
    )
    return {
        **cache_host,
        "upstreams": [
            {
                "host": upstream.host,
                "container": upstream.container,
                "port": upstream.port,
                "metrics_port": upstream.resolved_metrics_port,
                "endpoint": settings.endpoint(upstream),
                "metrics": settings.metrics_url(upstream),
                "server": upstream.resolved_server,
            }
            for upstream in settings.upstreams
        ],
        "registry": registry_summary(settings.registry),
        "nodes": [
            {"name": node.name, "address": node.address, "skip_config_path": node.skip_config_path}
            for node in settings.nodes
        ],
        "containerd": {"config_path": settings.containerd.config_path},
    }


def mirrors_export(settings: Settings) -> dict[str, dict]:
    """Stack output ``mirrors``: per upstream host, where its cache is."""
    return {
        upstream.host: {
            "endpoint": settings.endpoint(upstream),
            "port": upstream.port,
            "container": upstream.container,
            "metricsUrl": settings.metrics_url(upstream),
            "server": upstream.resolved_server,
        }
        for upstream in settings.upstreams
    }


def containerd_export(settings: Settings) -> dict:
    """Stack output ``containerd``: the files a new node needs, so another stack can bake them
    into its cloud-init. No dial_timeout: the files must load on every containerd version."""
    return {
        "configPath": settings.containerd.config_path,
        "hostsToml": render_node_hosts(settings),
    }


def render_bundle(settings: Settings) -> dict[str, str]:
    """Relative path -> file text."""
    if settings.vm is not None:
        files = {
            "registry-vm/ipconfig0.txt": ipconfig0(settings.vm) + "\n",
            # The host key is made by `pulumi up` and kept secret: a placeholder stands in for it.
            "registry-vm/vendor-data.yaml": render_vendor_data(settings, HOST_KEY_PLACEHOLDER),
        }
    else:
        # What scripts/vm/prepare-host.sh gets on stdin (no secret in it: the host keeps its key).
        files = {
            "cache-host/prepare-host.manifest": render_host_manifest(
                host_state(settings, created=False)
            )
        }
    files |= {
        "summary.json": json.dumps(summary(settings), indent=2) + "\n",
        "nodes/registries.yaml": render_registries_yaml(settings),
        "nodes/talos-patch.yaml": render_talos_patch(settings),
    }
    files.update(render_registry_files(settings))
    # What every node gets before its own mirrors are merged in (those need the node's probe).
    for directory, text in render_node_hosts(settings).items():
        files[f"nodes/certs.d/{directory}/hosts.toml"] = text
    return files
