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
    # Input paths whose change makes the engine replace the resource (``replaceOnChanges``).
    replace_on_changes: list[str] = field(default_factory=list)
    # Alias specs as the SDK sends them: {"name", "type", "parentUrn", "noParent"} (empty = same).
    aliases: list[dict[str, Any]] = field(default_factory=list)
    urn: str = ""
    # Input paths the engine keeps from the state instead of the program (``ignoreChanges``).
    ignore_changes: list[str] = field(default_factory=list)
    # Outputs the engine stores and shows as secrets (``additionalSecretOutputs``).
    additional_secret_outputs: list[str] = field(default_factory=list)


def _urn_name(urn: str) -> str:
    """The logical name a URN ends with."""
    return urn.rsplit("::", 1)[-1]


def _alias_spec(alias: Any) -> dict[str, Any]:
    if alias.HasField("urn"):
        return {"urn": alias.urn}
    spec = alias.spec
    return {
        "name": spec.name,
        "type": spec.type,
        "parentUrn": spec.parentUrn,
        "noParent": spec.noParent,
    }


def _qualified_type(parent_urn: str, typ: str) -> str:
    """A URN's type part: the parent's qualified type, ``$``, the resource's own type."""
    chain = parent_urn.split("::")[2].split("$") if parent_urn else []
    # The engine leaves the root stack out of the type chain (the mock monitor's own URNs do not).
    chain = [part for part in chain if part != "pulumi:pulumi:Stack"]
    return "$".join([*chain, typ])


def urn_of(stack: str, project: str, parent_urn: str, typ: str, name: str) -> str:
    """The URN the engine gives a resource (and an alias spec, with its parentUrn)."""
    return f"urn:pulumi:{stack}::{project}::{_qualified_type(parent_urn, typ)}::{name}"


def _urn(request: Any, typ: str, name: str) -> str:
    return urn_of(pulumi.get_stack(), pulumi.get_project(), request.parent or "", typ, name)


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
                # Read requests (a StackReference) have neither.
                replace_on_changes=list(getattr(request, "replaceOnChanges", [])),
                aliases=[_alias_spec(alias) for alias in getattr(request, "aliases", [])],
                urn=_urn(request, args.typ, args.name),
                ignore_changes=list(getattr(request, "ignoreChanges", [])),
                additional_secret_outputs=list(getattr(request, "additionalSecretOutputs", [])),
            )
        )
        outputs = dict(args.inputs)
        if args.typ == STASH:
            # The engine's Create (pkg/resource/deploy/builtins.go): output = input.
            outputs["output"] = args.inputs.get("input")
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


STASH = "pulumi:index:Stash"

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


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _b64(text: str | None) -> str:
    return base64.b64encode(text.encode()).decode() if text else ""


def probe_stdout(
    text: str | None,
    *,
    original: str | None = None,
    applied_from: str | None = None,
    version: str = "1.6.20",
) -> str:
    """What scripts/node/probe.sh prints for a node with this config.toml (None: absent)."""
    exists = text is not None
    return (
        f"containerd_version={version}\n"
        "config_file=/etc/containerd/config.toml\n"
        f"config_exists={1 if exists else 0}\n"
        f"config_sha256={_sha(text) if text is not None else 'absent'}\n"
        f"config_version={2 if exists else ''}\n"
        f"config_b64={_b64(text)}\n"
        f"original_saved={1 if original is not None else 0}\n"
        f"original_b64={_b64(original)}\n"
        f"applied_from_sha256={applied_from or ''}\n"
    )


def k3s_probe_stdout(
    registries: str | None,
    *,
    applied_from: str | None = None,
    flavour: str = "k3s-server",
    version: str = "v2.0.5-k3s1",
) -> str:
    """What scripts/node/probe.sh prints for a k3s/RKE2 node with this registries.yaml."""
    from components.renderers.flavours import FLAVOURS

    row = FLAVOURS[flavour]
    return (
        f"flavour={flavour}\nflavour_candidates={flavour}\nunit={row.unit}\n"
        f"cri_socket={row.cri_socket}\nregistries_file={row.registries_file}\n"
        f"registries_exists={1 if registries is not None else 0}\n"
        f"registries_sha256={_sha(registries) if registries is not None else 'absent'}\n"
        f"registries_b64={_b64(registries)}\nregistries_original_saved=0\n"
        f"registries_applied_from_sha256={applied_from or ''}\n"
        f"hosts_dir={row.hosts_dir}\nctr={row.bin_dir}/ctr\ncontainerd_log={row.containerd_log}\n"
        f"distribution_binary=/usr/local/bin/k3s\ndistribution_version=k3s version v1.32\n"
        f"containerd_version={version}\nconfig_file=\nconfig_exists=0\nconfig_sha256=absent\n"
        "config_version=\nconfig_b64=\noriginal_saved=0\nmanaged_dirs=\n"
    )


def _guard(command: str) -> str:
    return command.split("EXPECTED_SHA256=", 1)[1].split("\n", 1)[0].strip("'")


def content_of(command: str, stdin: str) -> str:
    """What a step's script reads: its stdin after the script the loader reads off it."""
    from components.renderers.shell import LOADER_LENGTH

    found = LOADER_LENGTH.search(command)
    assert found, "not a command that reads its script from stdin"
    return stdin[int(found[1]) :]


@dataclass
class FakeNode:
    """A node as the program reads it (probe.sh's output), and what a successful apply does to it
    (a model of hosts.sh, apply-config.sh and registries.sh for mocks tests; the integration
    tests run the real scripts over SSH and check they behave so). ``flavour`` k3s-server etc.:
    ``config`` is its registries.yaml."""

    config: str | None = BROKEN
    version: str = "1.6.20"
    reachable: bool = True
    flavour: str = "containerd"
    original: str | None = None
    applied: tuple[str, str] | None = None  # (sha256 written, sha256 it was migrated from)
    hosts_stdin: str = ""
    probes: int = 0

    def probe(self) -> str:
        self.probes += 1
        current = _sha(self.config) if self.config is not None else "absent"
        applied_from = self.applied[1] if self.applied and self.applied[0] == current else None
        if self.flavour != "containerd":
            return k3s_probe_stdout(self.config, applied_from=applied_from, flavour=self.flavour)
        return probe_stdout(
            self.config, original=self.original, applied_from=applied_from, version=self.version
        )

    def apply(self, steps: dict[str, dict[str, Any]]) -> None:
        """What `pulumi up` does when the steps run (their inputs by role): hosts written; the
        config.toml (or registries.yaml) replaced when the text differs, the first original
        kept, the source recorded."""
        if "hosts" in steps:
            self.hosts_stdin = content_of(steps["hosts"]["create"], steps["hosts"]["stdin"])
        step = steps.get("config") or steps.get("registries")
        if step is None:
            return
        text = content_of(step["create"], step["stdin"])
        if text == self.config:
            return
        guard = _guard(step["create"])
        current = _sha(self.config) if self.config is not None else "absent"
        assert guard == current, "the node was edited since the probe: the script refuses"
        if self.original is None and self.config is not None:
            self.original = self.config
        self.config = text
        self.applied = (_sha(text), guard)


class FakeFleet:
    """A StepRunner (components/fleet.py) answering the probe from FakeNodes by node name; a node
    not listed is a fresh ``FakeNode()`` (the broken wildcard state, with a credential)."""

    def __init__(self, nodes: dict[str, FakeNode] | None = None) -> None:
        self.nodes = dict(nodes or {})
        self.lock = threading.Lock()

    def __call__(self, node: Any, step: Any) -> Any:
        from components.ssh_client import StepRun

        assert "probe.sh" in step.command, "only the probe runs while the program runs"
        with self.lock:
            fake = self.nodes.setdefault(node.name, FakeNode())
        if not fake.reachable:
            return StepRun(
                255, "", f"ssh: connect to host {node.address} port 22: No route to host"
            )
        return StepRun(0, fake.probe(), "")


def fake_node_outputs(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """What the node steps print on a first apply (config/registries changed and restarted)."""
    if args.name.endswith(("-config", "-registries")):
        return {
            "stdout": "changed=1\nbackup=/x\nrestarted=1\nrolled_back=0\n"
            "deprecations=io.containerd.deprecation/cri-registry-configs\n",
            "stderr": "",
        }
    return {"stdout": "changed=1\n", "stderr": ""}
