"""Run a real Distribution process for tests, on loopback by default, for either major version:
2.x is Debian's ``docker-registry`` (2.8), 3.x is v3.1.1 (``REGISTRY_V3_BINARY``, else the copy
scripts/testenv/setup-distribution3.sh unpacks into $TESTENV_CACHE).

    from tests.integration.registry_proc import start_registry

    registry = start_registry(config, tmp_path / "upstream")   # config: a Distribution dict
    registry = start_registry(config, workdir, major=2)        # default: the default image's major
    registry.url            # "http://127.0.0.1:<port>"
    registry.metrics_url    # "http://127.0.0.1:<port>/metrics" (if config has http.debug)
    registry.log()          # the process's output so far (access log included)
    registry.stop()         # kills by pid; also done by the context manager form:

    with running_registry(config, workdir) as registry: ...

    # A node in a test netns cannot reach the host's loopback: bind the host end of its veth,
    # on the port the node's settings name.
    start_registry(config, workdir, host=node_host.host_address, port=5000)

``http.addr`` (and ``http.debug.addr`` if present) are always rewritten to ``host`` (default
127.0.0.1) on ``port`` (default: a free one) and a free metrics port; everything else in
``config`` is used as given. ``host`` must be loopback or an address inside a netns the test
made. The process gets the environment the container gets in production
(``OTEL_TRACES_EXPORTER=none`` for 3.x).
``start_registry`` returns once ``/v2/`` answers and raises ``RegistryStartError`` (with the log
tail) if the process exits first, e.g. a proxy whose upstream is unreachable panics at start.
A missing binary skips the test saying how to get it, or fails it under CI=true (tests/prereq.py).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from components.renderers.registry_config import DISTRIBUTIONS
from components.settings import REGISTRY_MAJORS, RegistrySettings
from tests.prereq import missing

ROOT = Path(__file__).resolve().parents[2]
# What the default image runs: the rendered configs of the default settings are for this major.
DEFAULT_MAJOR = RegistrySettings().major
V3_BINARY_ENV = "REGISTRY_V3_BINARY"
V3_SETUP = ROOT / "scripts" / "testenv" / "setup-distribution3.sh"
V3_VERSION = "3.1.1"


class RegistryBinaryMissing(RuntimeError):
    pass


def _version(binary: str) -> str:
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError:
        return ""
    return result.stdout.strip()


def _testenv_cache() -> Path:
    return Path(os.environ.get("TESTENV_CACHE") or ROOT / ".cache")


@functools.cache
def find_registry_binary(major: int) -> str:
    """Path of Distribution ``major``'s registry command; RegistryBinaryMissing says how to get
    it. Checked with ``--version``, so a wrong binary never passes for the other major."""
    if major not in REGISTRY_MAJORS:
        raise ValueError(f"no Distribution {major}.x here (majors: {REGISTRY_MAJORS})")
    if major == 2:
        binary = shutil.which("docker-registry")
        if binary is None:
            raise RegistryBinaryMissing("docker-registry (Distribution 2.8) is not installed")
        if " 2." not in _version(binary):
            raise RegistryBinaryMissing(f"{binary} is not Distribution 2.x: {_version(binary)!r}")
        return binary
    configured = os.environ.get(V3_BINARY_ENV)
    if configured:
        if " v3." not in _version(configured):
            raise RegistryBinaryMissing(
                f"{V3_BINARY_ENV}={configured} is not a Distribution 3 binary "
                f"(--version printed {_version(configured)!r})"
            )
        return configured
    cached = _testenv_cache() / f"distribution-{V3_VERSION}" / "registry"
    if not cached.exists():
        # The setup step, once: unpacks shared/bin/registry-3.1.1.gz if it is there.
        subprocess.run(["bash", str(V3_SETUP)], capture_output=True, check=False)
    if " v3." in _version(str(cached)):
        return str(cached)
    raise RegistryBinaryMissing(
        f"Distribution {V3_VERSION} is missing ({V3_BINARY_ENV} unset, nothing unpacked in "
        f"{cached.parent}): get the registry binary of v{V3_VERSION} from the release tarball "
        f"registry_{V3_VERSION}_linux_amd64.tar.gz of distribution/distribution, or "
        f"`docker create --name r registry:{V3_VERSION} && docker cp r:/bin/registry .`, then "
        f"export {V3_BINARY_ENV}=$PWD/registry"
    )


def require_registry_binary(major: int) -> str:
    """For tests: the binary, or skip (fail under CI=true) with how to get it."""
    try:
        return find_registry_binary(major)
    except RegistryBinaryMissing as error:
        missing(str(error))
        raise AssertionError("unreachable") from None


class RegistryStartError(RuntimeError):
    pass


LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 1.0) -> bool:
    """True once ``url`` answers HTTP at all (any status)."""
    try:
        # Only ever a test's own address: loopback or inside a netns the test created.
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def wait_until_answers(
    url: str, timeout: float = 10.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RegistryStartError(f"registry exited with {process.returncode} before answering")
        if answers(url):
            return
        time.sleep(0.05)
    raise RegistryStartError(f"{url} did not answer within {timeout}s")


@dataclass
class RegistryProcess:
    process: subprocess.Popen
    config_path: Path
    log_path: Path
    port: int
    metrics_port: int | None
    host: str = LOOPBACK
    major: int = DEFAULT_MAJOR
    # Where /metrics listens when not on ``host`` (the VM: the registry on loopback behind the
    # front, its metrics on the public address).
    metrics_host: str | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def address(self) -> str:
        """``HOST:PORT``, as image references and skopeo want it."""
        return f"{self.host}:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        if self.metrics_port is None:
            return None
        return f"http://{self.metrics_host or self.host}:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        terminate(self.process, grace=5)


def terminate(process: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s; by pid only (never a pattern: other tests' and
    other people's processes stay alone)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)


def listen_config(
    config: Mapping[str, Any],
    port: int,
    metrics_port: int | None,
    *,
    host: str = LOOPBACK,
    metrics_host: str | None = None,
) -> dict[str, Any]:
    """``config`` with its listen addresses moved to ``host`` (metrics: ``metrics_host``, default
    ``host``); nothing else changed."""
    result = copy.deepcopy(dict(config))
    http = result.setdefault("http", {})
    http["addr"] = f"{host}:{port}"
    if "debug" in http and metrics_port is not None:
        http["debug"]["addr"] = f"{metrics_host or host}:{metrics_port}"
    return result


def start_registry(
    config: Mapping[str, Any],
    workdir: Path,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    metrics_port: int | None = None,
    metrics_host: str | None = None,
    major: int = DEFAULT_MAJOR,
    timeout: float = 10.0,
) -> RegistryProcess:
    """Write ``workdir/config.yml`` and serve it with Distribution ``major`` on ``host:port``;
    return when ``/v2/`` answers. A config with ``http.debug`` serves /metrics on
    ``metrics_port``: default ``port + 1`` for a fixed ``port`` (the settings' default
    ``metricsPort``, so a stack's ``mirrors`` output names it), else a free port.

    A fixed ``port`` can be served again after ``stop()`` (a new ``start_registry`` with the same
    ``workdir`` appends to the same log and reuses whatever storage ``config`` names).
    """
    binary = require_registry_binary(major)
    workdir.mkdir(parents=True, exist_ok=True)
    fixed_port = port is not None
    if port is None:
        port = free_port(host)
    elif answers(f"http://{host}:{port}/v2/"):
        # Else the wait below would take the other server's answer for ours.
        raise RegistryStartError(f"{host}:{port} is already served by another process")
    if "debug" not in (config.get("http") or {}):
        metrics_port = None
    elif metrics_port is None:
        metrics_port = port + 1 if fixed_port else free_port(host)
    config_path = workdir / "config.yml"
    config_path.write_text(
        yaml.safe_dump(
            listen_config(config, port, metrics_port, host=host, metrics_host=metrics_host)
        )
    )
    log_path = workdir / "registry.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            # The container's environment (e.g. no trace export for 3.x), as in production.
            env={**os.environ, **DISTRIBUTIONS[major].env},
        )
    registry = RegistryProcess(
        process, config_path, log_path, port, metrics_port, host, major, metrics_host
    )
    try:
        wait_until_answers(f"{registry.url}/v2/", timeout, process)
    except RegistryStartError as error:
        registry.stop()
        raise RegistryStartError(f"{error}\n--- log tail ---\n{registry.log()[-3000:]}") from None
    return registry


@contextlib.contextmanager
def running_registry(
    config: Mapping[str, Any], workdir: Path, **kwargs: Any
) -> Iterator[RegistryProcess]:
    registry = start_registry(config, workdir, **kwargs)
    try:
        yield registry
    finally:
        registry.stop()


def plain_registry_config(storage: Path) -> dict[str, Any]:
    """A plain (non-proxy) registry storing under ``storage``: a stand-in upstream."""
    return {
        "version": "0.1",
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": "127.0.0.1:0"},
    }
