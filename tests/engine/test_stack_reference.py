"""examples/cluster-consumer reads a registry-mirrors stack through a REAL StackReference.

Two stacks on one file backend, each its own project and program, run by the real engine: the
producer is a stack of this project made from stacks/Pulumi.dev.yaml; the consumer is the
example's own ``consumer.build`` with the example's Pulumi.yaml.

Which producer outputs are the real program's: ``containerd``, ``registriesYaml``, ``talosPatch``
and ``tls`` are exported by ``components.program.rendered_exports``, the very function
``program.run`` exports them with (pure renderers over the settings and the CA certificates the
VM made; here a stand-in certificate text, as no VM made one). ``mirrors`` has the value
``program.run`` exports (``mirrors_export`` of the settings), but the program exports it only once
every cache container exists (pulumi-docker resources): here it is exported directly. The other
outputs (``registryVm``, ``nodes``, ``rollout``) need the VM, the caches or the nodes and are not
exported here; the consumer reads none of them.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pulumi
import pytest
import yaml

from components import stack_config
from components.program import rendered_exports
from components.renderers.bundle import mirrors_export
from tests.engine.inline import EngineStack
from tests.engine.project import PROJECT, project_stack
from tests.engine.toolchain import ROOT, require

pytestmark = pytest.mark.engine

EXAMPLE = ROOT / "examples" / "cluster-consumer"


def load_consumer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("consumer", EXAMPLE / "consumer.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["consumer"] = module
    spec.loader.exec_module(module)
    return module


# What the VM's trust step prints (public): only carried, never parsed, on this path.
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB...engine-test\n-----END CERTIFICATE-----\n"


def producer_program(exported: dict) -> Callable[[], None]:
    def run() -> None:
        settings = stack_config.load().settings
        outputs = {**rendered_exports(settings, CA_PEM), "mirrors": mirrors_export(settings)}
        exported.update(outputs)
        for key, value in outputs.items():
            pulumi.export(key, value)

    return run


def consumer_stack(engine, tmp_path: Path, backend: Path, reference: str) -> EngineStack:
    work = tmp_path / "consumer"
    work.mkdir(exist_ok=True)
    shutil.copy2(EXAMPLE / "Pulumi.yaml", work / "Pulumi.yaml")
    consumer = load_consumer()
    stack = EngineStack.create(
        engine,
        tmp_path,
        "lab",
        consumer.build,
        project="cluster-consumer",
        work_dir=work,
        backend=backend,
    )
    stack.set_config({"cluster-consumer:registryStack": reference})
    return stack


def test_the_consumer_reads_the_producer_stack_outputs(tmp_path: Path) -> None:
    engine = require()
    exported: dict = {}
    producer = project_stack(engine, tmp_path, "dev", producer_program(exported))
    producer.up()
    outputs = {key: value.value for key, value in producer.stack.outputs().items()}
    assert outputs == exported
    assert set(outputs) == {"containerd", "registriesYaml", "talosPatch", "tls", "mirrors"}

    consumer = consumer_stack(engine, tmp_path, producer.backend, f"organization/{PROJECT}/dev")
    consumer.up()
    read = {key: value.value for key, value in consumer.stack.outputs().items()}

    # The consumer's cloud-init fragment carries the CA file first (every hosts.toml names it),
    # then every hosts.toml the producer exported.
    assert read["nodeCloudInit"].startswith("#cloud-config\n")
    written_files = yaml.safe_load(read["nodeCloudInit"])["write_files"]
    files = {f["path"]: f for f in written_files}
    containerd = outputs["containerd"]
    ca_path = containerd["caFile"]["path"]
    assert written_files[0]["path"] == ca_path and files[ca_path]["content"] == CA_PEM
    assert set(files) == {ca_path} | {
        f"{containerd['configPath']}/{directory}/hosts.toml"
        for directory in containerd["hostsToml"]
    }
    for directory, text in containerd["hostsToml"].items():
        written = files[f"{containerd['configPath']}/{directory}/hosts.toml"]["content"]
        assert written == text
        assert tomllib.loads(written)["host"], directory
    assert read["registriesYaml"] == outputs["registriesYaml"]
    assert read["mirrorEndpoints"] == {
        host: mirror["endpoint"] for host, mirror in outputs["mirrors"].items()
    }
    assert read["mirrorEndpoints"]["docker.io"] == "https://10.0.20.10:5002"
    assert read["k3sCaFile"] == {"path": "/etc/rancher/registry-mirrors-ca.pem", "pem": CA_PEM}

    # The reference is a resource of the consumer's stack, pointing at the producer.
    (reference,) = [r for r in consumer.resources() if r["type"] == "pulumi:pulumi:StackReference"]
    assert reference["inputs"]["name"] == f"organization/{PROJECT}/dev"


def test_control_a_reference_to_a_stack_that_does_not_exist_fails(tmp_path: Path) -> None:
    engine = require()
    backend = tmp_path / "state"
    consumer = consumer_stack(engine, tmp_path, backend, f"organization/{PROJECT}/nowhere")
    failure = consumer.fails("preview")
    assert "nowhere" in failure.text
    assert consumer.our_resources() == []
