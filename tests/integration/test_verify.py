"""scripts/verify.py against real local registries: a working mirror and a failing one."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from components.renderers.registry_config import render_registry_config
from tests.integration.oci_image import build_multiarch_image
from tests.integration.registry_proc import (
    RegistryProcess,
    free_port,
    plain_registry_config,
    start_registry,
)
from tests.prereq import require_binary
from tests.sample import sample_settings

ROOT = Path(__file__).resolve().parents[2]
VERIFY = ROOT / "scripts" / "verify.py"

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProcess]:
    """A rendered docker.io proxy in front of a local upstream holding library/probe:1."""
    require_binary("docker-registry")
    require_binary("skopeo")
    work = tmp_path_factory.mktemp("verify")
    upstream = start_registry(plain_registry_config(work / "upstream-data"), work / "upstream")
    image = build_multiarch_image(work / "layout", "1")
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", "--all", "--dest-tls-verify=false",
         image.oci_ref, f"docker://{upstream.address}/library/probe:1"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    settings = sample_settings()
    config = yaml.safe_load(render_registry_config(settings.upstreams[0], settings.registry))
    config["storage"]["filesystem"]["rootdirectory"] = str(work / "proxy-data")
    config["proxy"]["remoteurl"] = upstream.url
    proxy = start_registry(config, work / "proxy")
    try:
        yield proxy
    finally:
        proxy.stop()
        upstream.stop()


def _verify(tmp_path: Path, mirrors: dict, *args: str) -> subprocess.CompletedProcess:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"mirrors": mirrors}))
    return subprocess.run(
        [sys.executable, str(VERIFY), "--outputs", str(outputs), "--timeout", "5", *args],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_working_mirror_passes_and_resolves_through_the_proxy(mirror, tmp_path: Path):
    result = _verify(
        tmp_path,
        {"docker.io": {"endpoint": mirror.url, "container": "registry"}},
        "--image", "docker.io=library/probe:1",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "library/probe:1 -> sha256:" in result.stdout
    assert "all 2 checks passed" in result.stdout
    # The manifest really went through the proxy (it logs the request).
    assert "/v2/library/probe/manifests/1" in mirror.log()


def test_failing_mirror_and_missing_image_fail_with_advice(mirror, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"
    result = _verify(
        tmp_path,
        {
            "docker.io": {"endpoint": mirror.url, "container": "registry"},
            "ghcr.io": {"endpoint": dead, "container": "registry-ghcr"},
        },
        "--image", "docker.io=library/absent:1",
    )  # fmt: skip
    assert result.returncode == 1
    table = result.stdout
    assert "ghcr.io" in table and "FAIL" in table and "unreachable" in table
    assert "library/absent:1: HTTP 404" in table
    assert "docker ps -a --filter name=registry-ghcr" in result.stderr
    assert "2 check(s) failed" in result.stderr


def test_bad_outputs_exit_2(tmp_path: Path):
    result = _verify(tmp_path, {})
    assert result.returncode == 2
    assert "mirrors" in result.stderr
