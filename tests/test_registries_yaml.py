from __future__ import annotations

import yaml

from components.renderers.registries_yaml import render_registries_yaml
from tests.sample import sample_settings


def test_one_mirror_per_upstream_no_wildcard():
    data = yaml.safe_load(render_registries_yaml(sample_settings()))
    assert data == {
        "mirrors": {
            "docker.io": {"endpoint": ["http://10.0.20.10:5000"]},
            "ghcr.io": {"endpoint": ["http://10.0.20.10:5010"]},
            "quay.io": {"endpoint": ["http://10.0.20.10:5020"]},
            "registry.k8s.io": {"endpoint": ["http://10.0.20.10:5030"]},
            "reg.kyverno.io": {"endpoint": ["http://10.0.20.10:5040"]},
        }
    }
