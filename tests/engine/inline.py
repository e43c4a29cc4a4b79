"""Inline programs on the real engine: the Automation API with the CLI setup-pulumi.sh built.

    stack = EngineStack.create(engine, tmp_path, "dev", program, project="registry-mirrors")
    log = stack.up()                 # an EventLog: the engine's own step events, in order
    log.ops()                        # {"containerd-batch-0": "create", ...}
    stack.resources()                # the state file's resources (what the stack holds)

``pulumi.automation`` runs ``program`` in this Python process and hands the CLI a ``--client``
address: the CLI and its engine (deployment, step ordering, diff, state, secrets) are the real
ones, and no ``pulumi-language-python`` is started, so none is needed (the Go module proxy refuses
its module here; tests/engine/test_engine.py proves the point with no language host anywhere the
CLI could find one). Every command runs on a ``file://`` backend in the test's directory, with the
passphrase secrets provider, the toolchain's PULUMI_HOME and no plugin download, no ambient plugin
and no update check (the env file setup-pulumi.sh writes).

What the engine did is read from its event stream (``on_event``: the same engine events
``--event-log`` writes and ``preview --json`` summarises): one ``resource_pre`` event when a step
starts, one ``res_outputs`` event when it is done, each with the step's op and URN and a sequence
number.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulumi import automation as auto
from pulumi.automation.events import EngineEvent

from tests.engine.toolchain import Toolchain

PASSPHRASE = "engine-test-passphrase"


def engine_own(type_: str) -> bool:
    """Resources every stack has that no program of ours makes: the stack, default providers."""
    return type_ == "pulumi:pulumi:Stack" or type_.startswith("pulumi:providers:")


def backend_env(backend: Path) -> dict[str, str]:
    """What every command needs besides the toolchain's env file: where the state lives and how
    its secrets are encrypted."""
    return {
        "PULUMI_BACKEND_URL": backend.as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
    }


def offline_env(engine: Toolchain) -> dict[str, str]:
    """The env file's switches (not PATH: the Automation API runs the CLI by its path)."""
    keys = (
        "PULUMI_HOME",
        "PULUMI_SKIP_UPDATE_CHECK",
        "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION",
        "PULUMI_IGNORE_AMBIENT_PLUGINS",
    )
    return {key: engine.env[key] for key in keys}


@dataclass(frozen=True)
class Step:
    sequence: int
    phase: str  # "start", "done" or "failed"
    op: str
    urn: str
    type: str

    @property
    def name(self) -> str:
        return self.urn.rsplit("::", 1)[-1]

    @property
    def ours(self) -> bool:
        return not engine_own(self.type)


@dataclass
class EventLog:
    events: list[EngineEvent] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def steps(self) -> list[Step]:
        steps: list[Step] = []
        for event in sorted(self.events, key=lambda e: e.sequence):
            for phase, body in (
                ("start", event.resource_pre_event),
                ("done", event.res_outputs_event),
                ("failed", event.res_op_failed_event),
            ):
                if body is None:
                    continue
                meta = body.metadata
                steps.append(Step(event.sequence, phase, meta.op.value, meta.urn, meta.type))
        return steps

    def ops(self) -> dict[str, str]:
        """Logical name -> the op the engine chose, for resources of our program. A replacement
        (create-replacement, replace, delete-replaced steps) reads ``replace``."""
        by_name: dict[str, list[str]] = {}
        for step in self.steps():
            if step.phase == "start" and step.ours:
                by_name.setdefault(step.name, []).append(step.op)
        return {
            name: "replace" if "replace" in ops else "+".join(ops) for name, ops in by_name.items()
        }

    def deletes(self) -> dict[str, bool]:
        """Logical name -> whether the state the engine deleted it from says retainOnDelete (the
        engine then drops it from the state without calling the provider's Delete), for each
        resource of our program the engine deleted."""
        found: dict[str, bool] = {}
        for event in self.events:
            body = event.resource_pre_event
            if body is None or body.metadata.op.value not in ("delete", "delete-replaced"):
                continue
            meta = body.metadata
            if engine_own(meta.type):
                continue
            old = meta.old
            found[meta.urn.rsplit("::", 1)[-1]] = bool(old is not None and old.retain_on_delete)
        return found

    def changed(self) -> dict[str, str]:
        """Only the resources whose op is not ``same``."""
        return {name: op for name, op in self.ops().items() if op != "same"}

    def _at(self, name: str, phase: str, op: str | None) -> int:
        found = [
            s.sequence
            for s in self.steps()
            if s.name == name and s.phase == phase and (op is None or s.op == op)
        ]
        assert len(found) == 1, f"{name}: expected one {phase} event (op {op}), got {found}"
        return found[0]

    def started(self, name: str, op: str | None = None) -> int:
        return self._at(name, "start", op)

    def done(self, name: str, op: str | None = None) -> int:
        return self._at(name, "done", op)

    def errors(self) -> list[str]:
        return [
            e.diagnostic_event.message
            for e in self.events
            if e.diagnostic_event is not None and e.diagnostic_event.severity == "error"
        ]

    @property
    def text(self) -> str:
        return "\n".join(self.output)


Program = Callable[[], Any]


@dataclass
class EngineStack:
    engine: Toolchain
    stack: auto.Stack
    backend: Path

    @classmethod
    def create(
        cls,
        engine: Toolchain,
        root: Path,
        stack_name: str,
        program: Program,
        *,
        project: str = "engine-test",
        work_dir: Path | None = None,
        backend: Path | None = None,
        pulumi_root: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> EngineStack:
        """A new stack of ``project`` on the file backend ``backend`` (default ``root/state``).
        ``work_dir``: a directory holding the project's Pulumi.yaml (and its stack config dir), as
        the CLI reads them; default: a fresh one with a minimal Pulumi.yaml for ``project``.
        ``pulumi_root``: a directory whose ``bin/pulumi`` runs instead of the toolchain's;
        ``env``: more environment for every command."""
        backend = backend or root / "state"
        backend.mkdir(parents=True, exist_ok=True)
        settings = None
        if work_dir is None:
            work_dir = root / f"project-{project}-{stack_name}"
            work_dir.mkdir(parents=True, exist_ok=True)
            settings = auto.ProjectSettings(name=project, runtime="python")
        options = auto.LocalWorkspaceOptions(
            work_dir=str(work_dir),
            pulumi_home=engine.env["PULUMI_HOME"],
            env_vars={**offline_env(engine), **backend_env(backend), **(env or {})},
            project_settings=settings,
            pulumi_command=auto.PulumiCommand(root=str(pulumi_root or engine.directory)),
        )
        stack = auto.create_stack(
            stack_name=stack_name, project_name=project, program=program, opts=options
        )
        return cls(engine, stack, backend)

    def _run(self, verb: str, **kwargs: Any) -> EventLog:
        log = EventLog()
        method = getattr(self.stack, verb)
        try:
            method(on_event=log.events.append, on_output=log.output.append, **kwargs)
        except auto.CommandError as error:
            raise EngineFailed(verb, log, error) from None
        return log

    def up(self, **kwargs: Any) -> EventLog:
        return self._run("up", **kwargs)

    def preview(self, **kwargs: Any) -> EventLog:
        return self._run("preview", **kwargs)

    def destroy(self, **kwargs: Any) -> EventLog:
        return self._run("destroy", **kwargs)

    def fails(self, verb: str, **kwargs: Any) -> EngineFailed:
        """Run ``verb`` expecting the CLI to exit non-zero; its log and output."""
        try:
            log = self._run(verb, **kwargs)
        except EngineFailed as failure:
            return failure
        raise AssertionError(f"pulumi {verb} succeeded:\n{log.text[-3000:]}")

    def set_config(self, values: Mapping[str, Any], secret_keys: tuple[str, ...] = ()) -> None:
        """Set project-namespace config the way ``pulumi config set [--secret]`` does."""
        self.stack.set_all_config(
            {
                key: auto.ConfigValue(
                    value if isinstance(value, str) else json.dumps(value),
                    secret=key in secret_keys,
                )
                for key, value in values.items()
            },
            path=False,
        )

    def state_file(self) -> Path:
        """The checkpoint the file backend keeps for this stack."""
        project = self.stack.workspace.project_settings().name
        found = list(self.backend.glob(f".pulumi/stacks/{project}/{self.stack.name}.json"))
        assert len(found) == 1, f"no state file for {project}/{self.stack.name} in {self.backend}"
        return found[0]

    def resources(self) -> list[dict[str, Any]]:
        """Every resource the stack holds (the state the engine wrote)."""
        deployment = self.stack.export_stack().deployment or {}
        return list(deployment.get("resources") or [])

    def our_resources(self) -> list[dict[str, Any]]:
        return [r for r in self.resources() if not engine_own(r["type"])]

    def urn(self, name: str) -> str:
        found = [r["urn"] for r in self.resources() if r["urn"].endswith(f"::{name}")]
        assert len(found) == 1, f"{name}: {found}"
        return found[0]


class EngineFailed(Exception):
    def __init__(self, verb: str, log: EventLog, error: auto.CommandError) -> None:
        self.verb = verb
        self.log = log
        self.error = error
        super().__init__(f"pulumi {verb} failed: {error}")

    @property
    def text(self) -> str:
        """Everything the CLI printed (stdout as it came, then the error's stderr)."""
        return self.log.text + "\n" + str(self.error)
