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
import collections
import dataclasses
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
    # Input paths the engine keeps from the state instead of the program (``ignoreChanges``;
    # step_generator.go processIgnoreChanges puts the state's values back before diffing).
    ignore_changes: list[str] = field(default_factory=list)
    # Outputs the engine stores and shows as secrets (``additionalSecretOutputs``).
    additional_secret_outputs: list[str] = field(default_factory=list)
    # The engine keeps the resource out of the provider's Delete (pkg/resource/deploy/step.go:
    # DeleteStep.Apply skips it when the OLD state says retainOnDelete).
    retain_on_delete: bool = False


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
                retain_on_delete=bool(getattr(request, "retainOnDelete", False)),
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


def _record_lines(
    prefix: str,
    record: tuple[str, str, str] | None,
    current_sha: str | None,
    also_left: bool = True,
) -> str:
    """probe.sh's <prefix>_applied_* lines for a record (sha256 left, guard sent, mark sent).
    ``also_left``: the other files the record lists (registries.sh's CA file) are as left."""
    if record is None:
        return f"{prefix}_applied_from_sha256=\n"
    lines = f"{prefix}_applied_record_sha256={_sha(' '.join(record) + chr(10))}\n"
    if record[0] == current_sha and also_left:
        return (
            lines + f"{prefix}_applied_from_sha256={record[1]}\n{prefix}_applied_mark={record[2]}\n"
        )
    return lines + f"{prefix}_applied_from_sha256=\n"


def probe_stdout(
    text: str | None,
    *,
    original: str | None = None,
    applied_from: str | None = None,
    applied: tuple[str, str, str] | None = None,
    hosts_record: str | None = None,
    hosts_mark: str | None = None,
    version: str = "1.6.20",
) -> str:
    """What scripts/node/probe.sh prints for a node with this config.toml (None: absent).
    ``applied``: the config's record (sha256 left, guard, mark); ``applied_from``: shorthand for a
    record of this very file with that guard and no mark. ``hosts_record``: the checksum of
    hosts.sh's record; ``hosts_mark``: its mark, when the files are as it left them."""
    exists = text is not None
    current = _sha(text) if text is not None else "absent"
    if applied_from is not None and applied is None and text is not None:
        applied = (current, applied_from, "")
    hosts = ""
    if hosts_record is not None:
        hosts += f"hosts_applied_record_sha256={hosts_record}\n"
    if hosts_mark is not None:
        hosts += f"hosts_applied_mark={hosts_mark}\n"
    return (
        f"containerd_version={version}\n"
        "config_file=/etc/containerd/config.toml\n"
        f"config_exists={1 if exists else 0}\n"
        f"config_sha256={current}\n"
        f"config_version={2 if exists else ''}\n"
        f"config_b64={_b64(text)}\n"
        f"original_saved={1 if original is not None else 0}\n"
        f"original_b64={_b64(original)}\n"
        + _record_lines("config", applied, current if exists else None)
        + hosts
    )


def k3s_probe_stdout(
    registries: str | None,
    *,
    applied: tuple[str, str, str] | None = None,
    flavour: str = "k3s-server",
    version: str = "v2.0.5-k3s1",
    also_left: bool = True,
) -> str:
    """What scripts/node/probe.sh prints for a k3s/RKE2 node with this registries.yaml."""
    from components.renderers.flavours import FLAVOURS

    row = FLAVOURS[flavour]
    current = _sha(registries) if registries is not None else None
    return (
        f"flavour={flavour}\nflavour_candidates={flavour}\nunit={row.unit}\n"
        f"cri_socket={row.cri_socket}\nregistries_file={row.registries_file}\n"
        f"registries_exists={1 if registries is not None else 0}\n"
        f"registries_sha256={current or 'absent'}\n"
        f"registries_b64={_b64(registries)}\nregistries_original_saved=0\n"
        + _record_lines("registries", applied, current, also_left)
        + f"hosts_dir={row.hosts_dir}\nctr={row.bin_dir}/ctr\ncontainerd_log={row.containerd_log}\n"
        f"distribution_binary=/usr/local/bin/k3s\ndistribution_version=k3s version v1.32\n"
        f"containerd_version={version}\nconfig_file=\nconfig_exists=0\nconfig_sha256=absent\n"
        "config_version=\nconfig_b64=\noriginal_saved=0\nmanaged_dirs=\n"
    )


def exported(command: str, name: str) -> str:
    """The value a step's command exports as ``name`` (as the script sees it)."""
    import shlex

    for line in command.splitlines():
        if line.startswith(f"export {name}="):
            return shlex.split(line.partition("=")[2])[0]
    raise AssertionError(f"the command exports no {name}")


def content_of(command: str, stdin: str) -> str:
    """What a step's script reads: its stdin after the script the loader reads off it."""
    from components.renderers.shell import LOADER_LENGTH

    found = LOADER_LENGTH.search(command)
    assert found, "not a command that reads its script from stdin"
    return stdin[int(found[1]) :]


def split_bundle(bundle: str) -> dict[str, str]:
    """hosts.sh's stdin as the files it writes ({dir: text})."""
    from components.plan.node_steps import HOSTS_HEADER

    files: dict[str, str] = {}
    current = None
    for line in bundle.splitlines(keepends=True):
        if line.startswith(HOSTS_HEADER):
            current = line[len(HOSTS_HEADER) :].strip().removesuffix("/hosts.toml")
            files[current] = ""
        elif current is not None:
            files[current] += line
    return files


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
    # The config's (registries.yaml's) record: (sha256 left, guard sent, mark sent).
    applied: tuple[str, str, str] | None = None
    # The hosts.toml files on the node ({dir: text}) and hosts.sh's record (mark, {dir: sha256}).
    hosts_files: dict[str, str] = field(default_factory=dict)
    hosts_record: tuple[str, dict[str, str]] | None = None
    # TLS on: the CA file a step wrote (the hosts step's or the registries step's), and its
    # sha256 in that step's record (hosts: under CA_RECORD_KEY in hosts_record).
    ca_file: str | None = None
    applied_ca: str | None = None
    probes: int = 0
    # With FakeFleet(read_access=...): whether this node has the read identity installed.
    read_installed: bool = True

    def probe(self) -> str:
        self.probes += 1
        if self.flavour != "containerd":
            ca_left = self.applied_ca is None or _sha(self.ca_file or "") == self.applied_ca
            return k3s_probe_stdout(
                self.config, applied=self.applied, flavour=self.flavour, also_left=ca_left
            )
        hosts_sha = hosts_mark = None
        if self.hosts_record is not None:
            mark, shas = self.hosts_record
            listed = "".join(f"{sha}  {d}/hosts.toml\n" for d, sha in shas.items())
            hosts_sha = _sha(f"mark {mark}\n{listed}")
            on_node = {**self.hosts_files, CA_RECORD_KEY: self.ca_file}
            if all(
                on_node.get(d) is not None and _sha(on_node[d] or "") == sha
                for d, sha in shas.items()
            ):
                hosts_mark = mark
        return probe_stdout(
            self.config,
            original=self.original,
            applied=self.applied,
            hosts_record=hosts_sha,
            hosts_mark=hosts_mark,
            version=self.version,
        )

    def apply(self, steps: dict[str, dict[str, Any]]) -> None:
        """What `pulumi up` does when the steps run (their inputs by role, secrets unwrapped):
        hosts written; the config.toml (or registries.yaml) replaced when the text differs, the
        first original kept; each records what it left and its mark. A CA section (TLS on) is
        written to the CA file first (lib.sh take_trust_section) and recorded with the step."""
        if "restore-config" in steps or "restore-hosts" in steps:
            self.restore()
            return
        if "hosts" in steps:
            hosts = steps["hosts"]
            ca, bundle = _split_trust(content_of(hosts["create"], hosts["stdin"]))
            files = split_bundle(bundle)
            self.hosts_files.update(files)
            self.ca_file = ca
            mark = exported(hosts["create"], "APPLY_MARK")
            shas = {d: _sha(text) for d, text in files.items()}
            if ca is not None:
                shas[CA_RECORD_KEY] = _sha(ca)
            self.hosts_record = (mark, shas)
        step = steps.get("config") or steps.get("registries")
        if step is None:
            return
        ca, text = _split_trust(content_of(step["create"], step["stdin"]))
        if "registries" in steps:
            self.ca_file = ca
            self.applied_ca = _sha(ca) if ca is not None else None
        guard = exported(step["create"], "EXPECTED_SHA256")
        mark = exported(step["create"], "APPLY_MARK")
        if text != self.config:
            current = _sha(self.config) if self.config is not None else "absent"
            assert guard == current, "the node was edited since the probe: the script refuses"
            if self.original is None and self.config is not None:
                self.original = self.config
            self.config = text
        self.applied = (_sha(text), guard, mark)

    def restore(self) -> None:
        """What restore.sh and hosts.sh REMOVE_ALL do: the original back, our files and the CA
        file gone."""
        if self.original is not None:
            self.config = self.original
        self.original = self.applied = self.hosts_record = None
        self.ca_file = self.applied_ca = None
        self.hosts_files = {}


# Where FakeNode keeps the CA file's sha256 in hosts.sh's record (hosts.sh lists it by path).
CA_RECORD_KEY = "<ca file>"


def _split_trust(content: str) -> tuple[str | None, str]:
    """(the CA certificates, the rest) of what a step's script reads: the CA section comes first
    (node_steps.trust_section), or there is none."""
    from components.plan.node_steps import CA_SECTION, CA_SECTION_END

    if not content.startswith(CA_SECTION + "\n"):
        return None, content
    ca, rest = content[len(CA_SECTION) + 1 :].split(CA_SECTION_END + "\n", 1)
    return ca, rest


class FakeFleet:
    """A StepRunner (components/fleet.py) answering the probe from FakeNodes by node name; a node
    not listed is a fresh ``FakeNode()`` (the broken wildcard state, with a credential).

    ``read_access``: the settings whose read identity is installed on every node (its gate
    answers ``probe`` as read-gate.sh does, with that install's digests); without, a login as
    any user but root is refused as sshd refuses a key it does not know. ``calls``: who asked
    what, in order: (node, user, command line)."""

    def __init__(self, nodes: dict[str, FakeNode] | None = None, read_access: Any = None) -> None:
        self.nodes = dict(nodes or {})
        self.lock = threading.Lock()
        # Reads tried per node name, answered or not.
        self.reads: collections.Counter[str] = collections.Counter()
        self.read_access = read_access
        self.calls: list[tuple[str, str, str]] = []

    def __call__(self, node: Any, step: Any) -> Any:
        from components.plan import read_access
        from components.ssh_client import StepRun

        with self.lock:
            fake = self.nodes.setdefault(node.name, FakeNode())
            self.reads[node.name] += 1
            self.calls.append((node.name, node.ssh_user, step.command))
        if not fake.reachable:
            return StepRun(
                255, "", f"ssh: connect to host {node.address} port 22: No route to host"
            )
        if node.ssh_user != "root":
            if self.read_access is None or not fake.read_installed:
                return StepRun(255, "", f"{node.ssh_user}@{node.address}: Permission denied "
                               "(publickey).")  # fmt: skip
            assert step.command == "probe", "the read identity asks for the probe by name"
            settings = self.read_access
            [planned] = [n for n in settings.nodes if n.name == node.name]
            header = (
                f"read_access=1 op=probe "
                f"scripts_sha256={read_access.expected_scripts_sha256('probe')} params_sha256="
                f"{read_access.expected_params_sha256(settings, planned, 'probe')}\n"
            )
            return StepRun(0, header + fake.probe(), "")
        assert "probe.sh" in step.command, "only the probe runs while the program runs"
        return StepRun(0, fake.probe(), "")


# What the VM's trust step prints (scripts/vm/registry-tls.sh trust): the CA certificate. A
# stand-in in PEM form; the mocks tests only carry it, real ones are made in the integration tests.
TEST_CA_PEM = (
    "-----BEGIN CERTIFICATE-----\n"
    "dGVzdCBDQSBmb3IgdGhlIG1vY2tzIHRlc3RzIG9ubHk=\n"
    "-----END CERTIFICATE-----\n"
)


def fake_node_outputs(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """What the node steps print on a first apply (config/registries changed and restarted), and
    the VM's trust step its CA certificate."""
    if args.name.endswith("-tls-trust"):
        return {"stdout": TEST_CA_PEM, "stderr": ""}
    if args.name.endswith(("-config", "-registries")):
        return {
            "stdout": "changed=1\nbackup=/x\nrestarted=1\nrolled_back=0\n"
            "deprecations=io.containerd.deprecation/cri-registry-configs\n",
            "stderr": "",
        }
    return {"stdout": "changed=1\n", "stderr": ""}


# --- what the engine does from one run's registrations to the next ------------------------------


@dataclass
class EnginePlan:
    """The node steps' fate from the state one run left to the next run, as the Pulumi engine
    decides it: a registered resource is the old one whose URN equals its URN or one of its
    aliases' (step_generator.go); its inputs, after ignoreChanges put the state's values back
    (processIgnoreChanges), decide same or update; an old one nobody claims is deleted."""

    creates: list[str]
    updates: list[str]
    sames: list[str]
    deletes: list[Registered]
    # The state after the run: each registered resource with the inputs the engine keeps (its
    # options as registered); what is deleted is gone.
    state: list[Registered] = field(default_factory=list)

    def deletes_that_run(self) -> list[str]:
        """Deleted steps whose delete runs anything on the node. None when the OLD state says
        retainOnDelete (step.go DeleteStep.Apply skips the provider), nor when it has no delete
        command (pulumi-command commandController.go Delete: `if props.Delete == nil` returns
        before dialling)."""
        return [
            old.name
            for old in self.deletes
            if not old.retain_on_delete and old.inputs.get("delete")
        ]


def _alias_urns(resource: Registered) -> list[str]:
    stack, project = pulumi.get_stack(), pulumi.get_project()
    return [
        alias["urn"]
        if "urn" in alias
        else urn_of(
            stack,
            project,
            alias["parentUrn"] or "",
            alias["type"] or resource.type,
            alias["name"] or resource.name,
        )
        for alias in resource.aliases
    ]


def engine_plan(
    before: list[Registered], after: list[Registered], typ: str = COMMAND
) -> EnginePlan:
    old = {r.urn: r for r in before if r.type == typ}
    claimed: set[str] = set()
    plan = EnginePlan([], [], [], [])
    for new in (r for r in after if r.type == typ):
        hit = next((u for u in [new.urn, *_alias_urns(new)] if u in old and u not in claimed), None)
        if hit is None:
            plan.creates.append(new.name)
            plan.state.append(new)
            continue
        claimed.add(hit)
        previous = old[hit].inputs
        inputs = dict(new.inputs)
        for name in new.ignore_changes:
            if name in previous:
                inputs[name] = previous[name]
            else:
                inputs.pop(name, None)
        (plan.sames if plain(inputs) == plain(previous) else plan.updates).append(new.name)
        plan.state.append(dataclasses.replace(new, inputs=inputs))
    plan.deletes = [r for urn, r in old.items() if urn not in claimed]
    return plan
