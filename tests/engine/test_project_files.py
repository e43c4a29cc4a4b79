"""Pulumi.yaml and stacks/Pulumi.<stack>.yaml as the REAL CLI reads them.

Mocks never read these files (and do not apply Pulumi.yaml's schema or defaults). Here the CLI
does: ``stackConfigDir: stacks``, the typed ``config:`` schema (required keys, types, secrets,
defaults merged into the program's config), the passphrase secrets provider on a file backend.
The program that runs is the project's config loader (``components.stack_config.load``, what
``pulumi up`` runs first), so each stack's file is proven to reach the settings model intact. The
rest of the program is not run here: it would read the stacks' nodes (10.0.20.x, never contacted
from tests).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components import stack_config
from components.containerd_mirrors import rollout_batches
from tests.engine.project import (
    PROJECT,
    TOKEN,
    copy_project,
    edit_stack_file,
    project_stack,
    repo_stack_config,
)
from tests.engine.toolchain import require

pytestmark = pytest.mark.engine


def settings_program(ran: list[bool]) -> Callable[[], None]:
    def run() -> None:
        ran.append(True)
        settings = stack_config.load().settings
        pulumi.export("cacheHost", settings.cache_host.address)
        pulumi.export("upstreams", [u.host for u in settings.upstreams])
        pulumi.export("nodes", [n.address for n in settings.nodes])
        pulumi.export(
            "rollout",
            [
                [n.name for n in b]
                for b in rollout_batches(settings.nodes, settings.containerd.batch_size)
            ],
        )

    return run


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_the_cli_accepts_each_stack_and_the_program_reads_it_whole(
    stack: str, tmp_path: Path
) -> None:
    engine = require()
    ran: list[bool] = []
    engine_stack = project_stack(engine, tmp_path, stack, settings_program(ran))
    work = Path(engine_stack.stack.workspace.work_dir)

    # `pulumi config --json` reads stacks/Pulumi.<stack>.yaml (stackConfigDir): every key the
    # operator wrote, as written; the token encrypted and never shown.
    shown = engine.run(
        ["config", "--stack", stack, "--json"], cwd=work, env=engine_stack_env(engine_stack)
    )
    assert shown.returncode == 0, shown.stderr
    config = json.loads(shown.stdout)
    for key, value in repo_stack_config(stack).items():
        entry = config[key]
        assert entry.get("objectValue", entry.get("value")) == value, key
        assert entry["secret"] is False
    token = config[f"{PROJECT}:proxmoxApiToken"]
    assert token["secret"] is True
    assert TOKEN not in shown.stdout
    assert "encryptionsalt" in (work / "stacks" / f"Pulumi.{stack}.yaml").read_text()

    # `pulumi up`: the CLI's schema check passes (required keys, types, the secret), the
    # declared defaults are merged in, and the program's own validation accepts the result.
    engine_stack.up()
    assert ran == [True]
    written = repo_stack_config(stack)
    outputs = {key: value.value for key, value in engine_stack.stack.outputs().items()}
    vm = written[f"{PROJECT}:vm"]
    assert outputs["cacheHost"] == vm["address"].split("/")[0]
    assert outputs["nodes"] == [n["address"] for n in written[f"{PROJECT}:nodes"]]
    upstreams = written.get(f"{PROJECT}:upstreams")
    expected = [u["host"] for u in upstreams] if upstreams else [
        "docker.io", "ghcr.io", "quay.io", "registry.k8s.io", "reg.kyverno.io",
    ]  # fmt: skip
    assert outputs["upstreams"] == expected
    assert engine_stack.our_resources() == []


def engine_stack_env(engine_stack: Any) -> dict[str, str]:
    return dict(engine_stack.stack.workspace.env_vars)


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (
            lambda c: c.__setitem__(f"{PROJECT}:nodes", "k8s-dev-cp-1"),
            f"Stack 'dev' with configuration key '{PROJECT}:nodes' must be of type 'array<object>'",
        ),
    ],
    ids=["nodes-not-a-list"],
)
def test_the_cli_refuses_a_wrongly_typed_stack_before_the_program_runs(
    mistake: Callable[[dict[str, Any]], None], message: str, tmp_path: Path
) -> None:
    engine = require()
    ran: list[bool] = []
    work = copy_project(tmp_path)
    edit_stack_file(work, "dev", mistake)
    engine_stack = project_stack(engine, tmp_path, "dev", settings_program(ran), work=work)
    for verb in ("preview", "up"):
        failure = engine_stack.fails(verb)
        assert message in failure.text, failure.text[-2000:]
    assert ran == []
    assert engine_stack.our_resources() == []


@pytest.mark.parametrize(
    ("mistake", "message"),
    [
        (
            lambda c: c.__setitem__(f"{PROJECT}:vm", ["registry-dev"]),
            "vm: Input should be a valid dictionary",
        ),
        (
            lambda c: c.pop(f"{PROJECT}:vm"),
            "vm: required with proxmox (or replace proxmox with host: an existing cache host)",
        ),
        (
            lambda c: c.__setitem__(f"{PROJECT}:host", HOST),
            "host: an existing cache host replaces the VM the program creates: remove proxmox "
            "and vm",
        ),
    ],
    ids=["vm-not-an-object", "vm-missing", "host-beside-the-vm"],
)
def test_the_program_refuses_a_stack_without_exactly_one_cache_host(
    mistake: Callable[[dict[str, Any]], None], message: str, tmp_path: Path
) -> None:
    """The cache host is `proxmox` + `vm` OR `host`: the CLI cannot require either (Pulumi.yaml
    declares neither), so the program's first check names the key, before any resource."""
    engine = require()
    ran: list[bool] = []
    work = copy_project(tmp_path)
    edit_stack_file(work, "dev", mistake)
    engine_stack = project_stack(engine, tmp_path, "dev", settings_program(ran), work=work)
    for verb in ("preview", "up"):
        failure = engine_stack.fails(verb)
        assert message in failure.text, failure.text[-2000:]
    assert ran == [True, True]
    assert engine_stack.our_resources() == []


HOST = {
    "address": "10.0.30.5",
    "sshUser": "debian",
    "sshHostPublicKey": "ssh-ed25519 "
    "AAAAC3NzaC1lZDI1NTE5AAAAIHx0pNnkYbq8R0CkYb8bHf2nHXq0ZfT0Vb6fJp3cS2aD",
    "diskGb": 200,
}


def test_the_cli_accepts_an_existing_host_stack_without_proxmox_or_token(tmp_path: Path) -> None:
    """`host` mode through the real CLI: no proxmox, no vm, no proxmoxApiToken, and the
    program's settings read the host as the cache host."""
    engine = require()
    ran: list[bool] = []
    work = copy_project(tmp_path)

    def to_host(config: dict[str, Any]) -> None:
        del config[f"{PROJECT}:proxmox"], config[f"{PROJECT}:vm"]
        config[f"{PROJECT}:host"] = HOST

    edit_stack_file(work, "dev", to_host)
    engine_stack = project_stack(
        engine, tmp_path, "dev", settings_program(ran), work=work, token=None
    )
    engine_stack.up()
    assert ran == [True]
    outputs = {key: value.value for key, value in engine_stack.stack.outputs().items()}
    assert outputs["cacheHost"] == "10.0.30.5"
    assert engine_stack.our_resources() == []


def test_the_program_refuses_the_token_missing_or_in_plain_text(tmp_path: Path) -> None:
    engine = require()
    ran: list[bool] = []
    engine_stack = project_stack(engine, tmp_path, "dev", settings_program(ran), token=None)
    failure = engine_stack.fails("preview")
    assert "proxmoxApiToken: required secret is missing" in failure.text, failure.text[-2000:]
    engine_stack.set_config({f"{PROJECT}:proxmoxApiToken": "pulumi@pve!registry=plain"})
    failure = engine_stack.fails("preview")
    assert "proxmoxApiToken: must be set as a secret" in failure.text, failure.text[-2000:]
    assert "pulumi@pve!registry=plain" not in failure.text
    assert ran == [True, True]


def test_control_an_optional_key_declared_without_a_default_is_required(tmp_path: Path) -> None:
    """Why Pulumi.yaml declares `upstreams` nowhere: declared with a type and no default (as it
    once was), the CLI refuses every stack that relies on the default upstreams."""
    engine = require()
    work = copy_project(tmp_path)
    project = yaml.safe_load((work / "Pulumi.yaml").read_text())
    project["config"][f"{PROJECT}:upstreams"] = {"type": "array", "items": {"type": "object"}}
    (work / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    engine_stack = project_stack(engine, tmp_path, "dev", settings_program([]), work=work)
    failure = engine_stack.fails("preview")
    assert f"Stack 'dev' is missing configuration value '{PROJECT}:upstreams'" in failure.text
