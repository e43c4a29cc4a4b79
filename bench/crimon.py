"""Watch a node while a step runs: CRI Version + Status polled from a background thread, and the
containerd pid (restarts = how many times it changed)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

POLL_SECONDS = 0.05


def cri_answers(socket: Path, timeout: float = 0.25) -> bool:
    """True if the CRI answers Version and Status (the RuntimeService kubelet uses)."""
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            stub = api_pb2_grpc.RuntimeServiceStub(channel)
            stub.Version(api_pb2.VersionRequest(), timeout=timeout)
            stub.Status(api_pb2.StatusRequest(), timeout=timeout)
        return True
    except grpc.RpcError:
        return False


@dataclass
class Watch:
    socket: Path
    pid_of: Callable[[], int | None]
    samples: list[tuple[float, bool]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            ok = cri_answers(self.socket)
            self.samples.append((time.monotonic(), ok))
            pid = self.pid_of()
            if pid is not None and (not self.pids or self.pids[-1] != pid):
                self.pids.append(pid)
            self._stop.wait(POLL_SECONDS)

    def __enter__(self) -> Watch:
        pid = self.pid_of()
        if pid is not None:
            self.pids.append(pid)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # A last look: a restart between the final sample and the end still counts.
        pid = self.pid_of()
        if pid is not None and (not self.pids or self.pids[-1] != pid):
            self.pids.append(pid)

    @property
    def restarts(self) -> int:
        return max(0, len(self.pids) - 1)

    @property
    def unavailable_seconds(self) -> float:
        """Longest span from the first failed poll to the next answered one (0 if none failed).
        Resolution: one poll interval plus a poll (~50-300 ms)."""
        longest, start = 0.0, None
        for when, ok in self.samples:
            if not ok and start is None:
                start = when
            elif ok and start is not None:
                longest, start = max(longest, when - start), None
        if start is not None and self.samples:
            longest = max(longest, self.samples[-1][0] - start)
        return longest
