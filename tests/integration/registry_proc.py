"""Run a real ``docker-registry`` (Distribution 2.8) process on loopback, for tests.

    from tests.integration.registry_proc import start_registry

    registry = start_registry(config, tmp_path / "upstream")   # config: a Distribution dict
    registry.url            # "http://127.0.0.1:<port>"
    registry.metrics_url    # "http://127.0.0.1:<port>/metrics" (if config has http.debug)
    registry.stop()         # kills by pid; also done by the context manager form:

    with running_registry(config, workdir) as registry: ...

``http.addr`` (and ``http.debug.addr`` if present) are always rewritten to free loopback ports;
everything else in ``config`` is used as given. ``start_registry`` returns once ``/v2/`` answers
and raises ``RegistryStartError`` (with the log tail) if the process exits first, e.g. a proxy
whose upstream is unreachable panics at start.
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


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str, timeout: float = 1.0) -> bool:
    """True once ``url`` answers HTTP at all (any status)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout):  # noqa: S310 (loopback http only)
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

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``, as image references and skopeo want it."""
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str | None:
        return (
            None if self.metrics_port is None else f"http://127.0.0.1:{self.metrics_port}/metrics"
        )

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


def loopback_config(
    config: Mapping[str, Any], port: int, metrics_port: int | None
) -> dict[str, Any]:
    """``config`` with its listen addresses moved to loopback ports (nothing else changed)."""
    result = copy.deepcopy(dict(config))
    http = result.setdefault("http", {})
    http["addr"] = f"127.0.0.1:{port}"
    if "debug" in http and metrics_port is not None:
        http["debug"]["addr"] = f"127.0.0.1:{metrics_port}"
    return result


def start_registry(
    config: Mapping[str, Any],
    workdir: Path,
    *,
    binary: str = BINARY,
    timeout: float = 10.0,
) -> RegistryProcess:
    """Write ``workdir/config.yml`` and serve it; return when ``/v2/`` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    metrics_port = free_port() if "debug" in (config.get("http") or {}) else None
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(loopback_config(config, port, metrics_port)))
    log_path = workdir / "registry.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    registry = RegistryProcess(process, config_path, log_path, port, metrics_port)
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
