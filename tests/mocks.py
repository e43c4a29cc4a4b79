"""Pulumi mocks shared by the component tests.

Field-notes rules applied: preview=False (otherwise unknown outputs make apply-asserts vacuous),
tests RETURN their Output, config is reset between tests, an event loop exists before set_mocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    parent: str | None
    depends_on: list[str] = field(default_factory=list)
    provider: str | None = None


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource; outputs = inputs plus what ``outputs_for[type]`` adds."""

    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.outputs_for: dict[
            str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]
        ] = {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        self.resources.append(
            Registered(
                type=args.typ,
                name=args.name,
                inputs=dict(args.inputs),
                parent=None,
                provider=args.provider or None,
            )
        )
        outputs = dict(args.inputs)
        extra = self.outputs_for.get(args.typ)
        if extra is not None:
            outputs.update(extra(args))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list[tuple[str, str]] | None]:
        return {}, []

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.type == typ]

    def named(self, name: str) -> Registered:
        matches = [r for r in self.resources if r.name == name]
        assert len(matches) == 1, f"expected one resource named {name}, got {len(matches)}"
        return matches[0]


def install_mocks(
    config: dict[str, Any] | None = None,
    secret_keys: list[str] | None = None,
    project: str = "registry-mirrors",
) -> RecordingMocks:
    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    mocks = RecordingMocks()
    pulumi.runtime.set_all_config({}, [])
    if config:
        import json

        pulumi.runtime.set_all_config(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
            secret_keys or [],
        )
    pulumi.runtime.set_mocks(mocks, project=project, stack="test", preview=False)
    return mocks


# How a secret input reaches the mocks: {SECRET_SIG_KEY: SECRET_SIG, "value": ...}.
SECRET_SIG_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_SIG_KEY) == SECRET_SIG


def plain(value: Any) -> Any:
    """The value with every secret wrapper removed (recursively)."""
    if is_secret(value):
        return plain(value["value"])
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
