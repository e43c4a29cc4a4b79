"""The workflows run exactly the pulumi command lines and environment the engine tier proves.

.github/workflows/pull-request.yml (preview) and pulumi-up.yml (deploy) call the CLI directly.
Every ``pulumi ...`` line in them must be one of ``PROVEN`` below, and each line of ``PROVEN`` is
run here by the real CLI 3.277.0 on a file backend:
- as written (``$STACK`` filled in), so the CLI parses its flags; ``preview``/``up`` of a Python
  project then stop for want of the language host (which no CI machine here has; the message
  says so), proving the flags were accepted, not that the program ran;
- through the Automation API with the same verb and flags on the rollout's graph (the inline
  path of tests/engine/inline.py), where the program does run: ``--diff`` up, then
  ``--expect-no-changes`` passes on an unchanged fleet and fails once a node was edited by hand
  (the deploy then stops for a person to look).
The jobs' environment names the same variables the engine tier sets (``backend_env``).
"""

from __future__ import annotations

import json
import shlex
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.plan.node_plan import AnyPlan
from tests.engine.inline import EngineStack, backend_env
from tests.engine.rollout import HAND_EDIT, apply_to_nodes, fleet_settings, program
from tests.engine.toolchain import ROOT, require
from tests.mocks import FakeFleet

pytestmark = pytest.mark.engine

WORKFLOWS = ROOT / ".github" / "workflows"
# Command line -> (Automation API verb, its keyword arguments for the same flags).
PROVEN: dict[str, tuple[str, dict[str, Any]]] = {
    'pulumi preview --stack "$STACK" --non-interactive --diff --refresh=false': (
        "preview",
        {"diff": True, "refresh": False},
    ),
    'pulumi up --stack "$STACK" --non-interactive --yes --diff': ("up", {"diff": True}),
    'pulumi preview --stack "$STACK" --non-interactive --expect-no-changes': (
        "preview",
        {"expect_no_changes": True},
    ),
    'pulumi stack output --stack "$STACK" --json': ("stack output", {}),
}
# What the jobs set besides backend_env's variables.
JOB_ENV = {"PULUMI_SKIP_UPDATE_CHECK": "true", "PULUMI_ACCESS_TOKEN": None, "STACK": None}


def pulumi_jobs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(WORKFLOWS.glob("*.yml")):
        for name, job in (yaml.safe_load(path.read_text()).get("jobs") or {}).items():
            if any("pulumi " in (step.get("run") or "") for step in job.get("steps", [])):
                yield f"{path.name}:{name}", job


def command_lines(job: Mapping[str, Any]) -> list[str]:
    """The job's pulumi invocations, without what their output is piped or redirected into."""
    found = []
    for step in job.get("steps", []):
        for line in (step.get("run") or "").splitlines():
            line = line.strip()
            if line.startswith("pulumi "):
                words = line.split(" ")
                cut = next((i for i, w in enumerate(words) if w in {"|", ">", "2>&1"}), len(words))
                found.append(" ".join(words[:cut]))
    return found


def test_the_workflows_run_only_proven_command_lines_with_the_tiers_environment() -> None:
    engine = require()
    jobs = dict(pulumi_jobs())
    assert set(jobs) == {"pull-request.yml:preview", "pulumi-up.yml:up"}
    used = {line for job in jobs.values() for line in command_lines(job)}
    assert used == set(PROVEN), sorted(used ^ set(PROVEN))
    for name, job in jobs.items():
        env = job.get("env") or {}
        expected = set(backend_env(Path("/state"))) | set(JOB_ENV)
        assert set(env) == expected, (name, sorted(set(env) ^ expected))
        for key, value in JOB_ENV.items():
            if value is not None:
                assert env[key] == value, (name, key)
        installs = [s for s in job["steps"] if str(s.get("uses", "")).startswith("pulumi/actions")]
        assert [s["with"] for s in installs] == [{"pulumi-version": engine.cli_version}], name


@pytest.fixture
def deployed(
    tmp_path: Path,
) -> Iterator[tuple[EngineStack, FakeFleet, list[Mapping[str, AnyPlan]]]]:
    engine = require()
    settings = fleet_settings(nodes=3, batch_size=2)
    fleet = FakeFleet()
    seen: list[Mapping[str, AnyPlan]] = []
    stack = EngineStack.create(engine, tmp_path, "dev", program(settings, fleet, seen))
    yield stack, fleet, seen


def test_each_command_line_parses_on_the_cli(deployed, tmp_path: Path) -> None:
    stack, _fleet, _seen = deployed
    engine = stack.engine
    stack.up()
    work = Path(stack.stack.workspace.work_dir)
    # The inline project's directory as a plain Python project: what a runner checks out.
    (work / "__main__.py").write_text("import pulumi\n")
    (work / "Pulumi.yaml").write_text(
        textwrap.dedent(
            """\
            name: engine-test
            runtime: python
            """
        )
    )
    env = backend_env(stack.backend)
    for line in PROVEN:
        argv = shlex.split(line.replace('"$STACK"', "dev"))[1:]
        result = engine.run(argv, cwd=work, env=env)
        said = result.stdout + result.stderr
        assert "unknown flag" not in said and "unknown shorthand" not in said, (line, said)
        if argv[0] in {"preview", "up"}:
            # Flags accepted; the program cannot start without the language host here.
            assert result.returncode != 0
            assert "pulumi-language-python" in said, (line, said[-2000:])
        else:
            assert result.returncode == 0, (line, said)
            assert json.loads(result.stdout)["rollout"] == [["node-1"], ["node-2", "node-3"]]


def test_the_same_verbs_and_flags_on_the_engine(deployed) -> None:
    stack, fleet, seen = deployed

    def run(line: str) -> Any:
        verb, flags = PROVEN[line]
        return getattr(stack, verb)(**flags)

    up = 'pulumi up --stack "$STACK" --non-interactive --yes --diff'
    no_change = 'pulumi preview --stack "$STACK" --non-interactive --expect-no-changes'
    review = 'pulumi preview --stack "$STACK" --non-interactive --diff --refresh=false'

    assert set(run(up).ops().values()) == {"create"}
    apply_to_nodes(fleet, seen[-1])
    assert run(no_change).changed() == {}

    config = fleet.nodes["node-2"].config
    assert config is not None
    fleet.nodes["node-2"].config = config + HAND_EDIT
    assert run(review).changed() == {"containerd-node-2-config": "update"}
    verb, flags = PROVEN[no_change]
    failure = stack.fails(verb, **flags)
    assert "no changes were expected" in failure.text.lower()
