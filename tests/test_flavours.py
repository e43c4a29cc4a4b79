"""Flavours: the probe's flavour block parsed, the flavour settled against the node setting, and
the k3s/RKE2 builders (parameters from the flavour table, explicit node settings win)."""

from __future__ import annotations

import base64
import hashlib
import shlex

import pytest

from components.plan.node_plan import plan_registries
from components.plan.node_probe import ProbeOutputError, parse_probe
from components.plan.node_steps import (
    NodeStepError,
    probe_step,
    registries_step,
    restore_registries_step,
)
from components.renderers.flavours import FLAVOURS, FlavourError, resolve_flavour
from components.settings import load_settings
from tests.sample import sample_raw, sample_settings

WHERE = "node k3s-1 (10.0.20.21)"


def k3s_probe(text: str | None, flavour: str = "k3s-server") -> str:
    row = FLAVOURS[flavour]
    lines = [
        f"flavour={flavour}",
        f"flavour_candidates={flavour}",
        f"unit={row.unit}",
        f"cri_socket={row.cri_socket}",
        f"registries_file={row.registries_file}",
        f"registries_exists={int(text is not None)}",
        "registries_sha256="
        + (hashlib.sha256(text.encode()).hexdigest() if text is not None else "absent"),
        "registries_b64=" + (base64.b64encode(text.encode()).decode() if text else ""),
        "registries_original_saved=0",
        f"hosts_dir={row.hosts_dir}",
        f"ctr={row.bin_dir}/ctr",
        f"containerd_log={row.containerd_log}",
        "distribution_binary=/usr/local/bin/k3s",
        "distribution_version=k3s version v1.33.1+k3s1 (99d91538)",
        "containerd_version=v2.0.5-k3s1",
        "config_file=",
        "config_exists=0",
        "config_sha256=absent",
        "config_version=",
        "config_b64=",
        "original_saved=0",
        "managed_dirs=",
    ]
    return "\n".join(lines) + "\n"


def test_parse_probe_reads_the_flavour_block():
    probe = parse_probe(k3s_probe("mirrors: {}\n"))
    assert (probe.flavour, probe.unit, probe.containerd_version) == (
        "k3s-server",
        "k3s",
        "v2.0.5-k3s1",
    )
    assert probe.registries_text == "mirrors: {}\n"
    assert probe.registries_file == "/etc/rancher/k3s/registries.yaml"


def test_parse_probe_refuses_a_truncated_registries_file():
    stdout = k3s_probe("mirrors: {}\n").replace(
        "registries_b64=" + base64.b64encode(b"mirrors: {}\n").decode(),
        "registries_b64=" + base64.b64encode(b"mirrors:").decode(),
    )
    with pytest.raises(ProbeOutputError, match="registries_b64 does not match its sha256"):
        parse_probe(stdout)


def test_ambiguous_probe_parses_without_base_keys():
    probe = parse_probe("flavour=ambiguous\nflavour_candidates=rke2-server rke2-agent\n")
    assert probe.flavour_candidates == ("rke2-server", "rke2-agent")


def test_old_probe_output_still_parses_as_plain_containerd():
    stdout = (
        "containerd_version=1.6.20\nconfig_file=/etc/containerd/config.toml\nconfig_exists=0\n"
        "config_sha256=absent\nconfig_version=\nconfig_b64=\n"
    )
    assert parse_probe(stdout).flavour == "containerd"


@pytest.mark.parametrize(
    ("detected", "candidates", "forced", "expected"),
    [
        ("k3s-agent", ("k3s-agent",), None, "k3s-agent"),
        ("k3s-agent", ("k3s-agent",), "k3s-agent", "k3s-agent"),
        ("ambiguous", ("rke2-server", "rke2-agent"), "rke2-agent", "rke2-agent"),
        ("containerd", (), None, "containerd"),
    ],
)
def test_resolve_flavour(detected, candidates, forced, expected):
    assert resolve_flavour(detected, candidates, forced, WHERE).name == expected


@pytest.mark.parametrize(
    ("detected", "candidates", "forced", "message"),
    [
        ("k3s-agent", ("k3s-agent",), "containerd", "is 'containerd' but the node is 'k3s-agent'"),
        ("ambiguous", ("rke2-server", "rke2-agent"), None, "rke2-server, rke2-agent"),
        ("ambiguous", ("rke2-server", "rke2-agent"), "k3s-server", "is 'k3s-server' but the node"),
        ("k4s", (), None, "unknown flavour 'k4s'"),
    ],
)
def test_resolve_flavour_mismatch_names_both(detected, candidates, forced, message):
    with pytest.raises(FlavourError, match=rf"^{WHERE.replace('(', '.').replace(')', '.')}: .*"):
        resolve_flavour(detected, candidates, forced, WHERE)
    with pytest.raises(FlavourError, match=message):
        resolve_flavour(detected, candidates, forced, WHERE)


def _params(command: str) -> dict[str, str]:
    params = {}
    for line in command.splitlines():
        if line.startswith("export "):
            key, _, value = line.removeprefix("export ").partition("=")
            params[key] = shlex.split(value)[0] if value else ""
    return params


@pytest.mark.parametrize("flavour", ["k3s-server", "k3s-agent", "rke2-server", "rke2-agent"])
def test_registries_step_takes_unit_socket_and_paths_from_the_flavour(flavour):
    settings = sample_settings()
    row = FLAVOURS[flavour]
    step = registries_step(settings, settings.nodes[0], row, "abc", "mirrors: {}\n")
    params = _params(step.command)
    assert params["RESTART_COMMAND"] == f"systemctl restart {row.unit}"
    assert params["CONTAINERD_ADDRESS"] == "/run/k3s/containerd/containerd.sock"
    assert params["REGISTRIES_FILE"] == row.registries_file
    assert params["HOSTS_DIR"] == row.hosts_dir
    assert params["EXPECTED_SHA256"] == "abc"
    assert params["EXPECTED_HOSTS"].split()[0] == "docker.io=https://10.0.20.10:5002"
    # The CA file registries.yaml's configs.<cache>.tls.ca_file names, written by the same step.
    assert params["CA_FILE"] == "/etc/rancher/registry-mirrors-ca.pem"
    assert step.content == "mirrors: {}\n"
    restore = _params(restore_registries_step(settings, settings.nodes[0], row).command)
    assert restore["RESTORE"] == "1" and restore["UNIT"] == row.unit


def test_explicit_node_restart_command_and_socket_win():
    raw = sample_raw()
    raw["nodes"][0].update(restartCommand="rc-service k3s restart", containerdAddress="/run/x.sock")
    settings = load_settings(raw)
    params = _params(
        registries_step(settings, settings.nodes[0], FLAVOURS["k3s-server"], "a", "").command
    )
    assert params["RESTART_COMMAND"] == "rc-service k3s restart"
    assert params["CONTAINERD_ADDRESS"] == "/run/x.sock"


def test_probe_step_passes_flavour_only_when_set():
    raw = sample_raw()
    raw["nodes"][1]["flavour"] = "k3s-agent"
    settings = load_settings(raw)
    assert "export FLAVOUR=" not in probe_step(settings, settings.nodes[0]).command
    assert "export FLAVOUR=k3s-agent" in probe_step(settings, settings.nodes[1]).command


def test_plan_registries_merges_and_refuses_a_bad_file_naming_the_node():
    settings = sample_settings()
    node = settings.nodes[0]
    plan = plan_registries(settings, node, k3s_probe(None))
    assert plan.changed and plan.flavour.name == "k3s-server"
    assert plan.registries.content.startswith("# k3s/RKE2")
    with pytest.raises(
        NodeStepError,
        match=r"node k8s-cp-1 \(10\.0\.20\.21\) /etc/rancher/k3s/registries.yaml: registries.yaml "
        r"line 2: .*nothing was changed",
    ):
        plan_registries(settings, node, k3s_probe("mirrors: [\n"))
