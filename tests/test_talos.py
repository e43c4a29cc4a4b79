"""The Talos machine-config patch: the same mirrors as registriesYaml, in Talos's shape."""

from __future__ import annotations

import base64

import yaml

from components.renderers.registries_yaml import render_registries_yaml
from components.renderers.talos import CA_PLACEHOLDER, render_talos_patch
from tests.sample import sample_settings


def test_patch_has_one_mirror_per_upstream_with_fallback_left_on():
    settings = sample_settings()
    patch = yaml.safe_load(render_talos_patch(settings))
    assert list(patch) == ["machine"]
    mirrors = patch["machine"]["registries"]["mirrors"]
    assert mirrors == {
        "docker.io": {"endpoints": ["https://10.0.20.10:5002"]},
        "ghcr.io": {"endpoints": ["https://10.0.20.10:5012"]},
        "quay.io": {"endpoints": ["https://10.0.20.10:5022"]},
        "registry.k8s.io": {"endpoints": ["https://10.0.20.10:5032"]},
        "reg.kyverno.io": {"endpoints": ["https://10.0.20.10:5042"]},
    }
    # Each cache trusts exactly the VM's CA (base64 of its PEM); offline, a placeholder says so.
    config = patch["machine"]["registries"]["config"]
    assert set(config) == {f"10.0.20.10:{u.resolved_tls_port}" for u in settings.upstreams}
    assert config["10.0.20.10:5002"] == {"tls": {"ca": CA_PLACEHOLDER}}
    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with_ca = yaml.safe_load(render_talos_patch(settings, pem))["machine"]["registries"]["config"]
    assert base64.b64decode(with_ca["10.0.20.10:5012"]["tls"]["ca"]).decode() == pem
    assert "insecureSkipVerify" not in render_talos_patch(settings, pem)
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
