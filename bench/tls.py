"""Part tls: what TLS through the front costs a real consumer, a containerd CRI pull (issue 20).

A ~31 MB image (6 layers), the upstream behind the shaped link (bench/relay.py: +20 ms each way,
50 Mbit/s, as the cache part), Distribution 3.1.1 as rendered on loopback behind the rendered
front (the real traffic_server) on the host end of a test node's veth, plain and HTTPS ports, a
certificate from a throwaway CA with that address as its IP SAN. The node (containerd 1.6.20, as
configured by the project's node steps) pulls through its hosts.toml, which the bench switches
between ``http://IP:5000`` and ``https://IP:5002`` with ``ca = [...]`` (containerd reads
hosts.toml on every pull); the image is removed from containerd between pulls.

Per round: a pull straight from the upstream (``direct``, no cache); a cold pull through the
front over HTTPS (the registry's storage wiped and restarted); then warm pulls (the blobs in the
registry, each pull past the front's 1 s window) alternating HTTPS and HTTP. Targets: warm HTTPS
/ HTTP <= 1.1; cold through the front over HTTPS / direct <= 1.1 (time and bytes over the link).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from bench.common import Figure, PartResult, median
from bench.image import build
from bench.node_change import apply_node, reset, test_host
from bench.relay import ShapedRelay
from components.renderers.containerd_config import TlsSettings
from components.renderers.front_proxy import Front, FrontCache
from components.renderers.hosts_toml import HostEntry, render_hosts_toml
from tests.integration import cri_client
from tests.integration.front_proc import make_test_ca, running_front
from tests.integration.registry_proc import free_port, plain_registry_config, start_registry
from tests.integration.test_node_e2e import make_settings, proxy_config

DELAY_ONE_WAY_S = 0.020
RATE_BPS = 50e6
TAG = "1"
WARM_PULLS = 5


def _pull(
    socket: Path, image: str, relay: ShapedRelay, refs: tuple[str, ...]
) -> tuple[float, float]:
    """One CRI pull after removing every reference in ``refs`` (the direct and the mirrored
    name share their blobs: one left behind keeps them all in containerd's content store, and a
    "cold" pull then moves only the manifests): (seconds, MB over the shaped link)."""
    for ref in refs:
        with contextlib.suppress(grpc.RpcError):
            cri_client.remove_image(socket, ref)
    before = relay.bytes_down
    start = time.monotonic()
    cri_client.pull_image(socket, image, timeout=300)
    return time.monotonic() - start, (relay.bytes_down - before) / 1e6


def run(rounds: int = 2, log: Any = print) -> PartResult:
    part = PartResult("tls")
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-tls-"))
    runs: dict[str, list[float]] = {"direct": [], "cold-https": [], "warm-http": [],
                                    "warm-https": []}  # fmt: skip
    link: dict[str, list[float]] = {kind: [] for kind in runs}
    upstream = relay = proxy = None
    try:
        image = build(workdir / "image", TAG)
        part.info["image"] = f"{image.layers} layers, {image.total_bytes / 1e6:.1f} MB"
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
            settings = make_settings(host, tls=False)
            reset(host)
            apply_node(host, settings, settings.nodes[0])  # config_path set, hosts.toml ours
            ca = make_test_ca(workdir / "ca", ip=addr, days=30)
            certs = host.etc_containerd / "certs.d"
            (certs / "registry-mirrors-ca.pem").write_text(ca.ca_cert.read_text())
            server = f"http://{addr}:6000"
            hosts_files = {
                "http": render_hosts_toml(server, [f"http://{addr}:5000"]),
                "https": render_hosts_toml(server, [HostEntry(
                    f"https://{addr}:5002",
                    TlsSettings(ca=("/etc/containerd/certs.d/registry-mirrors-ca.pem",)),
                )]),
            }  # fmt: skip
            direct_dir = certs / f"{addr}:6000"
            direct_dir.mkdir(parents=True, exist_ok=True)
            (direct_dir / "hosts.toml").write_text(render_hosts_toml(server, []))
            sock = host.containerd_socket
            direct_ref, mirror_ref = (
                f"{addr}:6000/library/bench:{TAG}",
                f"docker.io/library/bench:{TAG}",
            )
            refs = (direct_ref, mirror_ref)

            def use(scheme: str) -> None:
                (certs / "docker.io" / "hosts.toml").write_text(hosts_files[scheme])

            config = proxy_config(settings, settings.upstreams[0], workdir / "proxy")
            data = Path(config["storage"]["filesystem"]["rootdirectory"])
            backend = free_port()
            front = Front((FrontCache("registry", 5000, backend, 5002),), pem_file=str(ca.pem),
                          storage_mb=256)  # fmt: skip
            with running_front(front, workdir / "front", listen=addr):
                for round_ in range(rounds):
                    seconds, mb = _pull(sock, direct_ref, relay, refs)
                    runs["direct"].append(seconds)
                    link["direct"].append(mb)
                    shutil.rmtree(data, ignore_errors=True)
                    proxy = start_registry(config, workdir / "proxy", port=backend)
                    use("https")
                    seconds, mb = _pull(sock, mirror_ref, relay, refs)
                    runs["cold-https"].append(seconds)
                    link["cold-https"].append(mb)
                    warm: dict[str, list[float]] = {"http": [], "https": []}
                    for _ in range(WARM_PULLS):
                        for scheme in ("https", "http"):
                            use(scheme)
                            time.sleep(1.2)  # past the front's window: a registry hit
                            seconds, mb = _pull(sock, mirror_ref, relay, refs)
                            warm[scheme].append(seconds)
                            # Anything over the link: a request fell back to the upstream.
                            link[f"warm-{scheme}"].append(mb)
                    for scheme, values in warm.items():
                        runs[f"warm-{scheme}"].append(median(values))
                    proxy.stop()
                    proxy = None
                    log(f"  tls round {round_ + 1}: "
                        + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in runs.items()))  # fmt: skip
    finally:
        for process in (proxy, upstream):
            if process is not None:
                process.stop()
        if relay is not None:
            relay.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for kind, label in (("direct", "pull straight from the upstream"),
                        ("cold-https", "cold pull through the front over HTTPS"),
                        ("warm-http", "warm pull through the front, HTTP"),
                        ("warm-https", "warm pull through the front, HTTPS")):  # fmt: skip
        part.add(Figure("tls", f"CRI {label}", "s", runs[kind]))
    part.add(Figure("tls", "CRI warm pulls, HTTP and HTTPS: most MB over the link in one", "MB",
                    [max(link["warm-http"] + link["warm-https"])],
                    note="0: no request fell back to the upstream")).check(
        lambda v: v < 0.01, "0")  # fmt: skip
    part.add(Figure("tls", "CRI warm HTTPS / HTTP", "ratio",
                    [t / h for h, t in zip(runs["warm-http"], runs["warm-https"], strict=False)],
                    note=f"median of {WARM_PULLS} per round, containerd 1.6.20")).check(
        lambda v: v <= 1.1, "<= 1.1")  # fmt: skip
    part.add(Figure("tls", "CRI cold through the front (HTTPS) / direct, time", "ratio",
                    [c / d for c, d in zip(runs["cold-https"], runs["direct"], strict=False)])
             ).check(lambda v: v <= 1.1, "<= 1.1")  # fmt: skip
    part.add(Figure("tls", "CRI cold through the front (HTTPS) / direct, bytes over the link",
                    "ratio",
                    [c / d for c, d in zip(link["cold-https"], link["direct"], strict=False)])
             ).check(lambda v: v <= 1.1, "<= 1.1")  # fmt: skip
    part.info["rounds"] = rounds
    return part


if __name__ == "__main__":  # a quick look without bench/run.py
    with contextlib.suppress(KeyboardInterrupt):
        for figure in run(rounds=1).figures:
            print(f"{figure.name}: {figure.median:.3f} {figure.unit} {figure.target or ''}")
