"""Part front: what the front (Apache Traffic Server, one process for coalescing and TLS;
components/renderers/front_proxy.py) buys and costs, for Distribution 3.1.1 (the default,
carries the targets) and 2.8 side by side.

1. N = 1, 5, 10 concurrent cold pulls of a 2-layer image (16 MiB per layer, ~33.5 MB) through
   the cache, before (nodes on Distribution itself, as today) and after (nodes on the front):
   MB over the shaped upstream link, and the slowest client's wall time. Targets (issue 26), for
   3.1.1 at N = 10: upstream bytes <= 1.1x one direct pull; the slowest client <= 1.2x a single
   cold pull through the front. Also the largest time to first byte any client saw.
2. Warm pull through the front over HTTPS vs plain HTTP, same front, same registry, the blobs in
   the registry's cache (each pull past the front's 1 s window, so every pull asks the
   registry), each pull over ONE kept-alive connection as containerd's Go client does it.
   Target (issue 20): TLS <= 1.1x.

Topology (all on loopback): a plain Distribution holds the image (the "upstream"), behind
bench/relay.py (+20 ms each way, a shared token bucket: the shaped link, which counts bytes);
the cache is the rendered config of the major under test with remoteurl = the relay; the front
is the rendered config under Debian's traffic_server (tests/integration/front_proc.py). The
clients are tests/integration/blob_client.py: containerd's request pattern (manifest by tag,
then config and layers three at a time, ?ns=). The cold pulls move their blobs with curl
(``curl_pull``):
ten Python clients in this process competed for the GIL with the relay that IS the upstream link
and slowed the one coalesced fetch (slowest 1.30x a single pull with Python clients, a figure of
the harness). The warm TLS/HTTP pulls are one curl per pull with every URL in it: one
connection, one handshake per pull (a first version opened a connection per request, so every
HTTPS blob paid a full handshake: 2.00x, a figure of that client, not of what containerd pays).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Figure, PartResult
from tests.integration.blob_client import (
    curl_pull,
    one_connection_pull,
    pull_concurrently,
    pull_image,
)
from tests.integration.front_proc import make_test_ca
from tests.integration.registry_proc import free_port
from tests.integration.test_front_proxy import NS, REPOSITORY, TAG, make_origin_store, stack

DELAY_ONE_WAY_S = 0.020
RATE_BPS = 100e6
COUNTS = (1, 5, 10)
MAJORS = (3, 2)
LABELS = {2: "2.8", 3: "3.1.1"}
TARGET_MAJOR = 3
WARM_PULLS = 7


def run(rounds: int = 2, log: Any = print) -> PartResult:
    part = PartResult("front")
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-front-"))
    # (major, front?, n) -> runs
    link: dict[tuple[int, bool, int], list[float]] = {}
    slowest: dict[tuple[int, bool, int], list[float]] = {}
    ttfb: dict[tuple[int, bool, int], list[float]] = {}
    warm: dict[str, list[float]] = {"http": [], "https": []}
    try:
        store = make_origin_store(workdir / "origin")
        size_mb = sum(b["size"] for b in store.manifest["layers"]) / 1e6
        part.info["image"] = f"{len(store.layers)} layers, {size_mb:.1f} MB"
        for round_ in range(rounds):
            for major in MAJORS:
                for with_front in (False, True):
                    for n in COUNTS:
                        key = (major, with_front, n)
                        run_dir = workdir / f"r{round_}-{major}-{with_front}-{n}"
                        with stack(
                            store,
                            major,
                            run_dir,
                            with_front=with_front,
                            rate_bps=RATE_BPS,
                            delay_s=DELAY_ONE_WAY_S,
                        ) as s:
                            part.info["link"] = s.relay.describe()
                            url = s.url
                            results = pull_concurrently(
                                n, lambda url=url: curl_pull(url, REPOSITORY, TAG, ns=NS)
                            )
                            failed = [r.error for r in results if not r.ok]
                            if failed:
                                raise RuntimeError(f"{key}: {failed[:2]}")
                            link.setdefault(key, []).append(s.relay.bytes_down / 1e6)
                            slowest.setdefault(key, []).append(max(r.seconds for r in results))
                            ttfb.setdefault(key, []).append(
                                max(
                                    b.headers_at - b.started_at
                                    for r in results
                                    for b in r.blobs.values()
                                    if b.headers_at is not None
                                )
                            )
                        log(
                            f"  round {round_ + 1} {LABELS[major]} "
                            f"{'front' if with_front else 'before'} N={n}: "
                            f"{link[key][-1]:.1f} MB upstream, slowest {slowest[key][-1]:.2f} s"
                        )
            _warm_tls(store, workdir / f"tls-{round_}", warm)
            log(
                f"  round {round_ + 1} warm: http {warm['http'][-1]:.3f} s, "
                f"https {warm['https'][-1]:.3f} s"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _figures(part, link, slowest, ttfb, warm, rounds, store.image.total_bytes / 1e6)
    return part


def _warm_tls(store: Any, workdir: Path, warm: dict[str, list[float]]) -> None:
    ca = make_test_ca(workdir / "ca")
    with stack(
        store,
        TARGET_MAJOR,
        workdir,
        rate_bps=RATE_BPS,
        delay_s=DELAY_ONE_WAY_S,
        tls_port=free_port(),
        pem_file=str(ca.pem),
    ) as s:
        assert s.front is not None
        http_url, https_url = s.front.url(s.cache), s.front.url(s.cache, tls=True)
        assert pull_image(http_url, REPOSITORY, TAG, ns=NS).ok  # cold: fills the registry
        times: dict[str, list[float]] = {"http": [], "https": []}
        for _ in range(WARM_PULLS):
            for scheme, url in (("http", http_url), ("https", https_url)):
                time.sleep(1.2)  # past the front's window: front -> registry, a registry hit
                result, connections = one_connection_pull(
                    url, REPOSITORY, TAG, store.blobs, ns=NS, ca_file=str(ca.ca_cert)
                )
                if not result.ok or result.manifest_status != 200 or connections != 1:
                    raise RuntimeError(f"warm {scheme}: {result.error} ({connections} conns)")
                times[scheme].append(result.seconds)
        for scheme, values in times.items():
            warm[scheme].append(sorted(values)[len(values) // 2])


def _figures(
    part: PartResult,
    link: dict[tuple[int, bool, int], list[float]],
    slowest: dict[tuple[int, bool, int], list[float]],
    ttfb: dict[tuple[int, bool, int], list[float]],
    warm: dict[str, list[float]],
    rounds: int,
    direct_mb: float,
) -> None:
    for major in MAJORS:
        tag = LABELS[major]
        single = slowest[(major, True, 1)]
        for n in COUNTS:
            for with_front in (False, True):
                key = (major, with_front, n)
                what = "front" if with_front else "before"
                part.add(
                    Figure(
                        "front", f"{tag} {what} N={n}: MB over the upstream link", "MB", link[key]
                    )
                )
                part.add(Figure("front", f"{tag} {what} N={n}: slowest client", "s", slowest[key]))
                part.add(
                    Figure(
                        "front", f"{tag} {what} N={n}: largest time to first byte", "s", ttfb[key]
                    )
                )
            byte_ratio = part.add(
                Figure(
                    "front",
                    f"{tag} front N={n}: upstream bytes / one direct pull",
                    "ratio",
                    [a / direct_mb for a in link[(major, True, n)]],
                    note=f"one direct pull = the image, {direct_mb:.1f} MB (2.8 fetches twice)",
                )
            )
            time_ratio = part.add(
                Figure(
                    "front",
                    f"{tag} front N={n}: slowest / single cold pull",
                    "ratio",
                    [a / b for a, b in zip(slowest[(major, True, n)], single, strict=False)],
                )
            )
            if major == TARGET_MAJOR and n == COUNTS[-1]:
                byte_ratio.check(lambda v: v <= 1.1, "<= 1.1")
                time_ratio.check(lambda v: v <= 1.2, "<= 1.2")
    part.add(
        Figure(
            "front",
            f"{LABELS[TARGET_MAJOR]} warm pull through the front, HTTP",
            "s",
            warm["http"],
            note=f"median of {WARM_PULLS} per round",
        )
    )
    part.add(
        Figure(
            "front",
            f"{LABELS[TARGET_MAJOR]} warm pull through the front, HTTPS",
            "s",
            warm["https"],
            note="traffic_server, P-256 certificate, one kept-alive connection per pull",
        )
    )
    part.add(
        Figure(
            "front",
            "warm HTTPS / HTTP",
            "ratio",
            [t / h for h, t in zip(warm["http"], warm["https"], strict=False)],
        )
    ).check(lambda v: v <= 1.1, "<= 1.1")
    part.info["rounds"] = rounds


if __name__ == "__main__":  # a quick look without bench/run.py
    with contextlib.suppress(KeyboardInterrupt):
        for figure in run(rounds=1).figures:
            print(f"{figure.name}: {figure.median:.3f} {figure.unit} {figure.target or ''}")
