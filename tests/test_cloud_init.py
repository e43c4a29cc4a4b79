"""cloud-init renderers: pure tests, and the real `cloud-init schema` as the consumer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from components.renderers.cloud_init import ipconfig0, render_vendor_data
from components.settings import load_settings
from tests.prereq import require_binary
from tests.sample import sample_raw, sample_settings


def test_ipconfig0_is_proxmox_static_form():
    assert ipconfig0(sample_settings().vm) == "ip=10.0.20.10/24,gw=10.0.20.1"


def test_ipconfig0_follows_settings():
    raw = sample_raw()
    raw["vm"].update(address="192.168.7.40/23", gateway="192.168.6.1")
    raw["nodes"] = []
    assert ipconfig0(load_settings(raw).vm) == "ip=192.168.7.40/23,gw=192.168.6.1"


def test_vendor_data_installs_docker_and_prepares_registry_dirs():
    text = render_vendor_data(sample_settings())
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    assert "docker.io" in data["packages"]
    assert "systemctl enable --now docker" in data["runcmd"]
    dirs = " ".join(data["runcmd"])
    for container in (
        "registry",
        "registry-ghcr",
        "registry-quay",
        "registry-k8s",
        "registry-kyverno",
    ):
        assert f"/var/lib/registry/{container}" in dirs
        assert f"/etc/docker-registry/{container}" in dirs


def test_vendor_data_holds_no_user_or_secret():
    # The user and keys go through Proxmox's user_account; vendor data must not fight it.
    data = yaml.safe_load(render_vendor_data(sample_settings()))
    assert "users" not in data and "ssh_authorized_keys" not in data and "chpasswd" not in data


def _schema(tmp_path: Path, text: str) -> subprocess.CompletedProcess:
    binary = require_binary("cloud-init")
    path = tmp_path / "vendor-data.yaml"
    path.write_text(text)
    return subprocess.run(
        [binary, "schema", "--config-file", str(path)], capture_output=True, text=True, timeout=60
    )


@pytest.mark.integration
def test_vendor_data_passes_cloud_init_schema(tmp_path: Path):
    result = _schema(tmp_path, render_vendor_data(sample_settings()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Valid" in result.stdout


@pytest.mark.integration
def test_schema_check_fails_on_a_bad_key(tmp_path: Path):
    # Proves the check above can fail: a misspelled key inside a module is caught.
    data = yaml.safe_load(render_vendor_data(sample_settings()))
    data["write_files"][0]["permisions"] = data["write_files"][0].pop("permissions")
    result = _schema(tmp_path, "#cloud-config\n" + yaml.safe_dump(data))
    assert result.returncode != 0
    assert "permisions" in result.stdout + result.stderr


def test_vendor_data_drops_the_images_dhcp_default_and_fails_runcmd_early():
    # Both measured in the VM tier: Debian 12's 90-default.yaml overrode the static address, and
    # a failing command in the middle of runcmd was reported as success.
    data = yaml.safe_load(render_vendor_data(sample_settings()))
    [bootcmd] = data["bootcmd"]
    assert "rm -f /etc/netplan/90-default.yaml" in bootcmd and "netplan apply" in bootcmd
    assert data["runcmd"][0] == "set -e"
    no_recommends = next(f for f in data["write_files"] if f["path"].startswith("/etc/apt/"))
    assert no_recommends["content"] == 'APT::Install-Recommends "false";\n'
    # Named because Recommends are off: Docker needs it for its default AppArmor profile.
    assert "apparmor" in data["packages"]
    assert "apt" not in data  # that key would make cloud-init rewrite the image's apt sources
