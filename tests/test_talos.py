"""The Talos machine-config patch: the same mirrors as registriesYaml, in Talos's shape."""

from __future__ import annotations

import yaml

from components.renderers.registries_yaml import render_registries_yaml
from components.renderers.talos import render_talos_patch
from tests.sample import sample_settings


def test_patch_has_one_mirror_per_upstream_with_fallback_left_on():
    settings = sample_settings()
    patch = yaml.safe_load(render_talos_patch(settings))
    assert list(patch) == ["machine"]
    mirrors = patch["machine"]["registries"]["mirrors"]
    assert mirrors == {
        "docker.io": {"endpoints": ["http://10.0.20.10:5000"]},
        "ghcr.io": {"endpoints": ["http://10.0.20.10:5010"]},
        "quay.io": {"endpoints": ["http://10.0.20.10:5020"]},
        "registry.k8s.io": {"endpoints": ["http://10.0.20.10:5030"]},
        "reg.kyverno.io": {"endpoints": ["http://10.0.20.10:5040"]},
    }
    # No skipFallback (a dead cache must not stop pulls), no overridePath (Talos adds /v2), no
    # wildcard.
    text = render_talos_patch(settings)
    assert "skipFallback:" not in text and "overridePath" not in text and "'*'" not in text


def test_patch_and_registries_yaml_carry_the_same_mirrors():
    settings = sample_settings()
    talos = yaml.safe_load(render_talos_patch(settings))["machine"]["registries"]["mirrors"]
    k3s = yaml.safe_load(render_registries_yaml(settings))["mirrors"]
    assert {h: m["endpoints"] for h, m in talos.items()} == {
        h: m["endpoint"] for h, m in k3s.items()
    }
