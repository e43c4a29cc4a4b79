"""Part "drain": what a SIGTERM does to a blob transfer in flight, per Distribution major, with and
without ``http.draintimeout``, and what a NEW connection gets while the registry drains.

Issue 25's measurement, reproduced: a 20 MB layer served through the RENDERED config (a plain
Distribution 2.8 on loopback as its upstream), read by a client at 2 MB/s (a small receive
buffer, so the registry is still writing), SIGTERM to the registry 2 s into the transfer. Each
round does it cold (the layer is a miss: the proxy streams it from the upstream) and warm (a hit),
without ``http.draintimeout`` (the control) and with the rendered one. While the registry drains:
- a new TCP connection to its port (what a node's pull dials), timed;
- a request on a keep-alive connection opened before the SIGTERM and idle since (a node's
  connection pool): Go's client, containerd's, retries such a request on a new connection when
  the server closed the idle one, so what counts is that the server closed it and the new dial
  is refused;
- the debug/metrics port.
No root, loopback only.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Figure, PartResult
from components.renderers.registry_config import DRAIN_TIMEOUT_SECONDS, render_registry_config
from components.settings import DEFAULT_UPSTREAMS, RegistrySettings
from tests.integration.oci_image import build_multiarch_image
from tests.integration.registry_proc import (
    RegistryProcess,
    plain_registry_config,
    start_registry,
)
from tests.sample import REGISTRY_IMAGES as IMAGES

LABELS = {2: "2.8", 3: "3.1.1"}
LAYER_BYTES = 20 * 1000 * 1000
RATE = 2e6  # bytes per second
SIGTERM_AFTER_S = 2.0
REPOSITORY = "library/big"
MB = 1e6


def slow_get(
    address: tuple[str, int], path: str, digest: str, out: dict[str, Any], rate: float = RATE
) -> None:
    sha = hashlib.sha256()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    out.update(received=0, complete=False, error="")
    started = time.monotonic()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.settimeout(120)
        sock.connect(address)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        response = http.client.HTTPResponse(sock, method="GET")
        response.begin()
        out["expected"] = int(response.getheader("Content-Length") or -1)
        started = time.monotonic()
        while chunk := response.read(32 * 1024):
            sha.update(chunk)
            out["received"] += len(chunk)
            ahead = out["received"] / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        out["complete"] = f"sha256:{sha.hexdigest()}" == digest
    except (OSError, http.client.HTTPException) as error:
        out["error"] = repr(error)
    finally:
        out["seconds"] = time.monotonic() - started
        sock.close()


def dial(address: tuple[str, int]) -> tuple[str, float]:
    """A new connection and a GET /v2/ on it: (what happened, ms until it happened)."""
    start = time.monotonic()
    try:
        sock = socket.create_connection(address, timeout=5)
    except OSError as error:
        return type(error).__name__, (time.monotonic() - start) * 1000
    with sock:
        try:
            sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: bench\r\n\r\n")
            answer = sock.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
            return f"connected: {answer or 'closed'}", (time.monotonic() - start) * 1000
        except OSError as error:
            return f"connected, then {type(error).__name__}", (time.monotonic() - start) * 1000


def reuse_idle(conn: http.client.HTTPConnection) -> str:
    """A request on a keep-alive connection that was idle across the SIGTERM."""
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return f"answered HTTP {response.status}"
    except (OSError, http.client.HTTPException) as error:
        return f"server had closed it ({type(error).__name__})"
    finally:
        conn.close()


def proxy_config(major: int, storage: Path, remote_url: str, drain: bool) -> dict[str, Any]:
    registry = RegistrySettings(image=IMAGES[major])
    config = yaml.safe_load(render_registry_config(DEFAULT_UPSTREAMS[0], registry))
    config["storage"]["filesystem"]["rootdirectory"] = str(storage)
    config["proxy"]["remoteurl"] = remote_url
    if not drain:
        del config["http"]["draintimeout"]
    return config


def one_stop(
    major: int, workdir: Path, upstream: RegistryProcess, layer: str, drain: bool, warm: bool
) -> dict[str, Any]:
    proxy = start_registry(
        proxy_config(major, workdir / "cache", upstream.url, drain), workdir / "proxy", major=major
    )
    result: dict[str, Any] = {}
    try:
        address = (proxy.host, proxy.port)
        path = f"/v2/{REPOSITORY}/blobs/{layer}"
        if warm:
            warmed: dict[str, Any] = {}
            slow_get(address, path, layer, warmed, rate=1e12)
            assert warmed["complete"], warmed
        idle = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
        idle.request("GET", "/v2/")
        idle.getresponse().read()
        out: dict[str, Any] = {}
        reader = threading.Thread(target=slow_get, args=(address, path, layer, out), daemon=True)
        reader.start()
        time.sleep(SIGTERM_AFTER_S)
        signalled = time.monotonic()
        os.kill(proxy.process.pid, signal.SIGTERM)
        time.sleep(0.2)
        if proxy.process.poll() is None:
            result["new_connection"], result["new_connection_ms"] = dial(address)
            result["idle_keepalive"] = reuse_idle(idle)
            assert proxy.metrics_port is not None
            result["metrics_port"] = dial((proxy.host, proxy.metrics_port))[0]
        else:
            idle.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(timeout=DRAIN_TIMEOUT_SECONDS + 30)
        result["exit_after_s"] = time.monotonic() - signalled
        result["exit_code"] = proxy.process.returncode
        reader.join(timeout=120)
        result.update(received_mb=out["received"] / MB, complete=out["complete"],
                      transfer_s=out["seconds"], error=out["error"])  # fmt: skip
    finally:
        proxy.stop()
        shutil.rmtree(workdir / "cache", ignore_errors=True)
    return result


def run(rounds: int = 3, log: Any = print) -> PartResult:
    part = PartResult("drain")
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-drain-"))
    upstream = None
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        image = build_multiarch_image(
            workdir / "layout", "1", size_bytes=LAYER_BYTES, platforms=("linux/amd64",)
        )
        layer = image.blob_digests[1]
        upstream = start_registry(plain_registry_config(workdir / "upstream-data"),
                                  workdir / "upstream", major=2)  # fmt: skip
        subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", "--all", "--dest-tls-verify=false",
             image.oci_ref, f"docker://{upstream.address}/{REPOSITORY}:1"],
            check=True, capture_output=True,
        )  # fmt: skip
        for round_ in range(rounds):
            for major in IMAGES:
                for drain in (False, True):
                    for warm in (False, True):
                        key = "-".join(
                            (
                                str(major),
                                "drain" if drain else "nodrain",
                                "warm" if warm else "cold",
                            )
                        )
                        case = workdir / f"r{round_}-{key}"
                        outcome = one_stop(major, case, upstream, layer, drain, warm)
                        results.setdefault(key, []).append(outcome)
                        log(f"  round {round_ + 1} {key}: {outcome}")
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    part.info["cases"] = results
    part.info["setup"] = (
        f"{LAYER_BYTES / MB:.0f} MB layer, client at {RATE / MB:.0f} MB/s with a 64 KiB receive "
        f"buffer, SIGTERM {SIGTERM_AFTER_S:.0f} s into the transfer; rendered draintimeout "
        f"{DRAIN_TIMEOUT_SECONDS}s"
    )
    _figures(part, results)
    return part


def _figures(part: PartResult, results: dict[str, list[dict[str, Any]]]) -> None:
    for major in IMAGES:
        tag = LABELS[major]
        for warm in ("cold", "warm"):
            cut = results[f"{major}-nodrain-{warm}"]
            drained = results[f"{major}-drain-{warm}"]
            complete_cut = sum(r["complete"] for r in cut)
            part.add(Figure("drain", f"{tag} {warm}: no drain: MB received of 20", "MB",
                            [r["received_mb"] for r in cut],
                            note=f"{complete_cut}/{len(cut)} complete"))  # fmt: skip
            total = len(drained)
            complete = sum(r["complete"] for r in drained)
            done = Figure("drain", f"{tag} {warm}: drain: transfers complete", "count",
                          [float(complete)], note=f"of {total}")  # fmt: skip
            part.add(done.check(lambda v, n=total: v == n, "all"))
            part.add(Figure("drain", f"{tag} {warm}: drain: SIGTERM to exit", "s",
                            [r["exit_after_s"] for r in drained],
                            note="until the rest is written (its end waits in buffers)"),
                     )  # fmt: skip
            kinds = sorted({str(r.get("new_connection")) for r in drained})
            refused = [r for r in drained if r.get("new_connection") == "ConnectionRefusedError"]
            figure = Figure("drain", f"{tag} {warm}: drain: a new connection refused in", "ms",
                            [r["new_connection_ms"] for r in refused],
                            note=", ".join(kinds))  # fmt: skip
            everyone = len(refused) == total
            part.add(figure.check(lambda _v, ok=everyone: ok, "every time"))
