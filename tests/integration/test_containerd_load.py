"""Every migrated config is loaded by a REAL containerd of each version in the table
(tests/integration/containerd_versions.py: 1.6.20, 1.7.24, 2.1.9, 2.2.9, 2.3.7) with the CRI
plugin ok AND config_path in effect, as that version reads the file (``containerd config dump``:
2.x drops the registry section of a version 1 file while the CRI plugin stays ok, so "ok" alone
proves nothing). Version 3 files are loaded by 2.x; 1.x cannot read them.

The control tests prove the checks can fail: mirrors next to config_path make the CRI plugin
`error` with that version's own text while the daemon keeps running (FIELD-NOTES).
"""

from __future__ import annotations

import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from components.renderers.containerd_config import DEFAULT_CONFIG_PATH, migrate_config
from tests.integration.containerd_proc import (
    CRI_PLUGIN,
    ContainerdProcess,
    config_dump,
    start_containerd,
)
from tests.integration.containerd_versions import VERSIONS, ContainerdVersion
from tests.prereq import require_binary, require_root

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "containerd"
MIRRORS_DEPRECATION = "io.containerd.deprecation/cri-registry-mirrors"


def _corpus() -> Iterator[Any]:
    for version in VERSIONS:
        for path in sorted(FIXTURES.glob("*.toml")):
            written = migrate_config(path.read_text(), version.version).config_version
            if written in version.config_versions:
                yield pytest.param(path, version, id=f"{version.series}-{path.name}")


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (no routes): a stray pull fails at once instead of leaking."""
    require_root()
    require_binary("ip")
    require_binary("unshare")
    name = f"ctdtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


def effective_config_path(text: str, tmp_path: Path, containerd: ContainerdVersion) -> Any:
    """config_path as ``containerd`` reads ``text``: from its own ``config dump``."""
    dump = config_dump(text, tmp_path, containerd)
    assert dump.returncode == 0, dump.stderr
    node: Any = tomllib.loads(dump.stdout)
    for part in (*containerd.effective_registry, "config_path"):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


def _load(
    config_text: str, tmp_path: Path, netns: str, containerd: ContainerdVersion
) -> ContainerdProcess:
    return start_containerd(tmp_path, config_text, netns=netns, containerd=containerd)


@pytest.mark.parametrize(("fixture", "containerd"), list(_corpus()))
def test_migrated_config_loads_with_cri_ok_and_config_path_in_effect(
    fixture: Path, containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    containerd.require()
    result = migrate_config(fixture.read_text(), containerd.version)
    assert effective_config_path(result.text, tmp_path, containerd) == DEFAULT_CONFIG_PATH
    daemon = _load(result.text, tmp_path, netns, containerd)
    try:
        assert daemon.plugins_status().get(CRI_PLUGIN) == "ok", daemon.log
        if containerd.has_deprecations:
            # The running daemon's own view: no `mirrors` entry survived the migration.
            assert MIRRORS_DEPRECATION not in daemon.deprecations(), daemon.log
    finally:
        daemon.stop()


def test_control_unmigrated_wildcard_with_config_path_makes_cri_error(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    text = (FIXTURES / "wildcard-mirror.toml").read_text()
    # the half-done migration a node must never get: config_path added, mirrors left in place
    header = '[plugins."io.containerd.grpc.v1.cri".registry]\n'
    broken = text.replace(header, header + '    config_path = "/etc/containerd/certs.d"\n')
    assert broken != text
    assert config_dump(broken, tmp_path, containerd).returncode == 0  # dump does not catch it ...
    daemon = _load(broken, tmp_path, netns, containerd)
    try:
        status = daemon.plugins_status()
        assert status.get(CRI_PLUGIN) == "error", daemon.log  # ... the daemon does
        assert status.get(containerd.conflict_plugin) == "error", daemon.log
        assert containerd.conflict_error in daemon.log
        assert containerd.conflict_error in daemon.plugin_errors()
    finally:
        daemon.stop()


def test_control_mirrors_alone_are_named_by_ctr_deprecations(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    """The unmigrated file: CRI ok, and 1.7+ name the mirrors as a deprecation (the signal
    apply-config.sh and verify.py read); 1.6 has no such command (they report "unsupported")."""
    daemon = _load((FIXTURES / "wildcard-mirror.toml").read_text(), tmp_path, netns, containerd)
    try:
        assert daemon.plugins_status().get(CRI_PLUGIN) == "ok", daemon.log
        if containerd.has_deprecations:
            assert MIRRORS_DEPRECATION in daemon.deprecations()
        else:
            assert daemon.ctr("deprecations", "list").returncode != 0
    finally:
        daemon.stop()


def test_control_tls_left_next_to_config_path(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    text = (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        '  config_path = "/etc/containerd/certs.d"\n'
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."r.example".tls]\n'
        "  insecure_skip_verify = true\n"
    )
    daemon = _load(text, tmp_path, netns, containerd)
    try:
        # 1.x refuses `configs.tls` next to config_path; 2.1 accepts (and ignores) it.
        expected = "error" if containerd.refuses_tls_with_config_path else "ok"
        assert daemon.plugins_status().get(CRI_PLUGIN) == expected, daemon.log
        refused = "`configs.tls` cannot be set when `config_path` is provided"
        assert (f"invalid plugin config: {refused}" in daemon.log) == (
            containerd.refuses_tls_with_config_path
        )
    finally:
        daemon.stop()
    fixed = migrate_config(text, containerd.version)
    daemon = _load(fixed.text, tmp_path / "fixed", netns, containerd)
    try:
        assert daemon.plugins_status().get(CRI_PLUGIN) == "ok", daemon.log
    finally:
        daemon.stop()
