"""Pulumi mocks shared by the component tests.

Field-notes rules applied: preview=False (otherwise unknown outputs make apply-asserts vacuous),
tests RETURN their Output, config is reset between tests, an event loop exists before set_mocks.

``MockResourceArgs`` carries neither parent nor dependencies, so ``install_mocks`` hands
``set_mocks`` (its ``monitor=`` parameter) a ``MockMonitor`` that lets ``RecordingMocks`` read them
from the register request itself: the fields the engine orders and nests resources by.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor


@dataclass
class Registered:
    type: str
    name: str
    inputs: dict[str, Any]
    # Logical name of the parent (the stack's, "<project>-test", for a top-level resource).
    parent: str | None
    # Names of the resources the engine creates this one after, sorted: its explicit
    # ``depends_on`` plus every resource one of its inputs came from (the register request does
    # not tell the two apart; a resource with only plain inputs has exactly its ``depends_on``).
    depends_on: list[str] = field(default_factory=list)
    provider: str | None = None


def _urn_name(urn: str) -> str:
    """The logical name a URN ends with."""
    return urn.rsplit("::", 1)[-1]


class _RequestMonitor(MockMonitor):
    """Keeps the request being answered visible to ``new_resource``.

    Register and read requests both carry ``parent`` and ``dependencies``. The SDK sends them on
    executor threads and the monitor calls ``new_resource`` synchronously, so the request is kept
    per thread.
    """

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.current = threading.local()

    def _answer(self, answer: Callable[[Any], Any], request: Any) -> Any:
        self.current.request = request
        try:
            return answer(request)
        finally:
            self.current.request = None

    # The gRPC methods' names.
    def RegisterResource(self, request: Any) -> Any:
        return self._answer(super().RegisterResource, request)

    def ReadResource(self, request: Any) -> Any:
        return self._answer(super().ReadResource, request)


class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource; outputs = inputs plus what ``outputs_for[type]`` adds."""

    def __init__(self) -> None:
        self.resources: list[Registered] = []
        self.outputs_for: dict[
            str, Callable[[pulumi.runtime.MockResourceArgs], dict[str, Any]]
        ] = {}
        self.monitor = _RequestMonitor(self)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict]:
        request = getattr(self.monitor.current, "request", None)
        if request is None:
            # Recording without the request would leave parent/depends_on silently empty.
            raise RuntimeError("RecordingMocks needs its own monitor: use install_mocks()")
        self.resources.append(
            Registered(
                type=args.typ,
                name=args.name,
                inputs=dict(args.inputs),
                parent=_urn_name(request.parent) if request.parent else None,
                depends_on=sorted({_urn_name(urn) for urn in request.dependencies}),
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
    preview: bool = False,
) -> RecordingMocks:
    """Fresh mocks. ``preview=True`` only for tests that prove a preview runs through (outputs
    the mocks do not return are unknown there, so asserts inside ``apply`` would never run)."""
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
    pulumi.runtime.set_mocks(
        mocks, project=project, stack="test", preview=preview, monitor=mocks.monitor
    )
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


# --- fake node outputs for ContainerdMirrors (what the node scripts would print) -------------

COMMAND = "command:remote:Command"
# A node in the broken state, with a credential that must never leak.
BROKEN = (
    "version = 2\n"
    '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
    '  endpoint = ["http://10.0.20.10:5000"]\n'
    '[plugins."io.containerd.grpc.v1.cri".registry.configs."private.example".auth]\n'
    '  password = "s3cret"\n'
)


def probe_stdout(text: str) -> str:
    return (
        "containerd_version=1.6.20\n"
        "config_file=/etc/containerd/config.toml\n"
        "config_exists=1\n"
        f"config_sha256={hashlib.sha256(text.encode()).hexdigest()}\n"
        "config_version=2\n"
        f"config_b64={base64.b64encode(text.encode()).decode()}\n"
    )


def fake_node_outputs(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    if args.name.endswith("-probe"):
        return {"stdout": probe_stdout(BROKEN), "stderr": ""}
    if args.name.endswith("-config"):
        return {
            "stdout": "changed=1\nbackup=/x\nrestarted=1\nrolled_back=0\n"
            "deprecations=io.containerd.deprecation/cri-registry-configs\n",
            "stderr": "",
        }
    return {"stdout": "changed=1\n", "stderr": ""}
