"""What each node step exports to its script: names the scripts really read, node values quoted."""

from __future__ import annotations

import re
import shlex

import pytest

from components.renderers.node_steps import (
    Step,
    config_step,
    hosts_step,
    probe_step,
    restore_config_step,
    restore_hosts_step,
    verify_step,
)
from components.renderers.shell import script_text
from components.settings import Node, Settings, load_settings
from tests.sample import sample_raw, sample_settings

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
CUSTOM_SOCKET = "/run/containerd-k8s/containerd.sock"  # config.toml with its own [grpc] address
_EXPORT = re.compile(r"^export ([A-Z][A-Z0-9_]*)=(.*)$", re.MULTILINE)


def _exports(step: Step) -> dict[str, str]:
    """The parameters a step's command exports, unquoted (as the script sees them)."""
    return {key: shlex.split(value)[0] for key, value in _EXPORT.findall(step.command)}


def _steps(settings: Settings, node: Node) -> dict[str, tuple[str, Step]]:
    """Every step, with the script it runs."""
    return {
        "probe": ("node/probe.sh", probe_step(settings, node)),
        "hosts": ("node/hosts.sh", hosts_step(settings, node, {})),
        "config": ("node/apply-config.sh", config_step(settings, node, "abc123", "version = 2\n")),
        "restore-config": ("node/restore.sh", restore_config_step(settings, node)),
        "restore-hosts": ("node/hosts.sh", restore_hosts_step(settings, node)),
        "verify": ("node/verify-node.sh", verify_step(settings, node, ["docker.io/library/x:1"])),
    }


def _custom_socket_settings() -> Settings:
    raw = sample_raw()
    raw["nodes"][1]["containerdAddress"] = CUSTOM_SOCKET
    return load_settings(raw)


def test_containerd_address_defaults_to_containerds_own_socket() -> None:
    settings = sample_settings()
    assert all(node.containerd_address == DEFAULT_SOCKET for node in settings.nodes)
    steps = _steps(settings, settings.nodes[0])
    assert _exports(steps["config"][1])["CONTAINERD_ADDRESS"] == DEFAULT_SOCKET
    assert _exports(steps["restore-config"][1])["CONTAINERD_ADDRESS"] == DEFAULT_SOCKET


def test_steps_that_restart_containerd_check_the_cri_plugin_on_the_nodes_socket() -> None:
    settings = _custom_socket_settings()
    node = settings.nodes[1]
    steps = _steps(settings, node)
    for role in ("config", "restore-config"):
        assert _exports(steps[role][1])["CONTAINERD_ADDRESS"] == CUSTOM_SOCKET, role
    # Only that node: the others keep containerd's default socket.
    other = config_step(settings, settings.nodes[0], "abc123", "")
    assert _exports(other)["CONTAINERD_ADDRESS"] == DEFAULT_SOCKET


def test_containerd_address_reaches_the_script_under_sudo_too() -> None:
    settings = _custom_socket_settings()
    node = settings.nodes[1].model_copy(update={"ssh_user": "debian"})
    command = config_step(settings, node, "abc123", "").command
    # exec sudo -n bash -c '<preamble and script>': the export is inside the sudo'd shell.
    words = shlex.split(command)
    assert words[:4] == ["exec", "sudo", "-n", "bash"]
    inner = words[-1]
    assert f"export CONTAINERD_ADDRESS={shlex.quote(CUSTOM_SOCKET)}" in inner.splitlines()


@pytest.mark.parametrize(
    "role", ["probe", "hosts", "config", "restore-config", "restore-hosts", "verify"]
)
def test_every_exported_parameter_is_one_its_script_reads(role: str) -> None:
    """A misspelled parameter would be ignored and the script's default used in silence."""
    settings = _custom_socket_settings()
    script, step = _steps(settings, settings.nodes[1])[role]
    text = script_text(script)
    exported = _exports(step)
    assert exported
    for key in exported:
        assert re.search(rf'^: "\$\{{{key}:[=?]', text, re.MULTILINE), f"{script} never reads {key}"
