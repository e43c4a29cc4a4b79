"""The project's own files as the CLI reads them: a copy of Pulumi.yaml and stacks/ per test.

The copy matters: creating a stack on a passphrase backend writes its salt into the stack file,
and a test edits the stack file to make a mistake on purpose. The repository's files are never
written.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.engine.inline import EngineStack
from tests.engine.toolchain import ROOT, Toolchain

PROJECT = "registry-mirrors"
TOKEN = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"


def copy_project(tmp_path: Path) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    shutil.copy2(ROOT / "Pulumi.yaml", work / "Pulumi.yaml")
    shutil.copytree(ROOT / "stacks", work / "stacks")
    return work


def stack_file(work: Path, stack: str) -> Path:
    return work / "stacks" / f"Pulumi.{stack}.yaml"


def repo_stack_config(stack: str) -> dict[str, Any]:
    """The committed stack file's ``config:`` (what the operator wrote)."""
    return yaml.safe_load((ROOT / "stacks" / f"Pulumi.{stack}.yaml").read_text())["config"]


def edit_stack_file(work: Path, stack: str, edit: Callable[[dict[str, Any]], None]) -> None:
    path = stack_file(work, stack)
    document = yaml.safe_load(path.read_text())
    edit(document["config"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def project_stack(
    engine: Toolchain,
    tmp_path: Path,
    stack: str,
    program: Callable[[], Any],
    *,
    token: str | None = TOKEN,
    work: Path | None = None,
    env: dict[str, str] | None = None,
) -> EngineStack:
    """Stack ``stack`` of the project, on a file backend, from a copy of the project's files,
    with the Proxmox token set as a secret the way the README says (``pulumi config set
    --secret``). The program runs inline (tests/engine/inline.py)."""
    work = work or copy_project(tmp_path)
    engine_stack = EngineStack.create(
        engine, tmp_path, stack, program, project=PROJECT, work_dir=work, env=env
    )
    if token is not None:
        engine_stack.set_config(
            {f"{PROJECT}:proxmoxApiToken": token}, (f"{PROJECT}:proxmoxApiToken",)
        )
    return engine_stack
