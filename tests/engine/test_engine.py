"""The real Pulumi engine (built by scripts/testenv/setup-pulumi.sh) on a local file backend.

Everything else Pulumi-side runs under mocks; these prove what mocks cannot: the CLI we build
is the pinned version and works offline on a file backend. No network: the backend is a
directory.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pulumi
import pytest

from tests.engine.inline import EngineStack
from tests.engine.toolchain import Toolchain, require
from tests.prereq import missing

pytestmark = pytest.mark.engine

PASSPHRASE = "engine-test-passphrase"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.lstrip("v").split("-")[0].split("."))


def _project(tmp_path: Path, name: str, program: str) -> tuple[Path, dict[str, str]]:
    """A Python project dir using this interpreter's virtualenv, and its backend environment."""
    if sys.prefix == sys.base_prefix:
        missing("the engine tests run a program with the project's virtualenv: run them from .venv")
    project = tmp_path / name
    project.mkdir()
    (project / "Pulumi.yaml").write_text(
        textwrap.dedent(
            f"""\
            name: {name}
            runtime:
              name: python
              options:
                toolchain: pip
                virtualenv: {sys.prefix}
            """
        )
    )
    (project / "__main__.py").write_text(textwrap.dedent(program))
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    env = {
        "PULUMI_BACKEND_URL": state.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
    }
    return project, env


def _ok(engine: Toolchain, args: list[str], project: Path, env: dict[str, str]) -> str:
    result = engine.run([*args, "--non-interactive"], cwd=project, env=env)
    assert result.returncode == 0, (
        f"pulumi {' '.join(args)} exited {result.returncode}\n"
        f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result.stdout


def test_cli_is_the_pinned_version_and_not_older_than_the_sdk(tmp_path: Path) -> None:
    engine = require()
    result = engine.run(["version"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"v{engine.cli_version}"
    sdk = importlib.metadata.version("pulumi")
    assert _version(engine.cli_version) >= _version(sdk), (
        f"CLI {engine.cli_version} is older than the pip SDK {sdk}"
    )


def test_stack_secrets_round_trip_on_a_file_backend(tmp_path: Path) -> None:
    """Stack and secret handling of the CLI alone (no language host): what `pulumi config set
    --secret` writes to a stack file is what the CLI reads back with the same passphrase."""
    engine = require()
    project, env = _project(tmp_path, "engine-config", "")
    _ok(engine, ["stack", "init", "test"], project, env)
    _ok(engine, ["config", "set", "--secret", "token", "s3cr3t-value"], project, env)
    stack_file = (project / "Pulumi.test.yaml").read_text()
    assert "s3cr3t-value" not in stack_file
    assert "secure:" in stack_file
    assert _ok(engine, ["config", "get", "token"], project, env).strip() == "s3cr3t-value"


def test_an_inline_program_runs_on_the_engine_with_no_language_host(tmp_path: Path) -> None:
    """How the engine tier runs the project's Python: ``pulumi.automation`` runs the program in
    this process and hands the CLI a ``--client`` address, so no ``pulumi-language-python`` is
    started. Proven with a CLI that has no language host beside it or on PATH; the control runs
    the same CLI on a Python project directory (``pulumi preview``), which needs one and fails."""
    engine = require()
    private = tmp_path / "cli"
    (private / "bin").mkdir(parents=True)
    try:
        os.link(engine.pulumi, private / "bin" / "pulumi")
    except OSError:
        shutil.copy2(engine.pulumi, private / "bin" / "pulumi")
    path = f"{private / 'bin'}:/usr/bin:/bin"
    assert shutil.which("pulumi-language-python", path=path) is None

    def program() -> None:
        gate = pulumi.Stash("gate", input={"batch": 0})
        pulumi.export(
            "child",
            pulumi.Stash("child", input="x", opts=pulumi.ResourceOptions(parent=gate)).output,
        )

    stack = EngineStack.create(
        engine, tmp_path, "inline", program, pulumi_root=private, env={"PATH": path}
    )
    log = stack.up()
    assert log.ops() == {"gate": "create", "child": "create"}
    assert stack.stack.outputs()["child"].value == "x"
    assert stack.stack.workspace.pulumi_command.command == str(private / "bin" / "pulumi")

    project, env = _project(tmp_path, "engine-no-host", "import pulumi\n")

    def private_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(private / "bin" / "pulumi"), *args, "--non-interactive"],
            cwd=project,
            env={**engine.env, **env, "PATH": path},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    assert private_cli("stack", "init", "control").returncode == 0
    control = private_cli("preview", "--stack", "control")
    assert control.returncode != 0
    assert "pulumi-language-python" in control.stdout + control.stderr, control.stderr[-2000:]
