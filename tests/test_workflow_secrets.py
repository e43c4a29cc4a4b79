"""Which workflow job can read which key (README "Pull requests and deploys").

A pull request's jobs run the pull request's own code: none of them may be able to read the apply
key (root on every node), reach it through a reusable workflow, or run at all for a fork. The
preview gets the read key from the ``preview`` environment; the deploy gets the apply key from
the stack's environment. What enforces this on GitHub is where the secrets live (README); this
test keeps the workflows as written from undoing it. Each rule has a control: the same checker on
a workflow edited the way a careless change would.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
APPLY_KEY = "REGISTRY_MIRRORS_APPLY_SSH_KEY"
READ_KEY = "REGISTRY_MIRRORS_READ_SSH_KEY"
FORK_GATE = "github.event.pull_request.head.repo.full_name == github.repository"
# Triggers that run a pull request's code (pull_request_target even runs it with the secrets of
# the base repository, forks included: never used here).
PR_TRIGGERS = {"pull_request", "pull_request_target"}

Workflows = dict[str, dict[Any, Any]]


def load(directory: Path = WORKFLOWS) -> Workflows:
    return {path.name: yaml.safe_load(path.read_text()) for path in sorted(directory.glob("*.yml"))}


def triggers(workflow: Mapping[Any, Any]) -> set[str]:
    # YAML 1.1 reads the key `on` as the boolean True.
    on = workflow.get("on", workflow.get(True))
    if isinstance(on, str):
        return {on}
    return set(on or ())


def jobs_run_for_pull_requests(workflows: Workflows) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every job a pull request starts, through reusable workflows too (by their local path)."""
    pending = [name for name, wf in workflows.items() if triggers(wf) & PR_TRIGGERS]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for job_name, job in (workflows[name].get("jobs") or {}).items():
            yield f"{name}:{job_name}", job
            uses = str(job.get("uses", ""))
            if uses.startswith("./.github/workflows/"):
                pending.append(uses.rsplit("/", 1)[-1])


def problems(workflows: Workflows) -> list[str]:
    found = []
    for name, wf in workflows.items():
        if "pull_request_target" in triggers(wf):
            found.append(f"{name}: pull_request_target runs a fork's code with this repo's secrets")
    for where, job in jobs_run_for_pull_requests(workflows):
        text = yaml.safe_dump(job)
        if APPLY_KEY in text:
            found.append(f"{where}: a pull request's job names the apply key {APPLY_KEY}")
        if job.get("secrets") == "inherit":
            found.append(f"{where}: passes every secret on (secrets: inherit)")
        if "secrets." not in text and "self-hosted" not in str(job.get("runs-on")):
            continue
        if job.get("if") != FORK_GATE:
            found.append(f"{where}: uses secrets or the lab runner but runs for forks too")
        if job.get("environment") != "preview":
            found.append(f"{where}: its secrets do not come from the preview environment")
        for step in job.get("steps", []):
            for line in str(step.get("run", "")).splitlines():
                if line.strip().startswith("pulumi ") and "--refresh=false" not in line:
                    found.append(f"{where}: a preview must not refresh (the read key cannot)")
    deploys = [
        (name, job)
        for name, wf in workflows.items()
        for job in (wf.get("jobs") or {}).values()
        if APPLY_KEY in yaml.safe_dump(job)
    ]
    if not deploys:
        found.append(f"no job loads the apply key {APPLY_KEY}")
    for name, job in deploys:
        if triggers(workflows[name]) != {"workflow_call"}:
            found.append(f"{name}: the apply key's job must run only when deploy calls it")
        if job.get("environment") != "${{ inputs.stack }}":
            found.append(f"{name}: the apply key must come from the stack's environment")
    return found


def test_no_pull_request_job_can_read_the_apply_key() -> None:
    workflows = load()
    assert problems(workflows) == []
    preview = workflows["pull-request.yml"]["jobs"]["preview"]
    assert READ_KEY in yaml.safe_dump(preview)
    assert "homelab-preview" in preview["runs-on"]
    assert "homelab-deploy" in workflows["pulumi-up.yml"]["jobs"]["up"]["runs-on"]
    callers = [
        job
        for job in workflows["deploy.yml"]["jobs"].values()
        if job.get("uses") == "./.github/workflows/pulumi-up.yml"
    ]
    assert callers and triggers(workflows["deploy.yml"]) == {"push"}


def _edited(change: str) -> Workflows:
    workflows = copy.deepcopy(load())
    pr = workflows["pull-request.yml"]
    preview = pr["jobs"]["preview"]
    if change == "apply key in the preview":
        for step in preview["steps"]:
            if "ssh-private-key" in step.get("with", {}):
                step["with"]["ssh-private-key"] = "${{ secrets." + APPLY_KEY + " }}"
    elif change == "preview calls the deploy workflow":
        pr["jobs"]["deploy"] = {
            "uses": "./.github/workflows/pulumi-up.yml",
            "with": {"stack": "dev"},
        }
    elif change == "secrets inherited":
        pr["jobs"]["other"] = {"uses": "./.github/workflows/other.yml", "secrets": "inherit"}
        workflows["other.yml"] = {"on": {"workflow_call": {}}, "jobs": {}}
    elif change == "no fork gate":
        del preview["if"]
    elif change == "no environment":
        del preview["environment"]
    elif change == "refresh":
        for step in preview["steps"]:
            if "pulumi preview" in step.get("run", ""):
                step["run"] = step["run"].replace(" --refresh=false", "")
    elif change == "pull_request_target":
        pr[True] = {"pull_request_target": {"branches": ["main"]}}
    elif change == "deploy on pull requests":
        workflows["pulumi-up.yml"][True] = {"pull_request": {}}
    return workflows


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("apply key in the preview", "names the apply key"),
        ("preview calls the deploy workflow", "pulumi-up.yml:up: a pull request's job names"),
        ("secrets inherited", "secrets: inherit"),
        ("no fork gate", "runs for forks too"),
        ("no environment", "preview environment"),
        ("refresh", "must not refresh"),
        ("pull_request_target", "pull_request_target runs a fork's code"),
        ("deploy on pull requests", "only when deploy calls it"),
    ],
)
def test_control_each_rule_catches_its_edit(change: str, said: str) -> None:
    found = problems(_edited(change))
    assert any(said in line for line in found), found
