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
from components.renderers.front_proxy import front_files, settings_front
from components.renderers.hosts_toml import render_node_hosts
from components.renderers.registries_yaml import render_registries_yaml
from components.renderers.registry_config import registry_summary, render_registry_files
from components.renderers.talos import render_talos_patch
from components.renderers.tls import RANCHER_CA_FILE, containerd_ca_file, subject_alt_names
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
                "tls_port": upstream.resolved_tls_port if settings.tls.enabled else None,
                "backend_port": upstream.resolved_backend_port,
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
    """Stack output ``mirrors``: per upstream host, where its cache is (``endpoint``: what nodes
    pull from, https:// with TLS on; ``port``: the plain port; ``tlsPort``: null with TLS off)."""
    return {
        upstream.host: {
            "endpoint": settings.endpoint(upstream),
            "port": upstream.port,
            "tlsPort": upstream.resolved_tls_port if settings.tls.enabled else None,
            "container": upstream.container,
            "metricsUrl": settings.metrics_url(upstream),
            "server": upstream.resolved_server,
        }
        for upstream in settings.upstreams
    }


def containerd_export(settings: Settings, ca_pem: str | None = None) -> dict:
    """Stack output ``containerd``: the files a new node needs, so another stack can bake them
    into its cloud-init. No dial_timeout: the files must load on every containerd version. With
    TLS on, ``caFile`` is the CA file the hosts.toml files name, to be written beside them."""
    return {
        "configPath": settings.containerd.config_path,
        "hostsToml": render_node_hosts(settings),
        "caFile": {"path": containerd_ca_file(settings), "pem": ca_pem}
        if settings.tls.enabled
        else None,
    }


def tls_export(settings: Settings, ca_pem: str | None = None) -> dict:
    """Stack output ``tls``: the CA certificates every consumer must trust (public: the key
    stays on the VM) and what scripts/verify.py checks the served certificate against."""
    tls = settings.tls
    return {
        "enabled": tls.enabled,
        "caCertificates": ca_pem if tls.enabled else None,
        "subjectAltNames": subject_alt_names(settings) if tls.enabled else [],
        "expiryWarningDays": tls.expiry_warning_days,
        "plainHttp": tls.plain_http or not tls.enabled,
        "caFiles": {"containerd": containerd_ca_file(settings), "k3sRke2": RANCHER_CA_FILE}
        if tls.enabled
        else None,
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
    # The front as it serves once every node is switched (until then its plain ports serve too).
    # Beside the cache host's other files: registry-vm/ on the VM, cache-host/ on an existing host.
    host_dir = "registry-vm" if settings.vm is not None else "cache-host"
    front = settings_front(settings, serve_plain=settings.tls.plain_http)
    for path, text in front_files(front).items():
        files[f"{host_dir}/front/{path.rpartition('/')[2]}"] = text
    # What every node gets before its own mirrors are merged in (those need the node's probe).
    for directory, text in render_node_hosts(settings).items():
        files[f"nodes/certs.d/{directory}/hosts.toml"] = text
    return files
