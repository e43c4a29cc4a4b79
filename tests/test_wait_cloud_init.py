"""scripts/vm/wait-cloud-init.sh decisions with stand-in `cloud-init`, `ip` and `systemctl`.

The VM tier runs the script on a real guest (cloud-init 22.4); these cover what that guest
cannot show: cloud-init 23.4+'s exit code 2 ("done, with recoverable errors", from `status
--wait` and `status --format json` alike), which Proxmox's own `user:` key produces as a
deprecation on every VM, and a DHCP lease beside the static address.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from components.renderers.shell import SCRIPTS_DIR

SCRIPT = SCRIPTS_DIR / "vm" / "wait-cloud-init.sh"
STATIC = "2: eth0    inet 10.0.20.10/24 brd 10.0.20.255 scope global eth0"
LEASE = "2: eth0    inet 10.0.20.200/24 metric 100 brd 10.0.20.255 scope global dynamic eth0"


def _stub(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text(f"#!/usr/bin/env bash\n{body}\n")
    path.chmod(0o755)


def run_wait(
    tmp_path: Path, status: int, status_json: dict, addresses: list[str], dynamic: list[str]
) -> subprocess.CompletedProcess[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "status.json").write_text(json.dumps(status_json))
    _stub(
        bin_dir,
        "cloud-init",
        f"""case "$*" in
  "status --wait") exit {status} ;;
  "status --format json") cat {tmp_path / "status.json"}; exit {status} ;;
  *) echo "status: done" ;;
esac""",
    )
    (tmp_path / "all").write_text("\n".join(addresses) + "\n")
    (tmp_path / "dynamic").write_text("".join(f"{line}\n" for line in dynamic))
    _stub(
        bin_dir,
        "ip",
        f"""case "$*" in
  "-4 -o addr show dynamic") cat {tmp_path / "dynamic"} ;;
  "-4 -o addr show") cat {tmp_path / "all"} ;;
  "-4 route show default") echo "default via 10.0.20.1 dev eth0 proto static" ;;
esac""",
    )
    _stub(bin_dir, "systemctl", "exit 0")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env.update(TIMEOUT_SECONDS="5", EXPECTED_ADDRESS="10.0.20.10", EXPECTED_GATEWAY="10.0.20.1")
    return subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30, check=False
    )


DEPRECATED_ONLY = {
    "errors": [],
    "recoverable_errors": {"DEPRECATED": ["'user' of type string is deprecated"]},
}


def test_ready_on_a_clean_boot(tmp_path: Path) -> None:
    result = run_wait(tmp_path, 0, {"errors": []}, [STATIC], [])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ready address=10.0.20.10"


def test_deprecations_alone_are_not_a_broken_vm(tmp_path: Path) -> None:
    # cloud-init 23.4+ on a Proxmox VM: `user: debian` is deprecated -> exit 2.
    result = run_wait(tmp_path, 2, DEPRECATED_ONLY, [STATIC], [])
    assert result.returncode == 0, result.stderr
    assert "deprecation notices only" in result.stderr


@pytest.mark.parametrize(
    "status_json",
    [
        {"errors": [], "recoverable_errors": {"WARNING": ["Failed to install packages"]}},
        {"errors": ["runcmd failed"], "recoverable_errors": {}},
    ],
    ids=["warning", "error"],
)
def test_other_recoverable_errors_fail(tmp_path: Path, status_json: dict) -> None:
    result = run_wait(tmp_path, 2, status_json, [STATIC], [])
    assert result.returncode == 1
    assert "cloud-init finished with errors (status 2)" in result.stderr


def test_a_dhcp_lease_beside_the_static_address_fails(tmp_path: Path) -> None:
    result = run_wait(tmp_path, 0, {"errors": []}, [STATIC, LEASE], [LEASE])
    assert result.returncode == 1
    assert "a DHCP lease besides the static address 10.0.20.10" in result.stderr
    assert "10.0.20.200" in result.stderr
