"""Every migrated config (version 1 or 2) is loaded by a REAL containerd 1.6 with the CRI plugin ok.

The control test proves the check can fail: the unmigrated wildcard file plus config_path makes
the cri plugin `error` while the daemon keeps running (FIELD-NOTES).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.renderers.containerd_config import migrate_config
from tests.integration.containerd_proc import CRI_PLUGIN, config_dump, start_containerd
from tests.prereq import require_binary, require_root

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "containerd"
NODE_VERSION = "1.6.20"
# containerd 1.6 reads version 1 and 2 files; version 3 results are checked structurally only.
CORPUS = [
    path
    for path in sorted(FIXTURES.glob("*.toml"))
    if migrate_config(path.read_text(), NODE_VERSION).config_version in (1, 2)
]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (no routes): a stray pull fails at once instead of leaking."""
    require_root()
    require_binary("ip")
    require_binary("containerd")
    require_binary("ctr")
    name = f"ctdtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


def _loads_with_cri_ok(config_text: str, tmp_path: Path, netns: str) -> tuple[str, str]:
    daemon = start_containerd(tmp_path, config_text, netns=netns)
    try:
        return daemon.plugins_status().get(CRI_PLUGIN, "missing"), daemon.log
    finally:
        daemon.stop()


@pytest.mark.parametrize("fixture", CORPUS, ids=lambda p: p.name)
def test_migrated_config_loads_with_cri_ok(fixture: Path, tmp_path: Path, netns: str) -> None:
    result = migrate_config(fixture.read_text(), NODE_VERSION)
    dump = config_dump(result.text, tmp_path)
    assert dump.returncode == 0, dump.stderr
    status, log = _loads_with_cri_ok(result.text, tmp_path, netns)
    assert status == "ok", log


def test_control_unmigrated_wildcard_with_config_path_makes_cri_error(
    tmp_path: Path, netns: str
) -> None:
    text = (FIXTURES / "wildcard-mirror.toml").read_text()
    # the half-done migration a node must never get: config_path added, mirrors left in place
    header = '[plugins."io.containerd.grpc.v1.cri".registry]\n'
    broken = text.replace(header, header + '    config_path = "/etc/containerd/certs.d"\n')
    assert broken != text
    assert config_dump(broken, tmp_path).returncode == 0  # dump does not catch it ...
    status, log = _loads_with_cri_ok(broken, tmp_path, netns)
    assert status == "error", log  # ... the daemon does
    assert "`mirrors` cannot be set when `config_path` is provided" in log


def test_control_tls_left_next_to_config_path_makes_cri_error(tmp_path: Path, netns: str) -> None:
    text = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".tls]\n'
        "  insecure_skip_verify = true\n"
    )
    status, log = _loads_with_cri_ok(text, tmp_path, netns)
    assert status == "error", log
    fixed = migrate_config(text, NODE_VERSION)
    status, log = _loads_with_cri_ok(fixed.text, tmp_path / "fixed", netns)
    assert status == "ok", log
