"""Read the stack's config once, validate it with the settings model, and hand out plain values.

Every key under the project namespace is read here (unknown ones included, so a typo such as
``registry-mirrors:upstream`` is an error instead of being ignored). Secret values never appear
in an error message.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi.runtime import config as runtime_config

from components.settings import (
    SECRET_KEYS,
    Secrets,
    Settings,
    SettingsError,
    load_secrets,
    load_settings,
)


@dataclass(frozen=True)
class StackConfig:
    settings: Settings
    secrets: Secrets


def _namespace_values(project: str) -> dict[str, Any]:
    prefix = f"{project}:"
    keys = set(runtime_config.CONFIG.get()) | set(runtime_config.get_config_env())
    raw: dict[str, Any] = {}
    for full_key in sorted(keys):
        if not full_key.startswith(prefix):
            continue
        value = runtime_config.get_config(full_key)
        # Pulumi hands structured values to the program as JSON text.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        raw[full_key[len(prefix) :]] = value
    return raw


def load(project: str | None = None) -> StackConfig:
    """Validate everything; raise ``pulumi.RunError`` listing every problem, before any resource."""
    project = project or pulumi.get_project()
    raw = _namespace_values(project)
    problems: list[str] = []
    for key in SECRET_KEYS:
        if key in raw and not runtime_config.is_config_secret(f"{project}:{key}"):
            problems.append(
                f"{key}: must be set as a secret (pulumi config set --secret {key} ...)"
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
