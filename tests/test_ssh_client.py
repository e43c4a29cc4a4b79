"""The system ssh client's options: the pinned host key is offered under the name ssh looks it up
by (tests/integration/test_node_e2e.py proves it against a real sshd on both ports)."""

from __future__ import annotations

import pytest

from components.ssh_client import ssh_client_options

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEwgCFo0jRZ0Xb1Ud2vvjlV7i3mQsZ0wNsmHcdQ0Tl8S"


@pytest.mark.parametrize(("port", "name"), [(22, "10.0.20.21"), (2200, "[10.0.20.21]:2200")])
def test_the_pinned_key_is_offered_under_the_name_ssh_looks_up(port: int, name: str) -> None:
    options = ssh_client_options("10.0.20.21", KEY, port)
    assert "StrictHostKeyChecking=yes" in options
    assert f"KnownHostsCommand=/bin/echo '{name} {KEY}'" in options


def test_without_a_pinned_key_the_first_key_is_accepted() -> None:
    options = ssh_client_options("10.0.20.21", None, 2200)
    assert "StrictHostKeyChecking=accept-new" in options
    assert not any(o.startswith("KnownHostsCommand=") for o in options)
