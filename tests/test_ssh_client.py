"""The system ssh client's options: the pinned host key is offered under the name ssh looks it up
by (tests/integration/test_node_e2e.py proves it against a real sshd on both ports)."""

from __future__ import annotations

import pytest

from components.plan.node_steps import SSH_FAILURE, Step
from components.settings import load_settings
from components.ssh_client import run_on_node, ssh_client_options, unpinned_nodes
from tests.sample import sample_raw

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEwgCFo0jRZ0Xb1Ud2vvjlV7i3mQsZ0wNsmHcdQ0Tl8S"


@pytest.mark.parametrize(("port", "name"), [(22, "10.0.20.21"), (2200, "[10.0.20.21]:2200")])
def test_the_pinned_key_is_offered_under_the_name_ssh_looks_up(port: int, name: str) -> None:
    options = ssh_client_options("10.0.20.21", KEY, port)
    assert "StrictHostKeyChecking=yes" in options
    assert f"KnownHostsCommand=/bin/echo '{name} {KEY}'" in options


def test_the_pinned_line_is_the_only_known_key() -> None:
    """No known_hosts file is read (a key accepted there earlier would be trusted too) or
    written; tests/integration/test_host_keys.py shows a real sshd with another key refused."""
    options = ssh_client_options("10.0.20.21", KEY)
    assert "UserKnownHostsFile=/dev/null" in options
    assert "GlobalKnownHostsFile=/dev/null" in options
    assert "UpdateHostKeys=no" in options


def test_there_is_no_unpinned_mode() -> None:
    with pytest.raises(ValueError, match="never connects unverified"):
        ssh_client_options("10.0.20.21", "", 2200)


def test_an_unpinned_node_is_refused_before_ssh_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is sent: with PATH empty, running ssh would say "not installed" instead."""
    monkeypatch.setenv("PATH", "/nonexistent")
    node = load_settings({**sample_raw(), "nodes": [{"name": "n1", "address": "10.0.20.21"}]})
    run = run_on_node(node.nodes[0], Step("true", ""))
    assert run.exit_code == SSH_FAILURE
    assert run.stderr.startswith("node n1 (root@10.0.20.21:22): no pinned host key")
    assert "python scripts/pin_host_keys.py --stack" in run.stderr
    assert unpinned_nodes(node.nodes, "dev") == [
        "node n1 (root@10.0.20.21:22): no pinned host key (nodes[].sshHostPublicKey), so nothing"
        " is sent to it; compare and pin its key: python scripts/pin_host_keys.py --stack dev"
    ]
