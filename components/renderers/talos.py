"""A Talos machine-config patch with our mirrors, for nodes the program cannot log into.

Talos has no SSH; its containerd is configured from the machine config. The v1alpha1 shape
(Talos docs, "Pull Through Image Cache" and the ``machine.registries`` reference):
``machine.registries.mirrors.<host>.endpoints`` is a list of URLs tried in order; the upstream
itself is tried after them unless ``skipFallback: true`` (we leave it unset: a dead cache must not
stop pulls); ``overridePath`` is for endpoints whose path already holds ``/v2`` (ours are bare
``http://IP:PORT``, Talos appends ``/v2`` itself). Talos v1.12+ also reads ``RegistryMirrorConfig``
documents; the ``machine.registries`` form is accepted by every supported release.

Apply it with ``talosctl patch machineconfig --nodes <node> --patch @talos-patch.yaml`` or pass it
to ``talosctl gen config --config-patch``; Talos applies registry changes without a reboot.
"""

from __future__ import annotations

import yaml

from components.renderers.registries_yaml import registries_yaml
from components.settings import Settings

HEADER = (
    "# Talos machine-config patch: talosctl patch machineconfig --patch @talos-patch.yaml\n"
    "# Each registry tries our cache first, then the upstream (skipFallback is left unset).\n"
)


def talos_patch(settings: Settings) -> dict:
    """The same mirrors as ``registries_yaml`` (one endpoint per upstream), Talos-shaped."""
    mirrors = registries_yaml(settings)["mirrors"]
    return {
        "machine": {
            "registries": {
                "mirrors": {
                    host: {"endpoints": list(entry["endpoint"])} for host, entry in mirrors.items()
                }
            }
        }
    }


def render_talos_patch(settings: Settings) -> str:
    return HEADER + yaml.safe_dump(talos_patch(settings), sort_keys=False)
