"""The program's own config check (components/stack_config.py) under Pulumi mocks: every key of
the config is read, in every namespace; nothing is registered when one is wrong; and the lines
are the ones ``scripts/render.py`` prints for the same stack file, so the offline review says
what ``pulumi up`` will say."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml

from components import program
from tests.cli_harness import run
from tests.mocks import COMMAND, FakeFleet, fake_node_outputs, install_mocks
from tests.sample import sample_raw

TOKEN = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"
SECRET = "hunter2-s3cr3t"


@pytest.fixture(autouse=True)
def agent(monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/test-agent.sock")


def _registered(mocks) -> list:
    loop = asyncio.get_event_loop()
    for _ in range(20):
        loop.run_until_complete(asyncio.sleep(0.01))
    return mocks.resources


def _program_problems(config: dict[str, Any], secret_keys: list[str]) -> list[str]:
    mocks = install_mocks(config, secret_keys)
    with pytest.raises(pulumi.RunError) as caught:
        program.run()
    assert _registered(mocks) == [], "a resource was registered before the config was checked"
    text = str(caught.value)
    assert text.startswith("invalid stack config (nothing was changed):\n")
    return [line.removeprefix("  ") for line in text.splitlines()[1:]]


def _render_problems(tmp_path: Path, config: dict[str, Any], secret_keys: list[str]) -> list[str]:
    """The same config as a stack file: secret keys hold ciphertext there."""
    stack = {k: {"secure": "v1:AAAA"} if k in secret_keys else v for k, v in config.items()}
    stack_file = tmp_path / "Pulumi.t.yaml"
    stack_file.write_text(yaml.safe_dump({"config": stack}))
    outcome = run("render", ["--stack-file", str(stack_file), "--out", str(tmp_path / "out")])
    assert outcome.code == 2, outcome
    return outcome.lines


def _config(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {f"registry-mirrors:{k}": v for k, v in sample_raw().items()}
    config["registry-mirrors:proxmoxApiToken"] = TOKEN
    return config | extra


def _raw(**changes: Any) -> dict[str, Any]:
    raw = sample_raw()
    for section, value in changes.items():
        raw[section] = value
    return {f"registry-mirrors:{k}": v for k, v in raw.items()}


SECRET_KEYS = ["registry-mirrors:proxmoxApiToken"]
# (id, config, secret keys, a line that must be there)
CASES: list[tuple[str, dict[str, Any], list[str], str]] = [
    (
        "namespace-typo",
        _config(**{"registry-mirror:containerd": {"batchSize": 3}}),
        SECRET_KEYS,
        "registry-mirror:containerd: unknown namespace registry-mirror"
        " (did you mean registry-mirrors:?)",
    ),
    (
        "other-program",
        _config(**{"aws:region": "eu-west-1"}),
        SECRET_KEYS,
        "aws:region: unknown namespace aws",
    ),
    (
        "secret-under-a-typo-namespace",
        _config(**{"registrymirrors:proxmoxApiToken": SECRET}),
        [*SECRET_KEYS, "registrymirrors:proxmoxApiToken"],
        "registrymirrors:proxmoxApiToken: unknown namespace",
    ),
    (
        "project-typo",
        _config(**{"registry-mirrors:upstream": []}),
        SECRET_KEYS,
        "upstream: unknown key (did you mean upstreams?)",
    ),
    (
        "credentials-plain",
        _config(
            **{
                "registry-mirrors:upstreamCredentials": {
                    "docker.io": {"username": "u", "password": SECRET}
                }
            }
        ),
        SECRET_KEYS,
        "upstreamCredentials: must be set as a secret",
    ),
    (
        "password-under-upstream",
        _config(
            **{
                "registry-mirrors:upstreams": [
                    {"host": "docker.io", "port": 5000, "container": "registry", "password": SECRET}
                ]
            }
        ),
        SECRET_KEYS,
        "upstreams[0].password: unknown key (typo?)",
    ),
    (
        "cron-out-of-range",
        _config(**{"registry-mirrors:registry": {"gc": {"dayOfWeek": 8}, "restart": {"hour": 25}}}),
        SECRET_KEYS,
        "registry.gc.dayOfWeek: 8 is out of range 0-7 (0 and 7 are Sunday) (got 8)",
    ),
    (
        "known-hosts-line",
        _raw(
            nodes=[
                {
                    "name": "n1",
                    "address": "10.0.20.21",
                    "sshHostPublicKey": "10.0.20.21 ssh-ed25519 AAAA",
                }
            ]
        )
        | {"registry-mirrors:proxmoxApiToken": TOKEN},
        SECRET_KEYS,
        "nodes[0].sshHostPublicKey: looks like a known_hosts line",
    ),
    (
        "huge-value",
        _config(**{"registry-mirrors:vm": {**sample_raw()["vm"], "name": "x" * 1_000_000}}),
        SECRET_KEYS,
        "vm.name: expected a DNS hostname",
    ),
]


@pytest.mark.parametrize(
    ("config", "secret_keys", "line"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_mistake_registers_nothing_and_is_named(config: dict, secret_keys: list, line: str):
    problems = _program_problems(config, secret_keys)
    assert any(p.startswith(line) for p in problems), problems
    for problem in problems:
        assert SECRET not in problem and TOKEN not in problem
        assert len(problem) < 500, problem[:200]


@pytest.mark.parametrize(
    ("config", "secret_keys"),
    [(c[1], c[2]) for c in CASES if "must be set as a secret" not in c[3]],
    ids=[c[0] for c in CASES if "must be set as a secret" not in c[3]],
)
def test_render_says_what_pulumi_up_says(tmp_path: Path, config: dict, secret_keys: list):
    assert _render_problems(tmp_path, config, secret_keys) == _program_problems(config, secret_keys)


def test_a_plain_secret_is_refused_by_both_in_the_same_words(tmp_path: Path):
    config = _config()
    program_lines = _program_problems(config, [])
    stack_file = tmp_path / "Pulumi.t.yaml"
    stack_file.write_text(yaml.safe_dump({"config": config}))
    outcome = run("render", ["--stack-file", str(stack_file), "--out", str(tmp_path / "out")])
    line = (
        "proxmoxApiToken: must be set as a secret (pulumi config set --secret proxmoxApiToken ...)"
    )
    assert program_lines == outcome.lines == [line]


@pulumi.runtime.test
def test_provider_and_pulumi_namespaces_are_allowed():
    config = _config(
        **{
            "proxmoxve:endpoint": "https://elsewhere:8006/",
            "pulumi:tags": '{"team": "platform"}',
            "docker:host": "ssh://x",
            "command:unused": "1",
        }
    )
    mocks = install_mocks(config, SECRET_KEYS)
    mocks.outputs_for[COMMAND] = fake_node_outputs
    exports = program.run(runner=FakeFleet())
    return exports["registryVm"].apply(lambda vm: vm["vmId"] == 210 or pytest.fail(str(vm)))
