"""Run a real ``docker-registry`` (Distribution 2.8) process for tests, on loopback by default.

    from tests.integration.registry_proc import start_registry

    registry = start_registry(config, tmp_path / "upstream")   # config: a Distribution dict
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
``config`` is used as given. ``host`` must be loopback or an address inside a netns the test made.
``start_registry`` returns once ``/v2/`` answers and raises ``RegistryStartError`` (with the log
tail) if the process exits first, e.g. a proxy whose upstream is unreachable panics at start.
"""

from __future__ import annotations

import contextlib
import copy
import os
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

BINARY = "docker-registry"


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
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; by pid only."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def listen_config(
    config: Mapping[str, Any], port: int, metrics_port: int | None, *, host: str = LOOPBACK
) -> dict[str, Any]:
    """``config`` with its listen addresses moved to ``host`` (nothing else changed)."""
    result = copy.deepcopy(dict(config))
    http = result.setdefault("http", {})
    http["addr"] = f"{host}:{port}"
    if "debug" in http and metrics_port is not None:
        http["debug"]["addr"] = f"{host}:{metrics_port}"
    return result


def start_registry(
    config: Mapping[str, Any],
    workdir: Path,
    *,
    host: str = LOOPBACK,
    port: int | None = None,
    binary: str = BINARY,
    timeout: float = 10.0,
) -> RegistryProcess:
    """Write ``workdir/config.yml`` and serve it on ``host:port``; return when ``/v2/`` answers.

    A fixed ``port`` can be served again after ``stop()`` (a new ``start_registry`` with the same
    ``workdir`` appends to the same log and reuses whatever storage ``config`` names).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port(host)
    elif answers(f"http://{host}:{port}/v2/"):
        # Else the wait below would take the other server's answer for ours.
        raise RegistryStartError(f"{host}:{port} is already served by another process")
    metrics_port = free_port(host) if "debug" in (config.get("http") or {}) else None
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(listen_config(config, port, metrics_port, host=host)))
    log_path = workdir / "registry.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    registry = RegistryProcess(process, config_path, log_path, port, metrics_port, host)
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
