"""The consumer example reads this program's outputs through a StackReference (under mocks).

The StackReference's outputs are built by the same functions the program exports with, so a
change to the output shape that breaks consumers breaks this test.
"""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

import pulumi
import yaml

from components.renderers.bundle import containerd_export, mirrors_export, tls_export
from components.renderers.registries_yaml import render_registries_yaml
from tests.mocks import install_mocks
from tests.sample import sample_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster-consumer"


def _load_consumer():
    spec = importlib.util.spec_from_file_location("consumer", EXAMPLE / "consumer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["consumer"] = module
    spec.loader.exec_module(module)
    return module


CA = "-----BEGIN CERTIFICATE-----\nMIIB...test\n-----END CERTIFICATE-----\n"


def _stack_outputs() -> dict:
    settings = sample_settings()
    return {
        "mirrors": mirrors_export(settings),
        "containerd": containerd_export(settings, CA),
        "registriesYaml": render_registries_yaml(settings),
        "tls": tls_export(settings, CA),
    }


@pulumi.runtime.test
def test_consumer_bakes_hosts_toml_from_the_stack_reference():
    mocks = install_mocks(
        {"cluster-consumer:registryStack": "lab/registry-mirrors/prod"}, project="cluster-consumer"
    )
    mocks.outputs_for["pulumi:pulumi:StackReference"] = lambda args: {"outputs": _stack_outputs()}
    consumer = _load_consumer()
    exports = consumer.build()

    def check(values: list):
        text, endpoints, k3s_ca = values
        ref = mocks.of_type("pulumi:pulumi:StackReference")[0]
        assert ref.inputs["name"] == "lab/registry-mirrors/prod"
        assert text.startswith("#cloud-config\n")
        written = yaml.safe_load(text)["write_files"]
        files = {f["path"]: f["content"] for f in written}
        # The CA first: every hosts.toml names it.
        assert written[0]["path"] == "/etc/containerd/certs.d/registry-mirrors-ca.pem"
        assert files[written[0]["path"]] == CA
        docker = tomllib.loads(files["/etc/containerd/certs.d/docker.io/hosts.toml"])
        assert docker["server"] == "https://registry-1.docker.io"
        assert docker["host"]["https://10.0.20.10:5002"]["ca"] == [written[0]["path"]]
        assert len(files) == 6
        assert endpoints["ghcr.io"] == "https://10.0.20.10:5012"
        assert k3s_ca == {"path": "/etc/rancher/registry-mirrors-ca.pem", "pem": CA}

    return pulumi.Output.all(
        exports["nodeCloudInit"], exports["mirrorEndpoints"], exports["k3sCaFile"]
    ).apply(check)
