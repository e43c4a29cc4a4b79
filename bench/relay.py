"""A userspace TCP relay that shapes a link: fixed one-way delay per direction plus a token bucket
per direction shared by all connections (this kernel has no sch_netem).

    relay = ShapedRelay(("10.231.x.1", 6000), ("127.0.0.1", upstream_port),
                        delay_s=0.020, rate_bps=50e6)
    relay.start(); ...; relay.stop()

Per connection and direction: a reader takes up to 16 KiB, waits for that many tokens
(serialisation at ``rate_bps``, burst ``burst_bytes``), stamps it due ``delay_s`` later and
queues it; a writer sends each chunk when due. So: rate-limited, and each byte arrives
``delay_s`` after it was serialised, while later bytes keep flowing (a pipe, not stop-and-wait).
Threads only; stop() closes every socket it opened.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time

CHUNK = 16 * 1024


class TokenBucket:
    def __init__(self, rate_bps: float, burst_bytes: int) -> None:
        self.rate = rate_bps / 8  # bytes per second
        self.burst = burst_bytes
        self.tokens = float(burst_bytes)
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def take(self, count: int) -> None:
        while True:
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= count:
                    self.tokens -= count
                    return
                wait = (count - self.tokens) / self.rate
            time.sleep(wait)


class ShapedRelay:
    def __init__(
        self,
        listen: tuple[str, int],
        target: tuple[str, int],
        delay_s: float,
        rate_bps: float,
        burst_bytes: int = 64 * 1024,
    ) -> None:
        self.listen, self.target, self.delay = listen, target, delay_s
        self.rate_bps = rate_bps
        self.down = TokenBucket(rate_bps, burst_bytes)  # target -> client
        self.up = TokenBucket(rate_bps, burst_bytes)  # client -> target
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.server: socket.socket | None = None
        self.bytes_down = 0

    def describe(self) -> str:
        return (
            f"userspace TCP relay {self.listen[0]}:{self.listen[1]} -> "
            f"{self.target[0]}:{self.target[1]}: +{self.delay * 1000:.0f} ms one-way in each "
            f"direction (RTT +{2 * self.delay * 1000:.0f} ms), token bucket "
            f"{self.rate_bps / 1e6:.0f} Mbit/s per direction (burst {self.down.burst // 1024} KiB),"
            " shared by all connections"
        )

    def _track(self, sock: socket.socket) -> socket.socket:
        with self.lock:
            self.sockets.append(sock)
        return sock

    def start(self) -> None:
        server = self._track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(self.listen)
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        assert self.server is not None
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self._track(client)
            try:
                upstream = self._track(socket.create_connection(self.target, timeout=5))
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._pipe(client, upstream, self.up, count=False)
            self._pipe(upstream, client, self.down, count=True)

    def _pipe(
        self, src: socket.socket, dst: socket.socket, bucket: TokenBucket, count: bool
    ) -> None:
        chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def reader() -> None:
            try:
                while True:
                    data = src.recv(CHUNK)
                    if not data:
                        break
                    bucket.take(len(data))
                    chunks.put((time.monotonic() + self.delay, data))
            except OSError:
                pass
            chunks.put((time.monotonic() + self.delay, b""))

        def writer() -> None:
            try:
                while True:
                    due, data = chunks.get()
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    if not data:
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                    if count:
                        self.bytes_down += len(data)
            except OSError:
                with contextlib.suppress(OSError):
                    src.close()

        threading.Thread(target=reader, daemon=True).start()
        threading.Thread(target=writer, daemon=True).start()

    def stop(self) -> None:
        self.closed.set()
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            # shutdown first: close() alone does not wake a thread blocked in recv() on the same
            # socket, so the connection stayed open and its peer waited for bytes forever.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
