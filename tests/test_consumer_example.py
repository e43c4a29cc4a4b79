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

from components.renderers.bundle import containerd_export, mirrors_export
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


def _stack_outputs() -> dict:
    settings = sample_settings()
    return {
        "mirrors": mirrors_export(settings),
        "containerd": containerd_export(settings),
        "registriesYaml": render_registries_yaml(settings),
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
        text, endpoints = values
        ref = mocks.of_type("pulumi:pulumi:StackReference")[0]
        assert ref.inputs["name"] == "lab/registry-mirrors/prod"
        assert text.startswith("#cloud-config\n")
        files = {f["path"]: f["content"] for f in yaml.safe_load(text)["write_files"]}
        docker = tomllib.loads(files["/etc/containerd/certs.d/docker.io/hosts.toml"])
        assert docker["server"] == "https://registry-1.docker.io"
        assert "http://10.0.20.10:5000" in docker["host"]
        assert len(files) == 5
        assert endpoints["ghcr.io"] == "http://10.0.20.10:5010"

    return pulumi.Output.all(exports["nodeCloudInit"], exports["mirrorEndpoints"]).apply(check)
