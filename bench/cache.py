"""Part 3: what the cache buys, for Distribution 2.8 and 3.1.1 side by side in one run. A CRI pull
of a ~30 MB multi-layer image with the upstream behind a shaped link: direct from upstream, then
per major: cold through the mirror, warm through the mirror, warm with the mirror stopped
(fallback to ``server``); for 3.1.1 also warm with the in-memory blob descriptor cache turned on
(what turning it off costs). Bytes crossing the shaped link are counted for every pull.

Topology (all on this machine; the node's netns has no default route):
- node: tests/integration/testhost.py host (containerd 1.6 + sshd in a netns), configured by the
  project's node scripts (probe/hosts/config) with the e2e test's settings: docker.io's mirror =
  the host end of the veth :5000, ``server`` = the host end :6000;
- :6000 is bench/relay.py (delay + token bucket) in front of a plain Distribution on loopback
  (the "upstream");
- :5000 is a Distribution proxy rendered by the project for the major under test (its binary:
  tests/integration/registry_proc.py; remoteurl = the relay, so the mirror's own upstream fetches
  cross the same shaped link); mirror <-> node is unshaped (a LAN). One major at a time.
- "direct" pulls ``<host>:6000/library/bench:1`` (a bench-written hosts.toml for that host:
  plain http, no mirror): same bytes, same link, no cache.
Between runs the image is removed from containerd (CRI RemoveImage); "cold" also stops the proxy,
deletes its storage and starts it again. A major whose proxy crashes is reported as crashed (with
its log tail in results.json), and the other major is still measured.
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
from components.settings import Settings
from tests.integration import cri_client
from tests.integration.registry_proc import (
    RegistryProcess,
    find_registry_binary,
    plain_registry_config,
    start_registry,
)
from tests.integration.test_node_e2e import make_settings, proxy_config
from tests.sample import REGISTRY_IMAGES as IMAGES

DELAY_ONE_WAY_S = 0.020  # RTT + 40 ms
RATE_BPS = 50e6
TAG = "1"
# The majors compared, oldest first; the default image's major carries the targets.
# Figure labels: the binaries measured (Debian's 2.8.2 stands in for registry:2.8.3).
LABELS = {2: "2.8", 3: "3.1.1"}
TARGET_MAJOR = 3


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


class ProxyCrashed(RuntimeError):
    pass


def _with_image(settings: Settings, image: str) -> Settings:
    registry = settings.registry.model_copy(update={"image": image})
    return settings.model_copy(update={"registry": registry})


def run(rounds: int = 3, log: Any = print) -> PartResult:
    part = PartResult("cache")
    tbf = tbf_check()
    log(f"  tbf check: {tbf}")
    part.info["tbf_check"] = tbf
    part.info["registry_binaries"] = {
        str(major): subprocess.run(
            [find_registry_binary(major), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        for major in IMAGES
    }
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-cache-"))
    kinds = [f"{kind}-{major}" for major in IMAGES for kind in ("cold", "warm", "fallback")]
    kinds.append(f"warm-cache-on-{TARGET_MAJOR}")
    runs: dict[str, list[float]] = {kind: [] for kind in ["direct", *kinds]}
    link: dict[str, list[float]] = {kind: [] for kind in runs}
    crashed: dict[int, str] = {}
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

            # Distribution itself on :5000 (what the cache buys, not the front): plain HTTP.
            settings = make_settings(host, tls=False)
            configs = {
                major: proxy_config(
                    _with_image(settings, image_ref), settings.upstreams[0], workdir / f"v{major}"
                )
                for major, image_ref in IMAGES.items()
            }
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

            def start_proxy(major: int, config: dict[str, Any]) -> RegistryProcess:
                return start_registry(config, workdir / f"v{major}", host=addr, port=5000,
                                      major=major)  # fmt: skip

            # A major's pulls of one round count only once its proxy proved alive after them: a
            # proxy that died mid-pull still "serves" (containerd falls back to the upstream),
            # and that pull is not a figure of the cache.
            pending: dict[str, tuple[float, float]] = {}

            def pull(kind: str, ref: str) -> None:
                mb: list[float] = []
                pending[kind] = (_timed_pull(sock, ref, relay, mb), mb[0])

            def keep_pending() -> None:
                for kind, (seconds, mb) in pending.items():
                    runs[kind].append(seconds)
                    link[kind].append(mb)
                pending.clear()

            requests_with_ns: dict[str, int] = {}
            for round_ in range(rounds):
                _remove(sock, direct_ref)
                pull("direct", direct_ref)
                keep_pending()
                _remove(sock, direct_ref)
                for major, config in configs.items():
                    if major in crashed:
                        continue
                    pending.clear()
                    data_dir = Path(config["storage"]["filesystem"]["rootdirectory"])
                    shutil.rmtree(data_dir, ignore_errors=True)
                    try:
                        proxy = start_proxy(major, config)
                        _remove(sock, mirror_ref)
                        pull(f"cold-{major}", mirror_ref)
                        _remove(sock, mirror_ref)
                        pull(f"warm-{major}", mirror_ref)
                        _remove(sock, mirror_ref)
                        _alive(proxy)
                        requests_with_ns[str(major)] = proxy.log().count("ns=docker.io")
                        proxy.stop()
                        if major == TARGET_MAJOR:
                            # Same storage, descriptor cache on: what keeping it off costs.
                            cache_on = {**config, "storage": {**config["storage"],
                                        "cache": {"blobdescriptor": "inmemory"}}}  # fmt: skip
                            proxy = start_proxy(major, cache_on)
                            pull(f"warm-cache-on-{major}", mirror_ref)
                            _remove(sock, mirror_ref)
                            _alive(proxy)
                            proxy.stop()
                        pull(f"fallback-{major}", mirror_ref)
                        _remove(sock, mirror_ref)
                        keep_pending()
                    except Exception as error:  # a crash of one major must not hide the other
                        tail = proxy.log()[-1500:] if proxy is not None else ""
                        crashed[major] = f"round {round_ + 1}: {error!r}"
                        part.info.setdefault("crash_logs", {})[str(major)] = tail
                        log(f"  Distribution {major} CRASHED: {error!r}")
                    finally:
                        if proxy is not None:
                            proxy.stop()
                            proxy = None
                log(f"  cache round {round_ + 1}: "
                    + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items() if v))  # fmt: skip
            part.info["proxy_requests_with_ns"] = requests_with_ns
    finally:
        if proxy is not None:
            proxy.stop()
        if relay is not None:
            relay.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    part.info["crashed"] = {str(major): reason for major, reason in crashed.items()}
    _figures(part, runs, link, crashed, f"{image.total_bytes / 1e6:.1f} MB, {image.layers} layers")
    return part


def _alive(proxy: RegistryProcess) -> None:
    if proxy.process.poll() is not None:
        raise ProxyCrashed(f"the registry exited with {proxy.process.returncode}")


def _figures(
    part: PartResult,
    runs: dict[str, list[float]],
    link: dict[str, list[float]],
    crashed: dict[int, str],
    size: str,
) -> None:
    part.add(Figure("cache", "pull direct from upstream (shaped link)", "s", runs["direct"],
                    note=size))  # fmt: skip
    part.add(Figure("cache", "  MB over the shaped link: direct", "MB", link["direct"]))
    for major in IMAGES:
        tag = LABELS[major]
        figures_before = len(part.figures)
        for kind, what in (
            ("cold", "cold through the mirror"),
            ("warm", "warm through the mirror"),
            ("fallback", "warm, mirror stopped (fallback to server)"),
        ):
            key = f"{kind}-{major}"
            part.add(Figure("cache", f"{tag}: pull {what}", "s", runs[key], note=size))
            part.add(Figure("cache", f"  {tag}: MB over the shaped link: {kind}", "MB", link[key]))
        # Ratios pair runs of the same round (zip stops at a crashed major's last round).
        cold_time = [c / d for d, c in zip(runs["direct"], runs[f"cold-{major}"], strict=False)]
        cold_bytes = [c / d for d, c in zip(link["direct"], link[f"cold-{major}"], strict=False)]
        speedup = [d / w for d, w in zip(runs["direct"], runs[f"warm-{major}"], strict=False)]
        fallback = [f - d for d, f in zip(runs["direct"], runs[f"fallback-{major}"], strict=False)]
        time_fig = part.add(Figure("cache", f"{tag}: cold / direct, time", "ratio", cold_time))
        bytes_fig = part.add(Figure("cache", f"{tag}: cold / direct, bytes over the link",
                                    "ratio", cold_bytes))  # fmt: skip
        warm_fig = part.add(Figure("cache", f"{tag}: speed-up warm vs direct (direct/warm)", "x",
                                   speedup))  # fmt: skip
        fallback_fig = part.add(Figure("cache", f"{tag}: fallback extra delay (fallback - direct)",
                                       "s", fallback))  # fmt: skip
        fallback_fig.target = "succeeds; delay reported"
        fallback_fig.met = major not in crashed and len(fallback) == len(runs["direct"])
        if major == TARGET_MAJOR:
            time_fig.check(lambda v: v <= 1.1, "<= 1.1")
            bytes_fig.check(lambda v: v <= 1.1, "<= 1.1")
            warm_fig.check(lambda v: v >= 10, ">= 10x")
            on, off = runs.get(f"warm-cache-on-{major}", []), runs[f"warm-{major}"]
            note = "off by default (stale descriptors, distribution #2367)"
            part.add(Figure("cache", f"{tag}: warm with the blob descriptor cache on", "s", on,
                            note=note))  # fmt: skip
            part.add(Figure("cache", f"{tag}: warm, descriptor cache off / on", "ratio",
                            [f / o for f, o in zip(off, on, strict=False)]))  # fmt: skip
        if major in crashed:
            # Every figure of that major says so (the rounds before the crash stay in ``runs``).
            for figure in part.figures[figures_before:]:
                figure.failure = f"crashed in {crashed[major]}"
                figure.met = False if figure.target else figure.met
