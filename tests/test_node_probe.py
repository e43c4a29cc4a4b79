"""Parsing what the node scripts print: no Pulumi, no node."""

from __future__ import annotations

import base64
import hashlib

import pytest

from components.plan.node_probe import ProbeOutputError, parse_probe, parse_step_result
from components.plan.node_steps import config_step, hosts_bundle, hosts_step, probe_step
from tests.sample import sample_settings

CONFIG = (
    'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.configs."x".auth]\n'
    '  password = "s3cret"\n'
)


def probe_output(text: str | None) -> str:
    lines = [
        "containerd_version_line=containerd containerd.io 1.6.20 abc",
        "containerd_version=1.6.20",
        "config_file=/etc/containerd/config.toml",
    ]
    if text is None:
        lines += ["config_exists=0", "config_sha256=absent", "config_version=", "config_b64="]
    else:
        lines += [
            "config_exists=1",
            f"config_sha256={hashlib.sha256(text.encode()).hexdigest()}",
            "config_version=2",
            f"config_b64={base64.b64encode(text.encode()).decode()}",
        ]
    return "\n".join([*lines, "original_saved=0", "managed_dirs=docker.io ghcr.io", ""])


def test_probe_round_trips_the_config_byte_for_byte() -> None:
    probe = parse_probe(probe_output(CONFIG))
    assert probe.config_text == CONFIG
    assert probe.containerd_version == "1.6.20"
    assert probe.config_version == 2
    assert probe.managed_dirs == ("docker.io", "ghcr.io")


def test_probe_of_a_node_without_config() -> None:
    probe = parse_probe(probe_output(None))
    assert (probe.config_exists, probe.config_sha256, probe.config_text) == (False, "absent", "")


def test_truncated_probe_output_is_an_error_not_an_empty_config() -> None:
    full = probe_output(CONFIG)
    b64 = base64.b64encode(CONFIG.encode()).decode()
    text = full.replace(b64, base64.b64encode(CONFIG[:20].encode()).decode())
    with pytest.raises(ProbeOutputError, match="does not match"):
        parse_probe(text)
    with pytest.raises(ProbeOutputError, match=r"output has no config_sha256= line"):
        parse_probe("config_exists=0\n")


def test_step_result_collects_repeated_keys() -> None:
    result = parse_step_result("written=docker.io\nwritten=ghcr.io\nremoved=quay.io\nchanged=1\n")
    assert result.written == ("docker.io", "ghcr.io")
    assert result.removed == ("quay.io",)
    assert result.changed and not result.restarted


def test_hosts_bundle_is_the_files_after_a_header_each_never_on_the_command_line() -> None:
    settings = sample_settings()
    node = settings.nodes[0]
    step = hosts_step(settings, node, {"ghcr.io": 'server = "x"\n', "docker.io": "a\nb\n"})
    assert step.content == hosts_bundle({"docker.io": "a\nb\n", "ghcr.io": 'server = "x"\n'})
    assert step.stdin == step.script + step.content
    assert step.content == (
        "# registry-mirrors: docker.io/hosts.toml\na\nb\n"
        '# registry-mirrors: ghcr.io/hosts.toml\nserver = "x"\n'
    )
    assert 'server = "x"' not in step.command


@pytest.mark.parametrize("text", ["no newline at the end", "# registry-mirrors: x/hosts.toml\n"])
def test_a_file_that_would_not_survive_the_bundle_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="cannot travel in the bundle"):
        hosts_bundle({"docker.io": text})


def test_config_text_travels_on_stdin_only() -> None:
    settings = sample_settings()
    node = settings.nodes[0]
    step = config_step(settings, node, "abc123", CONFIG)
    assert "s3cret" not in step.command
    assert step.content == CONFIG and step.stdin.endswith(CONFIG)
    assert "export EXPECTED_SHA256=abc123" in step.command


def test_non_root_ssh_user_runs_the_script_under_sudo() -> None:
    settings = sample_settings()
    node = settings.nodes[0].model_copy(update={"ssh_user": "debian"})
    command = probe_step(settings, node).command
    assert command.startswith("exec sudo -n bash -c ")
    assert probe_step(settings, settings.nodes[0]).command.startswith("export ")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("", None),  # no restart: nothing reported
        ("deprecations=unsupported\n", None),  # containerd 1.6: no `ctr deprecations`
        ("deprecations=\n", ()),
        (
            "deprecations=io.containerd.deprecation/cri-registry-configs "
            "io.containerd.deprecation/cri-registry-mirrors\n",
            (
                "io.containerd.deprecation/cri-registry-configs",
                "io.containerd.deprecation/cri-registry-mirrors",
            ),
        ),
    ],
)
def test_step_result_deprecations(line: str, expected: tuple[str, ...] | None) -> None:
    assert parse_step_result(f"changed=1\nrestarted=1\n{line}").deprecations == expected
