"""What each node step exports to its script: names the scripts really read, node values quoted."""

from __future__ import annotations

import re
import shlex

import pytest

from components.plan.node_steps import (
    Step,
    config_step,
    hosts_step,
    probe_step,
    restore_config_step,
    restore_hosts_step,
    verify_step,
)
from components.renderers.shell import SCRIPTS_DIR, script_text
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


@pytest.mark.parametrize(
    "script", ["node/apply-config.sh", "node/registries.sh", "node/restore.sh"]
)
def test_the_shared_library_uses_only_parameters_its_script_declares(script: str) -> None:
    """scripts/node/lib.sh declares no parameter (the check above sees each script's own), and
    every parameter of a node script it uses is declared, with its default, by each script that
    inlines it."""
    declared = re.compile(r'^: "\$\{([A-Z][A-Z0-9_]*):[=?]', re.MULTILINE)
    library = (SCRIPTS_DIR / "node" / "lib.sh").read_text()
    code = "\n".join(line for line in library.splitlines() if not line.lstrip().startswith("#"))
    assert not declared.search(library)
    parameters = {
        key
        for path in (SCRIPTS_DIR / "node").glob("*.sh")
        for key in declared.findall(path.read_text())
    }
    used = {key for key in parameters if re.search(rf"\b{key}\b", code)}
    assert used == {
        "CONTAINERD_ADDRESS", "RESTART_COMMAND", "RESTART_TIMEOUT", "HEALTH_COMMAND",
        "HEALTH_TIMEOUT",
    }  # fmt: skip
    own = set(declared.findall((SCRIPTS_DIR / script).read_text()))
    assert used <= own, f"{script} does not declare {sorted(used - own)}"


def test_step_sh_reads_no_parameter() -> None:
    """What every step shares on how it ends reads nothing a step exports (TMPDIR is the node's)."""
    declared = re.compile(r'^: "\$\{([A-Z][A-Z0-9_]*):[=?]', re.MULTILINE)
    library = (SCRIPTS_DIR / "node" / "step.sh").read_text()
    code = "\n".join(line for line in library.splitlines() if not line.lstrip().startswith("#"))
    assert not declared.search(library)
    assert set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", code)) == {"TMPDIR"}


# --- planning a node from its probe -------------------------------------------------------------

OWN_MIRRORS = (
    "version = 2\n"
    '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."quay.io"]\n'
    '  endpoint = ["https://quay-mirror.corp.example"]\n'
    '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."harbor.corp.example"]\n'
    '  endpoint = ["https://harbor-mirror.corp.example"]\n'
)


@pytest.mark.parametrize("bom", ["", "\ufeff"], ids=["plain", "bom"])
def test_mirrors_carried_over_stay_in_hosts_toml_on_every_later_run(bom: str) -> None:
    """The second run reads a config.toml without mirrors: the node's own mirrors come from its
    saved original, or the second `pulumi up` would delete them from hosts.toml. A file that
    starts with a byte order mark (containerd reads it) is read as well on the second run, when
    the saved original is parsed too."""
    from components.plan.node_plan import plan_node
    from tests.mocks import FakeNode

    settings = sample_settings()
    node = settings.nodes[0]
    fake = FakeNode(bom + OWN_MIRRORS)
    first = plan_node(settings, node, fake.probe())
    fake.apply(
        {
            "hosts": {"create": first.hosts.command, "stdin": first.hosts.stdin},
            "config": {"create": first.config.command, "stdin": first.config.stdin},
        }
    )
    second = plan_node(settings, node, fake.probe())

    assert "harbor.corp.example" in first.hosts_files
    assert "quay-mirror.corp.example" in first.hosts_files["quay.io"]
    assert second.hosts_files == first.hosts_files
    assert second.hosts == first.hosts and second.config == first.config
    assert not second.config_changed


def test_an_unchanged_node_sends_the_guard_it_was_applied_with() -> None:
    from components.plan.node_plan import plan_node
    from tests.mocks import probe_stdout

    settings = sample_settings()
    node = settings.nodes[0]
    migrated = (  # what the node holds now: nothing left to migrate
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
    )
    applied = plan_node(settings, node, probe_stdout(migrated, applied_from="f" * 64))
    by_hand = plan_node(settings, node, probe_stdout(migrated))

    assert _exports(applied.config)["EXPECTED_SHA256"] == "f" * 64
    # Migrated by someone else (no record of ours): the file's own checksum.
    assert _exports(by_hand.config)["EXPECTED_SHA256"] != "f" * 64
