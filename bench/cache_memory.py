"""Part "memory": does a pull-through cache's memory grow? Distribution 2.8 and 3.1.1, each run as
the project renders it (blob descriptor cache off), in front of a local upstream (loopback),
under a sustained pull workload; the registry process's memory is sampled all along.

- Upstream: a plain Distribution 2.8 on loopback, filled over the registry API with a catalog of
  ``repositories`` x ``tags`` multi-arch images (bench/registry_api.py: linux/amd64 + arm64, three
  layers each: a base layer shared across repositories, one shared by a repository's tags, one
  of its own; every image distinct).
- Per major, a proxy from the RENDERED config (tests/integration/registry_proc.py runs the real
  binary; remoteurl = the upstream), then ``workers`` client threads pulling the way containerd
  does (HEAD the tag, index, the platform's manifest, config, layers; each body checked against
  its digest):
  1. fill: every image, both platforms, once (every pull a miss: the cache's content grows);
  2. steady: random images and platforms for ``steady_s`` seconds (hits; nothing new cached):
     memory that still grows here grows per request, not with the content.
- Sampled every ``interval_s``: VmRSS and RssAnon (/proc/PID/status), ``go_memstats_*`` and
  ``go_goroutines`` from the rendered ``/metrics``; at the end of the fill and of every
  ``round_s`` of the steady phase also the LIVE heap: ``/debug/pprof/heap?gc=1`` (the debug
  server serves pprof on the metrics port) forces a collection first, then heap_alloc is read.
Run it under ``nice`` on a shared machine: it measures memory, not speed.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bench.common import Figure, PartResult
from bench.registry_api import PLATFORMS, Catalog, RegistryClient, build_catalog
from components.renderers.registry_config import render_registry_config
from components.settings import DEFAULT_UPSTREAMS, RegistrySettings
from tests.integration.registry_proc import (
    RegistryProcess,
    find_registry_binary,
    plain_registry_config,
    start_registry,
)
from tests.sample import REGISTRY_IMAGES as IMAGES

LABELS = {2: "2.8", 3: "3.1.1"}
MB = 1024 * 1024


def _metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback)
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("go_memstats_", "go_goroutines", "process_resident_memory_bytes")):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def _proc_status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def _force_gc(metrics_url: str) -> None:
    base = metrics_url.rsplit("/", 1)[0]
    with urllib.request.urlopen(f"{base}/debug/pprof/heap?gc=1", timeout=30) as response:  # noqa: S310
        response.read()


class Sampler:
    def __init__(self, proxy: RegistryProcess, interval_s: float) -> None:
        assert proxy.metrics_url is not None
        self.proxy, self.interval = proxy, interval_s
        self.metrics_url = proxy.metrics_url
        self.samples: list[dict[str, Any]] = []
        self.phase = "idle"
        self.pulls = 0
        self.failures = 0
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def sample(self, live: bool = False) -> dict[str, Any]:
        if live:
            _force_gc(self.metrics_url)
        metrics = _metrics(self.metrics_url)
        status = _proc_status(self.proxy.process.pid)
        with self.lock:
            entry = {
                "t": round(time.monotonic() - self.started, 1),
                "phase": self.phase,
                "pulls": self.pulls,
                "failures": self.failures,
                "rss": status.get("VmRSS", 0),
                "rss_anon": status.get("RssAnon", 0),
                "heap_inuse": metrics.get("go_memstats_heap_inuse_bytes", 0.0),
                "heap_alloc": metrics.get("go_memstats_heap_alloc_bytes", 0.0),
                "go_sys": metrics.get("go_memstats_sys_bytes", 0.0),
                "goroutines": metrics.get("go_goroutines", 0.0),
                "live": live,
            }
            self.samples.append(entry)
        return entry

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.sample()


def _workload(
    proxy: RegistryProcess,
    sampler: Sampler,
    jobs: Callable[[], tuple[str, str, str] | None],
    workers: int,
    errors: list[str],
) -> None:
    def worker() -> None:
        client = RegistryClient(proxy.host, proxy.port)
        try:
            while (job := jobs()) is not None:
                result = client.pull(*job)
                with sampler.lock:
                    sampler.pulls += 1
                    if not result.ok:
                        sampler.failures += 1
                        if len(errors) < 20:
                            errors.append(f"{job}: {result.error}")
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _fill_jobs(catalog: Catalog, seed: int) -> Callable[[], tuple[str, str, str] | None]:
    pairs = [(i.repository, i.tag, p) for i in catalog.images for p in PLATFORMS]
    random.Random(seed).shuffle(pairs)  # noqa: S311
    lock = threading.Lock()

    def next_job() -> tuple[str, str, str] | None:
        with lock:
            return pairs.pop() if pairs else None

    return next_job


def _steady_jobs(
    catalog: Catalog, seed: int, until: float
) -> Callable[[], tuple[str, str, str] | None]:
    rng = random.Random(seed)  # noqa: S311
    lock = threading.Lock()

    def next_job() -> tuple[str, str, str] | None:
        if time.monotonic() >= until:
            return None
        with lock:
            image = rng.choice(catalog.images)
            return image.repository, image.tag, rng.choice(PLATFORMS)

    return next_job


def cache_entries(catalog: Catalog) -> int:
    """What the proxy schedules for expiry after the fill: one entry per repository@digest
    (indexes, platform manifests, configs, layers)."""
    keys = set()
    for image in catalog.images:
        keys.add(f"{image.repository}@{image.index.digest}")
        for child in image.children.values():
            keys.add(f"{image.repository}@{child.manifest.digest}")
        keys.update(f"{image.repository}@{blob.digest}" for blob in image.blobs())
    return len(keys)


def _push_catalog(catalog: Catalog, upstream: RegistryProcess, workers: int = 4) -> None:
    homes: dict[str, str] = {}
    pushed: set[str] = set()
    # One repository per thread at a time: its tags share a layer, pushed once.
    by_repo: dict[str, list[Any]] = {}
    for image in catalog.images:
        by_repo.setdefault(image.repository, []).append(image)
    queue = list(by_repo.values())
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker() -> None:
        client = RegistryClient(upstream.host, upstream.port)
        try:
            while True:
                with lock:
                    if not queue or failures:
                        return
                    images = queue.pop()
                for image in images:
                    client.push_image(image, homes, pushed)
        except BaseException as error:
            failures.append(error)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def proxy_config(major: int, storage: Path, remote_url: str) -> dict[str, Any]:
    """The rendered config for ``major`` (the default upstream's), pointed at local paths."""
    registry = RegistrySettings(image=IMAGES[major])
    config = yaml.safe_load(render_registry_config(DEFAULT_UPSTREAMS[0], registry))
    config["storage"]["filesystem"]["rootdirectory"] = str(storage)
    config["proxy"]["remoteurl"] = remote_url
    assert "cache" not in config["storage"], "the product renders no blob descriptor cache"
    return config


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    if len({x for x, _ in points}) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def run(
    steady_s: float = 20 * 60,
    repositories: int = 300,
    tags: int = 4,
    workers: int = 4,
    interval_s: float = 10.0,
    round_s: float = 60.0,
    log: Any = print,
) -> PartResult:
    part = PartResult("memory")
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-memory-"))
    catalog = build_catalog(repositories, tags)
    entries = cache_entries(catalog)
    part.info.update(
        registry_binaries={str(m): find_registry_binary(m) for m in IMAGES},
        catalog={
            "images": len(catalog.images),
            "platforms": list(PLATFORMS),
            "distinct_blobs": catalog.distinct_blobs,
            "blob_mb": round(catalog.blob_bytes / MB, 1),
            "cache_entries_after_fill": entries,
        },
        workload={
            "workers": workers,
            "steady_s": steady_s,
            "interval_s": interval_s,
            "round_s": round_s,
        },
        series={},
    )
    upstream: RegistryProcess | None = None
    proxy: RegistryProcess | None = None
    sampler: Sampler | None = None
    try:
        upstream = start_registry(plain_registry_config(workdir / "upstream-data"),
                                  workdir / "upstream", major=2)  # fmt: skip
        started = time.monotonic()
        _push_catalog(catalog, upstream)
        pushed_s = time.monotonic() - started
        log(f"  upstream: {len(catalog.images)} images, {catalog.distinct_blobs} blobs "
            f"({catalog.blob_bytes / MB:.0f} MB) pushed in {pushed_s:.0f} s")  # fmt: skip
        for major in IMAGES:
            tag = LABELS[major]
            errors: list[str] = []
            proxy = start_registry(proxy_config(major, workdir / f"cache-{major}", upstream.url),
                                   workdir / f"proxy-{major}", major=major)  # fmt: skip
            sampler = Sampler(proxy, interval_s)
            sampling = threading.Thread(target=sampler.run, daemon=True)
            sampler.sample(live=True)
            sampling.start()
            sampler.phase = "fill"
            fill_start = time.monotonic()
            _workload(proxy, sampler, _fill_jobs(catalog, major), workers, errors)
            fill_s = time.monotonic() - fill_start
            sampler.sample(live=True)
            log(f"  {tag}: fill {sampler.pulls} pulls in {fill_s:.0f} s, "
                f"{sampler.failures} failed")  # fmt: skip
            sampler.phase = "steady"
            end = time.monotonic() + steady_s
            seed = major * 1000
            while time.monotonic() < end:
                until = min(end, time.monotonic() + round_s)
                _workload(proxy, sampler, _steady_jobs(catalog, seed, until), workers, errors)
                seed += 1
                live = sampler.sample(live=True)
                log(f"  {tag}: {live['pulls']} pulls, RSS {live['rss'] / MB:.1f} MB, "
                    f"live heap {live['heap_alloc'] / MB:.1f} MB, "
                    f"goroutines {live['goroutines']:.0f}")  # fmt: skip
            sampler.stop.set()
            sampling.join()
            alive = proxy.process.poll() is None
            part.info["series"][str(major)] = sampler.samples
            part.info.setdefault("errors", {})[str(major)] = errors
            part.info.setdefault("fill_seconds", {})[str(major)] = round(fill_s, 1)
            _figures(part, major, sampler, entries, alive)
            proxy.stop()
            proxy = None
            shutil.rmtree(workdir / f"cache-{major}", ignore_errors=True)
    finally:
        if sampler is not None:
            sampler.stop.set()
        if proxy is not None:
            proxy.stop()
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return part


def _figures(part: PartResult, major: int, sampler: Sampler, entries: int, alive: bool) -> None:
    tag = LABELS[major]
    samples = sampler.samples
    live = [s for s in samples if s["live"]]
    start, after_fill, end = live[0], live[1], live[-1]
    steady = [s for s in samples if s["phase"] == "steady"]
    steady_live = [s for s in live if s["phase"] == "steady"]
    # The steady phase's first minute still settles (the fill's garbage, the Go scavenger):
    # the trend is read from its live-heap samples and every RSS sample.
    per_kpull = slope(
        [(s["pulls"] / 1000, s["heap_alloc"] / MB) for s in [after_fill, *steady_live]]
    )
    rss_per_hour = slope([(s["t"] / 3600, s["rss"] / MB) for s in steady])
    steady_pulls = end["pulls"] - after_fill["pulls"]
    add = part.add
    failures = add(Figure("memory", f"{tag}: pulls (fill + steady), failed", "pulls",
                          [float(end["failures"])],
                          note=f"{end['pulls']} pulls, {steady_pulls} steady"))  # fmt: skip
    failures.check(lambda v: v == 0 and alive, "0, registry alive")
    add(Figure("memory", f"{tag}: RSS after fill", "MB", [after_fill["rss"] / MB],
               note=f"VmRSS; {start['rss'] / MB:.1f} MB at start"))  # fmt: skip
    add(Figure("memory", f"{tag}: RSS at the end", "MB", [end["rss"] / MB]))
    peak = max(s["rss"] for s in samples)
    add(Figure("memory", f"{tag}: highest RSS sampled", "MB", [peak / MB]))
    add(Figure("memory", f"{tag}: live heap after fill", "MB", [after_fill["heap_alloc"] / MB],
               note=f"after a forced GC; {start['heap_alloc'] / MB:.1f} MB at start"))  # fmt: skip
    add(Figure("memory", f"{tag}: live heap at the end", "MB", [end["heap_alloc"] / MB]))
    add(Figure("memory", f"{tag}: live heap per 1000 cached entries (fill)", "MB",
               [(after_fill["heap_alloc"] - start["heap_alloc"]) / MB / (entries / 1000)],
               note=f"{entries} repository@digest entries after the fill"))  # fmt: skip
    add(Figure("memory", f"{tag}: steady phase: live heap trend", "MB/1000 pulls", [per_kpull],
               note="least-squares slope over the forced-GC samples"))  # fmt: skip
    add(Figure("memory", f"{tag}: steady phase: RSS trend", "MB/hour", [rss_per_hour],
               note="least-squares slope over every sample"))  # fmt: skip
    add(Figure("memory", f"{tag}: goroutines at the end", "count", [end["goroutines"]],
               note=f"{after_fill['goroutines']:.0f} after fill"))  # fmt: skip
