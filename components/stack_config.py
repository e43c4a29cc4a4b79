"""Read the stack's config once, validate it with the settings model, and hand out plain values.

Every key of the config is read here, in every namespace: a key under a namespace this program
does not know (a typo such as ``registry-mirror:containerd``) and an unknown key under the
project's namespace (``registry-mirrors:upstream``) are errors instead of being ignored. The rules
are the offline reader's (``components.stack_file``), so ``scripts/render.py`` says what
``pulumi up`` says. Secret values never appear in an error message.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components.settings import (
    Secrets,
    Settings,
    SettingsError,
    load_secrets,
    load_settings,
)
from components.stack_file import plain_secret_problems, split_config


@dataclass(frozen=True)
class StackConfig:
    settings: Settings
    secrets: Secrets


def _config_values() -> dict[str, Any]:
    """Every config key the program was given, in every namespace."""
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    raw: dict[str, Any] = {}
    for full_key in sorted(keys):
        value = runtime_config.get_config(full_key)
        # Pulumi hands structured values to the program as JSON text.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        raw[full_key] = value
    return raw


def load(project: str | None = None) -> StackConfig:
    """Validate everything; raise ``pulumi.RunError`` listing every problem, before any resource."""
    project = project or pulumi.get_project()
    raw, problems = split_config(_config_values(), project)
    problems += plain_secret_problems(
        raw, lambda key: runtime_config.is_config_secret(f"{project}:{key}")
    )
    settings: Settings | None = None
    try:
        settings = load_settings(raw)
    except SettingsError as error:
        problems += error.problems
    secrets: Secrets | None = None
    if settings is not None:
        try:
            secrets = load_secrets(raw, settings)
        except SettingsError as error:
            problems += error.problems
    if problems or settings is None or secrets is None:
        raise pulumi.RunError(
            "invalid stack config (nothing was changed):\n" + "\n".join(f"  {p}" for p in problems)
        )
    return StackConfig(settings=settings, secrets=secrets)
