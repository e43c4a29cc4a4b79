"""The program's own failures before any resource, under the REAL engine.

The project's program (``components.program.run``, what ``__main__.py`` calls) runs inline on a
stack made from the project's files (stacks/Pulumi.dev.yaml, its nodes moved to loopback). A bad
setting, and nodes that do not answer over SSH, must make ``pulumi preview`` and ``pulumi up``
fail with the program's lines and leave the stack holding no resource: the engine creates a
resource as soon as it is registered, so "nothing was changed" is only true if nothing was
registered. Mocks show nothing was registered; this shows what the engine then did and printed.

Inline, the SDK's Automation server reports a ``RunError`` twice (logged, then returned as the
run's error: "an unhandled error occurred: ..."); under ``pulumi-language-python`` the same error
is logged once (pulumi-language-python-exec). The tests therefore check the lines, not a count.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components import program
from tests.engine.project import PROJECT, copy_project, edit_stack_file, project_stack
from tests.engine.toolchain import require
from tests.prereq import require_binary
from tests.sample import NODE_HOST_KEYS

pytestmark = pytest.mark.engine


def assert_failed_cleanly(text: str, lines: list[str]) -> None:
    for line in lines:
        assert line in text, f"missing {line!r} in:\n{text[-3000:]}"
    assert "Traceback" not in text
    assert "inline source runtime error" not in text


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, for the test's length."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_bad_setting_fails_preview_and_up_with_its_line_and_nothing_exists(
    tmp_path: Path,
) -> None:
    engine = require()
    work = copy_project(tmp_path)

    def mistake(config: dict[str, Any]) -> None:
        config[f"{PROJECT}:containerd"] = {"batchSiz": 2}
        config[f"{PROJECT}:vm"]["vmId"] = 42

    edit_stack_file(work, "dev", mistake)
    stack = project_stack(engine, tmp_path, "dev", program.run, work=work)
    for verb in ("preview", "up"):
        failure = stack.fails(verb)
        assert_failed_cleanly(
            failure.text,
            [
                "invalid stack config (nothing was changed):",
                "containerd.batchSiz: unknown key (did you mean batchSize?)",
                "vm.vmId: ",
            ],
        )
        assert stack.our_resources() == []


@pytest.mark.integration  # runs the system ssh client (against loopback only)
def test_nodes_that_do_not_answer_fail_preview_and_up_naming_each_and_nothing_exists(
    tmp_path: Path, closed_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = require()
    require_binary("ssh")
    # The program checks that an agent is there before it reads a node; none is needed to be
    # refused a connection.
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    work = copy_project(tmp_path)
    names: list[str] = []

    def to_loopback(config: dict[str, Any]) -> None:
        for index, node in enumerate(config[f"{PROJECT}:nodes"], start=1):
            node["address"] = f"127.0.0.{index}"
            node["sshPort"] = closed_port
            # Pinned, or the program refuses the node before trying it (README "Trust model").
            node["sshHostPublicKey"] = NODE_HOST_KEYS[index - 1]
            names.append(node["name"])

    edit_stack_file(work, "dev", to_loopback)
    stack = project_stack(engine, tmp_path, "dev", program.run, work=work)
    for verb in ("preview", "up"):
        failure = stack.fails(verb)
        assert_failed_cleanly(
            failure.text,
            [f"cannot read {len(names)} of {len(names)} node(s) (nothing was changed):"]
            + [
                f"node {name} (root@127.0.0.{index}:{closed_port}) probe: cannot reach the node "
                "over SSH"
                for index, name in enumerate(names, start=1)
            ],
        )
        assert stack.our_resources() == []


def test_unpinned_nodes_fail_preview_naming_each_and_nothing_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stacks/Pulumi.dev.yaml as shipped pins no node: the program refuses every node before it
    sends anything (10.0.20.x is never contacted: the refusal comes first)."""
    engine = require()
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    stack = project_stack(engine, tmp_path, "dev", program.run)
    failure = stack.fails("preview")
    assert_failed_cleanly(
        failure.text,
        ["3 of 3 node(s) have no pinned host key (nothing was changed):"]
        + [f"node {name} " for name in ("k8s-dev-cp-1", "k8s-dev-worker-1", "k8s-dev-worker-2")],
    )
    assert stack.our_resources() == []
