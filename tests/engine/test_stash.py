"""Engine semantics the program leans on, proven on the real engine with the built-in Stash.

- A value generated once and kept: ``Stash(input=Output.secret(fresh value), ignore_changes=
  ["input"], additional_secret_outputs=["input", "output"])`` keeps the FIRST value as its output
  and a new value on every run previews as no change. This is how the registry VM's SSH host key
  is to be persisted (issue 28): so also that the value is encrypted in the state file, survives
  ``up`` twice, and changes only on ``up --replace``.
- Aliases: a resource renamed with ``Alias(name=old)`` keeps its identity (no delete and create):
  what a node rename needs (issue 27).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path

import pulumi
import pytest

from tests.engine.inline import EngineStack
from tests.engine.toolchain import require
from tests.mocks import SECRET_SIG, SECRET_SIG_KEY

pytestmark = pytest.mark.engine

KEY = "registry-vm-host-key"


def host_key_program(ignore: bool = True) -> Callable[[], None]:
    """A fresh random value on every run, as a generated host key would be."""

    def run() -> None:
        fresh = "-----BEGIN OPENSSH PRIVATE KEY-----\n" + secrets.token_hex(32) + "\n-----END"
        key = pulumi.Stash(
            KEY,
            input=pulumi.Output.secret(fresh),
            opts=pulumi.ResourceOptions(
                ignore_changes=["input"] if ignore else None,
                additional_secret_outputs=["input", "output"],
            ),
        )
        pulumi.export("key", key.output)

    return run


def kept_value(stack: EngineStack) -> str:
    output = stack.stack.outputs()["key"]
    assert output.secret, "the kept value must stay a secret output"
    return output.value


def test_a_generated_secret_is_kept_encrypted_and_previews_as_no_change(tmp_path: Path) -> None:
    engine = require()
    stack = EngineStack.create(engine, tmp_path, "host-key", host_key_program())
    stack.up()
    first = kept_value(stack)
    assert first.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")

    # Encrypted at rest: the checkpoint holds ciphertext, never the value, and marks it secret.
    text = stack.state_file().read_text()
    assert first.splitlines()[1] not in text
    resources = json.loads(text)["checkpoint"]["latest"]["resources"]
    (kept,) = [r for r in resources if r["urn"].endswith(f"::{KEY}")]
    for value in (kept["inputs"]["input"], kept["outputs"]["input"], kept["outputs"]["output"]):
        assert value[SECRET_SIG_KEY] == SECRET_SIG and value["ciphertext"], value

    # Every later run makes another value: no change, and the first one stays.
    assert stack.preview(expect_no_changes=True).changed() == {}
    for _ in range(2):
        assert stack.up(expect_no_changes=True).changed() == {}
        assert kept_value(stack) == first

    # Rotation is an explicit act: --replace makes the Stash again from the run's new value.
    log = stack.up(replace=[stack.urn(KEY)])
    assert log.changed() == {KEY: "replace"}
    assert kept_value(stack) != first


def test_control_without_ignore_changes_every_run_shows_a_change(tmp_path: Path) -> None:
    """Without ``ignore_changes`` a fresh value previews as an update on every run (the noise
    the option removes); a Stash update still keeps the first output (builtins.go: Update copies
    the old output), which is why the value is safe either way."""
    engine = require()
    stack = EngineStack.create(engine, tmp_path, "noisy", host_key_program(ignore=False))
    stack.up()
    first = kept_value(stack)
    assert stack.preview().changed() == {KEY: "update"}
    assert stack.fails("preview", expect_no_changes=True)
    stack.up()
    assert kept_value(stack) == first


def renamed_program(name: str, aliases: list[str]) -> Callable[[], None]:
    def run() -> None:
        gate = pulumi.Stash("containerd-batch-0", input={"batch": 0})
        pulumi.Stash(
            f"containerd-{name}-config",
            input={"node": "10.0.30.1", "stdin": "config.toml text"},
            opts=pulumi.ResourceOptions(
                parent=gate,
                aliases=[pulumi.Alias(name=f"containerd-{old}-config") for old in aliases],
            ),
        )

    return run


def test_a_rename_with_an_alias_keeps_the_resource(tmp_path: Path) -> None:
    engine = require()
    stack = EngineStack.create(engine, tmp_path, "rename", renamed_program("worker-1", []))
    stack.up()
    before = stack.urn("containerd-worker-1-config")
    created_id = next(r["id"] for r in stack.resources() if r["urn"] == before)

    # CONTROL: the same rename without the alias is a delete and a create.
    control = stack.preview(program=renamed_program("worker-a", [])).changed()
    assert control == {
        "containerd-worker-a-config": "create",
        "containerd-worker-1-config": "delete",
    }

    log = stack.up(program=renamed_program("worker-a", ["worker-1"]))
    assert log.changed() == {}
    after = stack.urn("containerd-worker-a-config")
    assert after == before.replace("worker-1", "worker-a")
    # The same resource (its ID), now under the new name; the old URN is gone.
    assert next(r["id"] for r in stack.resources() if r["urn"] == after) == created_id
    assert not [r for r in stack.resources() if r["urn"] == before]
    # Once renamed, the alias can go.
    assert stack.preview(program=renamed_program("worker-a", [])).changed() == {}
