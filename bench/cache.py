"""Part 3: what the cache buys. A CRI pull of a ~30 MB multi-layer image with the upstream behind a
shaped link: direct from upstream, cold through the mirror, warm through the mirror, warm with the
mirror stopped (fallback to ``server``).

Topology (all on this machine; the node's netns has no default route):
- node: tests/integration/testhost.py host (containerd 1.6 + sshd in a netns), configured by the
  project's node scripts (probe/hosts/config) with the e2e test's settings: docker.io's mirror =
  the host end of the veth :5000, ``server`` = the host end :6000;
- :6000 is bench/relay.py (delay + token bucket) in front of a plain Distribution on loopback
  (the "upstream");
- :5000 is a Distribution proxy rendered by the project (remoteurl = the relay, so the mirror's
  own upstream fetches cross the same shaped link); mirror <-> node is unshaped (a LAN).
- "direct" pulls ``<host>:6000/library/bench:1`` (a bench-written hosts.toml for that host:
  plain http, no mirror): same bytes, same link, no cache.
Between runs the image is removed from containerd (CRI RemoveImage); "cold" also stops the proxy,
deletes its storage and starts it again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from bench.common import Figure, PartResult, median
from bench.image import build
from bench.node_change import apply_node, reset, test_host
from bench.relay import ShapedRelay
from tests.integration import cri_client
from tests.integration.registry_proc import RegistryProcess, plain_registry_config, start_registry
from tests.integration.test_node_e2e import make_settings, proxy_config

DELAY_ONE_WAY_S = 0.020  # RTT + 40 ms
RATE_BPS = 50e6
TAG = "1"


def tbf_check(rate: str = "50mbit", payload: int = 8 * 1024 * 1024) -> dict[str, Any]:
    """Does sch_tbf work here? A veth into a throwaway netns, tbf on the sending side, and the
    throughput of a real TCP transfer through it. Everything removed afterwards."""
    token = os.urandom(2).hex()
    netns, host_if, ns_if = f"rmb-tbf-{token}", f"rmbh{token}", f"rmbn{token}"
    third = int(token[:2], 16)
    host_addr, ns_addr = f"10.232.{third}.1", f"10.232.{third}.2"
    result: dict[str, Any] = {"rate": rate, "payload_bytes": payload}
    sender: subprocess.Popen[bytes] | None = None
    created = False

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", netns)
        created = True
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", netns)
        ip("addr", "add", f"{host_addr}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", netns, "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        ip("-n", netns, "link", "set", ns_if, "up")
        tc = subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", ns_if, "root", "tbf",
             "rate", rate, "burst", "64kb", "latency", "50ms"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        result["tbf_accepted"] = tc.returncode == 0
        result["tbf_error"] = tc.stderr.strip()
        netem = subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
             "delay", "40ms"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        result["netem_accepted"] = netem.returncode == 0
        result["netem_error"] = netem.stderr.strip()
        # A sender inside the netns: its egress is the tbf'd interface.
        code = (
            f"import socket;s=socket.create_server(('{ns_addr}',7000));c,_=s.accept();"
            f"c.sendall(b'x'*{payload});c.close()"
        )
        sender = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", code])
        deadline = time.monotonic() + 5
        while True:
            try:
                conn = socket.create_connection((ns_addr, 7000), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        start, got = time.monotonic(), 0
        with conn:
            while chunk := conn.recv(65536):
                got += len(chunk)
        seconds = time.monotonic() - start
        result["received_bytes"] = got
        result["measured_mbit_s"] = got * 8 / seconds / 1e6
    finally:
        if sender is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sender.pid, signal.SIGKILL)
            sender.wait(timeout=5)
        if created:
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True, check=False)
            subprocess.run(["ip", "link", "delete", host_if], capture_output=True, check=False)
    return result


def _rtt_ms(url: str, samples: int = 7) -> float:
    times = []
    for _ in range(samples):
        start = time.monotonic()
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (local http)
            response.read()
        times.append((time.monotonic() - start) * 1000)
    return median(times)


def _remove(socket_path: Path, image: str) -> None:
    with contextlib.suppress(grpc.RpcError):
        cri_client.remove_image(socket_path, image)


def _timed_pull(socket_path: Path, image: str, relay: ShapedRelay, link_mb: list[float]) -> float:
    """One CRI pull; appends the MB that crossed the shaped link (upstream -> anyone) to
    ``link_mb``."""
    before = relay.bytes_down
    start = time.monotonic()
    cri_client.pull_image(socket_path, image, timeout=180)
    seconds = time.monotonic() - start
    link_mb.append((relay.bytes_down - before) / 1e6)
    return seconds


def run(rounds: int = 3, log: Any = print) -> PartResult:
    part = PartResult("cache")
    tbf = tbf_check()
    log(f"  tbf check: {tbf}")
    part.info["tbf_check"] = tbf
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-cache-"))
    runs: dict[str, list[float]] = {"direct": [], "cold": [], "warm": [], "fallback": []}
    link: dict[str, list[float]] = {kind: [] for kind in runs}
    upstream = relay = None
    proxy: RegistryProcess | None = None
    try:
        image = build(workdir / "image", TAG)
        log(f"  image: {image.layers} layers, {image.total_bytes / 1e6:.1f} MB")
        upstream = start_registry(plain_registry_config(workdir / "upstream-data"),
                                  workdir / "upstream")  # fmt: skip
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", image.oci_ref,
             f"docker://{upstream.address}/library/bench:{TAG}"],
            check=True, capture_output=True,
        )  # fmt: skip
        with test_host() as host:
            addr = host.host_address
            relay = ShapedRelay((addr, 6000), ("127.0.0.1", upstream.port),
                                delay_s=DELAY_ONE_WAY_S, rate_bps=RATE_BPS)  # fmt: skip
            relay.start()
            part.info["link"] = relay.describe()
            rtt_relay = _rtt_ms(f"http://{addr}:6000/v2/")
            rtt_plain = _rtt_ms(f"{upstream.url}/v2/")
            part.info["http_v2_ms"] = {"through_relay": rtt_relay, "loopback": rtt_plain}
            log(f"  link: {relay.describe()}; GET /v2/ {rtt_relay:.1f} ms vs {rtt_plain:.1f} ms")

            settings = make_settings(host)
            proxy_dir = workdir / "proxy"
            proxy_cfg = proxy_config(settings, settings.upstreams[0], proxy_dir)
            data_dir = Path(proxy_cfg["storage"]["filesystem"]["rootdirectory"])

            def start_proxy() -> RegistryProcess:
                return start_registry(proxy_cfg, proxy_dir, host=addr, port=5000)

            proxy = start_proxy()
            reset(host)
            apply_node(host, settings, settings.nodes[0])
            direct_host = host.etc_containerd / "certs.d" / f"{addr}:6000"
            direct_host.mkdir(parents=True, exist_ok=True)
            (direct_host / "hosts.toml").write_text(
                f'server = "http://{addr}:6000"\n\n[host."http://{addr}:6000"]\n'
                '  capabilities = ["pull", "resolve"]\n'
            )
            sock = host.containerd_socket
            direct_ref = f"{addr}:6000/library/bench:{TAG}"
            mirror_ref = f"docker.io/library/bench:{TAG}"
            for round_ in range(rounds):
                _remove(sock, direct_ref)
                runs["direct"].append(_timed_pull(sock, direct_ref, relay, link["direct"]))
                _remove(sock, direct_ref)

                proxy.stop()
                shutil.rmtree(data_dir, ignore_errors=True)
                proxy = start_proxy()
                _remove(sock, mirror_ref)
                runs["cold"].append(_timed_pull(sock, mirror_ref, relay, link["cold"]))

                _remove(sock, mirror_ref)
                runs["warm"].append(_timed_pull(sock, mirror_ref, relay, link["warm"]))

                _remove(sock, mirror_ref)
                proxy.stop()
                runs["fallback"].append(_timed_pull(sock, mirror_ref, relay, link["fallback"]))
                proxy = start_proxy()
                _remove(sock, mirror_ref)
                log(f"  cache round {round_ + 1}: "
                    + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()))  # fmt: skip
            part.info["proxy_requests_with_ns"] = proxy.log().count("ns=docker.io")
    finally:
        if proxy is not None:
            proxy.stop()
        if relay is not None:
            relay.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    size = f"{image.total_bytes / 1e6:.1f} MB, {image.layers} layers"
    for kind, what in (
        ("direct", "direct from upstream (shaped link)"),
        ("cold", "cold through the mirror"),
        ("warm", "warm through the mirror"),
        ("fallback", "warm, mirror stopped (fallback to server)"),
    ):
        part.add(Figure("cache", f"pull {what}", "s", runs[kind], note=size))
        part.add(Figure("cache", f"  MB over the shaped link: {kind}", "MB", link[kind]))
    pairs = list(zip(runs["direct"], runs["cold"], runs["warm"], runs["fallback"], strict=True))
    part.add(Figure("cache", "speed-up warm vs direct (direct/warm)", "x",
                    [d / w for d, _, w, _ in pairs])).check(lambda v: v >= 5, ">= 5x")  # fmt: skip
    part.add(Figure("cache", "cold / direct", "ratio", [c / d for d, c, _, _ in pairs])).check(
        lambda v: v <= 1.3, "<= 1.3"
    )
    fallback = part.add(Figure("cache", "fallback extra delay (fallback - direct)", "s",
                               [f - d for d, _, _, f in pairs]))  # fmt: skip
    fallback.target, fallback.met = "succeeds; delay reported", len(runs["fallback"]) == rounds
    return part
