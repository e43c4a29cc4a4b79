"""The entry point: a stack's config namespace in, validated ``Settings`` and ``Secrets`` out, or
``SettingsError`` with every problem at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from components.settings.errors import (
    SettingsError,
    _format_error,
    _location,
    key_text,
    unknown_key,
)
from components.settings.model import Settings, _cross_problems
from components.settings.schedule import gc_windows, restart_jobs
from components.settings.secrets import Secrets

SECTIONS = (
    "proxmox", "vm", "host", "upstreams", "registry", "nodes", "containerd", "front", "tls",
    "nodeAccess",
)  # fmt: skip
SECRET_KEYS = ("proxmoxApiToken", "upstreamCredentials")


def load_settings(raw: Mapping[str, Any]) -> Settings:
    """Validate the project's config namespace (keys without the ``project:`` prefix).

    Raises SettingsError with every problem at once, one per line, each naming its key.
    """
    known = [*SECTIONS, *SECRET_KEYS]
    problems = [f"{key_text(key)}: {unknown_key(key, known)}" for key in raw if key not in known]
    plain = {key: value for key, value in raw.items() if key in SECTIONS}
    try:
        settings = Settings.model_validate(plain)
    except ValidationError as error:
        problems += _format_error(error, Settings) + _cross_problems(plain)
        raise SettingsError(list(dict.fromkeys(problems))) from None
    problems += _schedule_problems(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def _schedule_problems(settings: Settings) -> list[str]:
    """GC and restart times must be plain times whose staggered slots never overlap; the slot
    layout the cron file is rendered from knows how slots fall, so ask it rather than repeat it."""
    try:
        gc_windows(settings)
        restart_jobs(settings)
    except ValueError as error:
        return [str(error)]
    return []


def load_secrets(raw: Mapping[str, Any], settings: Settings) -> Secrets:
    """Validate secret config. Messages never contain a secret value."""
    values = {key: raw[key] for key in SECRET_KEYS if key in raw}
    try:
        secrets = Secrets.model_validate(values)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            location = _location(tuple(item["loc"]))
            message = item["msg"].removeprefix("Value error, ")
            if item["type"] == "missing":
                message = "required secret is missing (pulumi config set --secret ...)"
            elif item["type"] == "extra_forbidden":
                message = unknown_key(item["loc"][-1], ["username", "password"])
            problems.append(f"{location}: {message}")  # never the value: it is a secret
        raise SettingsError(problems) from None
    if settings.proxmox is not None and secrets.proxmox_api_token is None:
        raise SettingsError(
            ["proxmoxApiToken: required secret is missing (pulumi config set --secret ...)"]
        )
    if settings.proxmox is None and secrets.proxmox_api_token is not None:
        raise SettingsError(
            ["proxmoxApiToken: not used with host (an existing cache host): remove it"]
        )
    hosts = {u.host for u in settings.upstreams}
    unknown = [
        f"upstreamCredentials.{key_text(host)}: no upstream with this host is configured"
        for host in secrets.upstream_credentials
        if host not in hosts
    ]
    if unknown:
        raise SettingsError(unknown)
    return secrets
