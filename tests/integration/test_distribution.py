"""The rendered registry configs, run by the real Distribution binary (Debian docker-registry 2.8).

Every default upstream's config is served as rendered, with only the listen addresses (loopback),
the storage root and ``proxy.remoteurl`` (a local plain registry) rewritten. Traffic stays on
127.0.0.1: no test ever reaches a real upstream.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.renderers import maintenance
from components.renderers.registry_config import check_registry_config, render_registry_config
from components.renderers.shell import SCRIPTS_DIR
from components.settings import DEFAULT_UPSTREAMS, Upstream
from tests.integration.oci_image import MultiArchImage, build_multiarch_image
from tests.integration.registry_proc import (
    RegistryStartError,
    answers,
    free_port,
    listen_config,
    plain_registry_config,
    running_registry,
    start_registry,
    wait_until_answers,
)
from tests.prereq import require_binary
from tests.sample import sample_settings

pytestmark = pytest.mark.integration

MAINTENANCE_SCRIPT = SCRIPTS_DIR / maintenance.SCRIPT_SOURCE


@dataclass(frozen=True)
class UpstreamStore:
    """Storage of a plain registry that holds the test image; serve it with ``serve()``."""

    storage: Path
    image: MultiArchImage
    workdir: Path

    def serve(self, name: str) -> contextlib.AbstractContextManager[Any]:
        return running_registry(plain_registry_config(self.storage), self.workdir / name)


def _repository(upstream: Upstream) -> str:
    # Docker Hub's official images live under library/, which clients add implicitly.
    return "library/testimage" if upstream.host == "docker.io" else "mirrors-test/testimage"


def _skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    # --insecure-policy: signature policy is not under test; *-tls-verify=false: loopback http.
    return subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120
    )


def _pull(source: str, dest: Path, *, all_platforms: bool = True) -> subprocess.CompletedProcess:
    extra = ["--all"] if all_platforms else []
    return _skopeo("copy", *extra, "--src-tls-verify=false", source, f"oci:{dest}:pulled")


@pytest.fixture(scope="module")
def upstream_store(tmp_path_factory: pytest.TempPathFactory) -> UpstreamStore:
    """One image, pushed once to one upstream's storage; every test serves that storage."""
    for binary in ("docker-registry", "skopeo"):
        require_binary(binary)
    workdir = tmp_path_factory.mktemp("upstream")
    image = build_multiarch_image(workdir / "layout", "1", size_bytes=256 * 1024)
    store = UpstreamStore(workdir / "storage", image, workdir)
    with store.serve("push") as upstream:
        for upstream_setting in DEFAULT_UPSTREAMS:
            repository = _repository(upstream_setting)
            pushed = _skopeo(
                "copy",
                "--all",
                "--dest-tls-verify=false",
                image.oci_ref,
                f"docker://{upstream.address}/{repository}:1",
            )
            assert pushed.returncode == 0, pushed.stderr
    return store


def _proxy_config(upstream: Upstream, storage: Path, remote_url: str, **kw: Any) -> dict:
    """The RENDERED config (parsed back from its YAML text), pointed at local paths/upstream."""
    settings = sample_settings()
    config = yaml.safe_load(render_registry_config(upstream, settings.registry, **kw))
    config["storage"]["filesystem"]["rootdirectory"] = str(storage)
    config["proxy"]["remoteurl"] = remote_url
    return config


def _blob_path(storage: Path, digest: str) -> Path:
    hex_digest = digest.removeprefix("sha256:")
    return storage / "docker/registry/v2/blobs/sha256" / hex_digest[:2] / hex_digest / "data"


def _pulled_index_digest(layout: Path) -> str:
    index = yaml.safe_load((layout / "index.json").read_text())
    return index["manifests"][0]["digest"]


@pytest.mark.parametrize("upstream", DEFAULT_UPSTREAMS, ids=lambda u: u.host)
def test_rendered_proxy_caches_and_serves_with_upstream_down(
    upstream: Upstream, upstream_store: UpstreamStore, tmp_path: Path
) -> None:
    image = upstream_store.image
    # Docker Hub is the one that needs credentials (rate limits): prove the rendered keys load.
    credentials = ("ci-user", "ci-password") if upstream.host == "docker.io" else None
    storage = tmp_path / "cache"
    repository = _repository(upstream)
    with upstream_store.serve(f"up-{upstream.container}") as origin:
        config = _proxy_config(upstream, storage, origin.url, credentials=credentials)
        with running_registry(config, tmp_path / "proxy") as proxy:
            first = _pull(f"docker://{proxy.address}/{repository}:1", tmp_path / "first")
            assert first.returncode == 0, first.stderr + proxy.log()[-2000:]
            assert _pulled_index_digest(tmp_path / "first") == image.index_digest
            # The proxy writes blobs to disk as it streams them: wait for the last write.
            for digest in (
                image.index_digest,
                *image.manifest_digests.values(),
                *image.blob_digests,
            ):
                path = _blob_path(storage, digest)
                _wait_for(path.exists, f"{digest} cached at {path}")
            assert _blob_path(storage, image.blob_digests[1]).stat().st_size > 200 * 1024

            assert proxy.metrics_url is not None
            with urllib.request.urlopen(proxy.metrics_url, timeout=5) as response:  # noqa: S310
                metrics = response.read().decode()
            assert "registry_http_requests_total" in metrics

            origin.stop()
            assert not answers(f"{origin.url}/v2/")
            again = _pull(f"docker://{proxy.address}/{repository}:1", tmp_path / "again")
            assert again.returncode == 0, again.stderr + proxy.log()[-2000:]
            assert _pulled_index_digest(tmp_path / "again") == image.index_digest
            # Access logs stay on (log level info): every pull is visible in the registry's log.
            assert f"GET /v2/{repository}/manifests/1" in proxy.log()


def _wait_for(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_schema_rejects_misspelled_key_that_distribution_silently_accepts(
    upstream_store: UpstreamStore, tmp_path: Path
) -> None:
    upstream = DEFAULT_UPSTREAMS[1]
    repository = _repository(upstream)
    with upstream_store.serve("up-typo") as origin:
        config = _proxy_config(upstream, tmp_path / "cache", origin.url)
        config["proxy"]["remoteurll"] = config["proxy"].pop("remoteurl")

        problems = check_registry_config(config)
        assert "proxy.remoteurll: unknown key (Distribution would silently ignore it)" in problems

        # The real binary starts happily with the typo ...
        with running_registry(config, tmp_path / "typo") as registry:
            assert answers(f"{registry.url}/v2/")
            # ... and is a plain empty registry, not a proxy: the image is not found.
            pulled = _pull(f"docker://{registry.address}/{repository}:1", tmp_path / "out")
            assert pulled.returncode != 0
            assert "manifest unknown" in pulled.stderr.lower()
            assert "panic" not in registry.log()


# --- maintenance script, run for real -----------------------------------------------------------
# A stand-in for the docker client: `start NAME` serves CONFIG_ROOT/NAME/config.yml with the real
# binary (detached, pid in STATE/NAME.pid), `stop NAME` kills that pid and waits. Every call is
# appended to STATE/calls so the test can check the script's order: stop, GC, start.
FAKE_DOCKER = r"""#!/usr/bin/env bash
set -euo pipefail
echo "$*" >>"$FAKE_DOCKER_STATE/calls"
[[ ${FAKE_DOCKER_RECORD_ONLY:-0} == 1 ]] && exit 0
action=$1
name=${!#}
pidfile="$FAKE_DOCKER_STATE/$name.pid"
stop() {
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null || true
    # Exited, or a zombie of an exited parent: either way it no longer serves.
    while [[ -e /proc/$pid ]] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null; do
        sleep 0.05
    done
    rm -f "$pidfile"
}
start() {
    setsid docker-registry serve "$REGISTRY_CONFIG_ROOT/$name/config.yml" \
        >>"$FAKE_DOCKER_STATE/$name.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
}
case $action in
stop) stop ;;
start) start ;;
restart) stop; start ;;
*) echo "fake docker: unsupported $action" >&2; exit 1 ;;
esac
"""


@dataclass
class VmLayout:
    env: dict[str, str]
    state: Path
    config_root: Path
    data_root: Path

    def calls(self) -> list[str]:
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def pid(self, name: str) -> int | None:
        path = self.state / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(MAINTENANCE_SCRIPT), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def vm_layout(tmp_path: Path) -> Iterator[VmLayout]:
    require_binary("flock")
    registry_binary = require_binary("docker-registry")
    state = tmp_path / "docker-state"
    state.mkdir()
    fake = tmp_path / "fake-docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    layout = VmLayout(
        env={
            **os.environ,
            "REGISTRY_DOCKER": str(fake),
            "REGISTRY_GC_COMMAND": registry_binary,
            "REGISTRY_CONFIG_ROOT": str(tmp_path / "etc-docker-registry"),
            "REGISTRY_DATA_ROOT": str(tmp_path / "var-lib-registry"),
            "REGISTRY_LOCK_DIR": str(tmp_path / "lock"),
            "FAKE_DOCKER_STATE": str(state),
        },
        state=state,
        config_root=tmp_path / "etc-docker-registry",
        data_root=tmp_path / "var-lib-registry",
    )
    yield layout
    for pidfile in state.glob("*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_gc_procedure_keeps_multiarch_children_pullable_by_digest(
    upstream_store: UpstreamStore, vm_layout: VmLayout, tmp_path: Path
) -> None:
    upstream = DEFAULT_UPSTREAMS[0]
    name = upstream.container
    image = upstream_store.image
    repository = _repository(upstream)
    storage = vm_layout.data_root / name
    port, metrics_port = free_port(), free_port()
    proxy_url = f"http://127.0.0.1:{port}"

    with upstream_store.serve("up-gc") as origin:
        config = listen_config(_proxy_config(upstream, storage, origin.url), port, metrics_port)
        (vm_layout.config_root / name).mkdir(parents=True)
        (vm_layout.config_root / name / "config.yml").write_text(yaml.safe_dump(config))
        subprocess.run(
            [vm_layout.env["REGISTRY_DOCKER"], "start", name], env=vm_layout.env, check=True
        )
        wait_until_answers(f"{proxy_url}/v2/")
        first_pid = vm_layout.pid(name)

        warm = _pull(f"docker://127.0.0.1:{port}/{repository}:1", tmp_path / "warm")
        assert warm.returncode == 0, warm.stderr
        for digest in image.blob_digests:
            _wait_for(_blob_path(storage, digest).exists, f"{digest} cached")

        gc = vm_layout.run("gc", name)
        assert gc.returncode == 0, gc.stderr
        # Stopped before GC (GC under a serving registry corrupts it), started after.
        assert vm_layout.calls() == ["start " + name, f"stop --time 30 {name}", f"start {name}"]
        assert "blobs marked" in gc.stdout + gc.stderr, gc.stderr
        assert "garbage collection done" in gc.stderr
        assert vm_layout.pid(name) not in (None, first_pid)
        wait_until_answers(f"{proxy_url}/v2/")

    # Upstream gone: whatever is served now comes from what GC left on disk.
    assert not answers(f"{origin.url}/v2/")
    by_index = _pull(
        f"docker://127.0.0.1:{port}/{repository}@{image.index_digest}", tmp_path / "index"
    )
    assert by_index.returncode == 0, by_index.stderr
    for platform, digest in image.manifest_digests.items():
        child = _pull(
            f"docker://127.0.0.1:{port}/{repository}@{digest}",
            tmp_path / platform.replace("/", "-"),
            all_platforms=False,
        )
        assert child.returncode == 0, f"{platform} {digest}: {child.stderr}"
    for digest in image.blob_digests:
        assert _blob_path(storage, digest).exists(), f"GC removed {digest}"


def test_restart_is_skipped_while_gc_holds_the_lock(vm_layout: VmLayout) -> None:
    env = {**vm_layout.env, "FAKE_DOCKER_RECORD_ONLY": "1"}
    vm_layout.env = env
    lock_dir = Path(env["REGISTRY_LOCK_DIR"])
    lock_dir.mkdir()
    with (lock_dir / "registry-maintenance-registry-ghcr.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        skipped = vm_layout.run("restart", "registry-ghcr")
        assert skipped.returncode == 0, skipped.stderr
        assert "skipped: garbage collection in progress" in skipped.stderr
        assert vm_layout.calls() == []
        # A GC waiting for the same lock gives up after REGISTRY_GC_LOCK_WAIT, touching nothing.
        (vm_layout.config_root / "registry-ghcr").mkdir(parents=True)
        (vm_layout.config_root / "registry-ghcr" / "config.yml").write_text("version: '0.1'\n")
        # A cache that holds something (an empty one has nothing to collect: no lock needed).
        (vm_layout.data_root / "registry-ghcr" / "docker/registry/v2/repositories").mkdir(
            parents=True
        )
        vm_layout.env = {**env, "REGISTRY_GC_LOCK_WAIT": "1"}
        waited = vm_layout.run("gc", "registry-ghcr")
        assert waited.returncode == 1
        assert vm_layout.calls() == []
    vm_layout.env = env
    restarted = vm_layout.run("restart", "registry-ghcr")
    assert restarted.returncode == 0, restarted.stderr
    assert vm_layout.calls() == ["restart --time 30 registry-ghcr"]


def test_vm_scripts_are_shellcheck_clean() -> None:
    shellcheck = require_binary("shellcheck")
    scripts = sorted((SCRIPTS_DIR / "vm").glob("*.sh"))
    assert MAINTENANCE_SCRIPT in scripts
    result = subprocess.run(
        [shellcheck, "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_start_registry_reports_a_proxy_panic(tmp_path: Path) -> None:
    """The reason for restart=always: a proxy whose upstream is down at start panics."""
    require_binary("docker-registry")
    dead = f"http://127.0.0.1:{free_port()}"
    config = _proxy_config(DEFAULT_UPSTREAMS[2], tmp_path / "cache", dead)
    with pytest.raises(Exception, match="panic"):
        start_registry(config, tmp_path / "proxy")


def test_start_registry_binds_the_given_host_and_can_serve_a_fixed_port_again(
    tmp_path: Path,
) -> None:
    """What the node e2e relies on: a registry on the address a netns can reach, on the port the
    node's settings name, startable again on that port after stop()."""
    require_binary("docker-registry")
    host = "127.0.0.2"  # loopback, but not the default: the host really reaches http.addr
    port = free_port(host)
    config = plain_registry_config(tmp_path / "data")

    first = start_registry(config, tmp_path / "fixed", host=host, port=port)
    try:
        assert (first.url, first.address) == (f"http://{host}:{port}", f"{host}:{port}")
        assert yaml.safe_load(first.config_path.read_text())["http"]["addr"] == f"{host}:{port}"
        assert not answers(f"http://127.0.0.1:{port}/v2/")
        with pytest.raises(RegistryStartError, match="already served"):
            start_registry(config, tmp_path / "clash", host=host, port=port)
    finally:
        first.stop()
    assert not answers(f"{first.url}/v2/")

    with running_registry(config, tmp_path / "fixed", host=host, port=port) as again:
        assert again.url == first.url
        assert answers(f"{again.url}/v2/")


def test_install_file_writes_secret_config_0600_atomically_and_remove_deletes_it(
    tmp_path: Path,
) -> None:
    """The exact command text the component sends, run by a POSIX sh (any login shell)."""
    from components.renderers.shell import remote_command

    dest = tmp_path / "etc" / "registry" / "config.yml"
    data_dir = tmp_path / "var" / "registry"
    content = "proxy:\n  password: s3cret\n"
    install = remote_command(
        "vm/install-file.sh", {"DEST": str(dest), "MODE": "0600", "EXTRA_DIR": str(data_dir)}
    )
    assert "s3cret" not in install
    done = subprocess.run(["sh", "-c", install], input=content, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert dest.read_text() == content
    assert dest.stat().st_mode & 0o777 == 0o600
    assert data_dir.is_dir()
    assert "s3cret" not in done.stdout + done.stderr
    assert done.stdout.strip() == hashlib.sha256(content.encode()).hexdigest()
    assert [p.name for p in dest.parent.iterdir()] == ["config.yml"]  # no temp file left

    # The delete step; even if it were handed the resource's stdin, it only removes.
    removed = subprocess.run(
        ["sh", "-c", remote_command("vm/install-file.sh", {"DEST": str(dest), "REMOVE": 1})],
        input=content,
        capture_output=True,
        text=True,
    )
    assert removed.returncode == 0, removed.stderr
    assert not dest.exists()
    assert data_dir.is_dir()  # the cache is kept
