"""Read a stack file (``stacks/Pulumi.<stack>.yaml``) offline, for the scripts that review or
check a stack without the Pulumi CLI. Pure: no ``import pulumi``; secrets are never decrypted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

PROJECT = "registry-mirrors"
STACKS_DIR = Path(__file__).resolve().parent.parent / "stacks"


def stack_path(stack: str) -> Path:
    return STACKS_DIR / f"Pulumi.{stack}.yaml"


def stack_values(stack_file: Path) -> dict[str, Any]:
    """The project's keys of a stack file; other namespaces (e.g. ``proxmoxve:``) are skipped."""
    document = yaml.safe_load(stack_file.read_text()) or {}
    config = document.get("config") or {}
    prefix = f"{PROJECT}:"
    return {key[len(prefix) :]: value for key, value in config.items() if key.startswith(prefix)}
