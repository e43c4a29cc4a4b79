"""Shared pieces of the benchmark parts: figures (runs + median + target), cleanup, machine info."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass
class Figure:
    """One reported number: every run, their median, and the target it is checked against."""

    part: str
    name: str
    unit: str
    runs: list[float]
    target: str | None = None
    # Set by check(): True/False when there is a target, None otherwise.
    met: bool | None = None
    note: str = ""
    # A run that crashed or was stopped: what happened, never a number (the runs that finished
    # stay in ``runs``).
    failure: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.runs) if self.runs else float("nan")

    def check(self, ok: Callable[[float], bool], target: str) -> Figure:
        self.target = target
        self.met = not self.failure and bool(self.runs) and ok(self.median)
        return self

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["median"] = self.median
        return data


@dataclass
class PartResult:
    name: str
    figures: list[Figure] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure


def median(values: list[float]) -> float:
    return statistics.median(values)


class Interrupted(BaseException):
    """Raised in the main thread on SIGINT/SIGTERM so every ``finally`` cleans up."""


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into an exception while the benchmark runs (cleanup via finally)."""

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _version(argv: list[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "absent"
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return "?"
    return (result.stdout or result.stderr).strip().splitlines()[0]


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    def pkg(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "absent"

    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mb": mem_kb // 1024,
        "kernel": platform.release(),
        "os": _os_release(),
        "python": platform.python_version(),
        "versions": {
            "pulumi": pkg("pulumi"),
            "pulumi_command": pkg("pulumi_command"),
            "pulumi_proxmoxve": pkg("pulumi_proxmoxve"),
            "pulumi_docker": pkg("pulumi_docker"),
            "grpcio": pkg("grpcio"),
            "containerd": _version(["containerd", "--version"]),
            "docker-registry": _version(["docker-registry", "--version"]),
            "openssh": _ssh_version(),
        },
    }


def _os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def _ssh_version() -> str:
    if shutil.which("ssh") is None:
        return "absent"
    result = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return (result.stderr or result.stdout).strip()
