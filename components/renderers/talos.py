"""A Talos machine-config patch with our mirrors, for nodes the program cannot log into.

Talos has no SSH; its containerd is configured from the machine config. The v1alpha1 shape
(Talos docs, "Pull Through Image Cache" and the ``machine.registries`` reference):
``machine.registries.mirrors.<host>.endpoints`` is a list of URLs tried in order; the upstream
itself is tried after them unless ``skipFallback: true`` (we leave it unset: a dead cache must not
stop pulls); ``overridePath`` is for endpoints whose path already holds ``/v2`` (ours are bare
``http://IP:PORT``, Talos appends ``/v2`` itself). Talos v1.12+ also reads ``RegistryMirrorConfig``
documents; the ``machine.registries`` form is accepted by every supported release. With TLS on,
``machine.registries.config."<ip>:<tls port>".tls.ca`` carries our CA (base64 of the PEM: Talos
keeps it in the machine config; it is public).

Apply it with ``talosctl patch machineconfig --nodes <node> --patch @talos-patch.yaml`` or pass it
to ``talosctl gen config --config-patch``; Talos applies registry changes without a reboot.
"""

from __future__ import annotations

import base64

import yaml

from components.renderers.registries_yaml import registries_yaml
from components.settings import Settings

HEADER = (
    "# Talos machine-config patch: talosctl patch machineconfig --patch @talos-patch.yaml\n"
    "# Each registry tries our cache first, then the upstream (skipFallback is left unset).\n"
)


# What an offline render (scripts/render.py) shows where the CA goes: only the VM knows it.
CA_PLACEHOLDER = "<base64 of the CA certificates: pulumi stack output tls>"


def talos_patch(settings: Settings, ca_pem: str | None = None) -> dict:
    """The same mirrors as ``registries_yaml`` (one endpoint per upstream), Talos-shaped; with
    TLS on, each cache trusts ``ca_pem`` (the placeholder when it is not known)."""
    data = registries_yaml(settings)
    registries: dict = {
        "mirrors": {
            host: {"endpoints": list(entry["endpoint"])} for host, entry in data["mirrors"].items()
        }
    }
    if settings.tls.enabled:
        ca = base64.b64encode(ca_pem.encode()).decode() if ca_pem else CA_PLACEHOLDER
        registries["config"] = {host: {"tls": {"ca": ca}} for host in data.get("configs", {})}
    return {"machine": {"registries": registries}}


def render_talos_patch(settings: Settings, ca_pem: str | None = None) -> str:
    return HEADER + yaml.safe_dump(talos_patch(settings, ca_pem), sort_keys=False)
