"""The same mirrors as a k3s/RKE2 ``registries.yaml``.

k3s and RKE2 own their containerd config: they regenerate certs.d from
``/etc/rancher/{k3s,rke2}/registries.yaml`` at start and delete custom files there, so on those
distributions this file is the way in. k3s tries the endpoints in order and then falls back to the
upstream itself, the same semantics as hosts.toml. No ``"*"`` entry: that is the bug being fixed.
"""

from __future__ import annotations

import yaml

from components.settings import Settings


def registries_yaml(settings: Settings) -> dict:
    return {
        "mirrors": {
            upstream.host: {"endpoint": [settings.endpoint(upstream)]}
            for upstream in settings.upstreams
        }
    }


def render_registries_yaml(settings: Settings) -> str:
    header = "# k3s/RKE2: /etc/rancher/k3s/registries.yaml or /etc/rancher/rke2/registries.yaml\n"
    return header + yaml.safe_dump(registries_yaml(settings), sort_keys=False)
