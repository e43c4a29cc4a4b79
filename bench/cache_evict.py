"""What the hourly eviction costs on a cache of a few thousand blobs, and what a pull sees while
it runs (issue 24): ``python bench/run.py --only evict --merge`` (loopback only, no root).

For each major (Debian's 2.8.2, Distribution 3.1.1) the RENDERED config serves as a pull-through
cache through the docker stand-in of the integration tests (tests/integration/docker_standin.py:
the real binary, SIGTERM and a wait for docker's stop), in front of a plain 2.8 registry on
loopback holding a catalog of multi-arch images (bench/registry_api.py: 300 repositories x 2
tags, linux/amd64 + arm64, three layers per platform). Every image is pulled once through the
cache, the way containerd pulls (both platforms). Then the real scripts/vm/registry-maintenance.sh:

1. ``evict NAME BUDGET`` with a budget above the cache's size: the hourly run when nothing is to
   be done (the access log folded into the record, the plan computed);
2. ``disk 100 NAME=BUDGET``: the report verify.py reads (the plan again, read-only);
3. ``evict NAME BUDGET`` with half the cache's size as the budget (REGISTRY_EVICT_MIN_AGE=0: the
   day's protection would keep everything just pulled): drained stop, unlink, GC, start.

While 3 runs, four client threads keep pulling random images as containerd would: from the cache,
and when it refuses the connection, from the upstream (containerd's next host). Every body is
checked against its digest: a failure is a pull that failed both ways.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Figure, PartResult
from bench.registry_api import PLATFORMS, Catalog, RegistryClient, build_catalog
from components.renderers import maintenance
from components.renderers.registry_config import DISTRIBUTIONS, render_registry_config
from components.renderers.shell import SCRIPTS_DIR
from components.settings import DEFAULT_UPSTREAMS, RegistrySettings
from tests.integration.docker_standin import FAKE_DOCKER
from tests.integration.registry_proc import (
    find_registry_binary,
    free_port,
    listen_config,
    plain_registry_config,
    start_registry,
    wait_until_answers,
)

LABELS = {2: "2.8", 3: "3.1.1"}
IMAGES = {2: "registry:2.8.3", 3: "registry:3.1.1"}
SCRIPT = SCRIPTS_DIR / maintenance.SCRIPT_SOURCE
V2 = "docker/registry/v2"


def catalog(repositories: int, tags: int) -> Catalog:
    return build_catalog(repositories, tags, seed="bench-evict")


def _blob_files(root: Path) -> int:
    return sum(1 for _ in (root / V2 / "blobs").rglob("data"))


def _du(path: Path) -> int:
    return int(subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True,
                              check=True).stdout.split()[0])  # fmt: skip


class Puller(threading.Thread):
    """Pull random images: the cache first, the upstream when the cache refuses (containerd)."""

    def __init__(self, images: Catalog, cache_port: int, upstream_port: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.images, self.cache_port, self.upstream_port = images, cache_port, upstream_port
        self.rng = random.Random(seed)  # noqa: S311 (test data)
        self.stop = threading.Event()
        self.from_cache = self.from_upstream = self.failed = self.cache_errors = 0
        self.refusal_ms: list[float] = []
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            image = self.rng.choice(self.images.images)
            platform = self.rng.choice(PLATFORMS)
            cache = RegistryClient("127.0.0.1", self.cache_port, timeout=30)
            started = time.monotonic()
            result = cache.pull(image.repository, image.tag, platform)
            cache.close()
            if result.ok:
                self.from_cache += 1
                continue
            # containerd moves to the next host on any failure of this one (a dial error, a
            # status >= 400, a connection the draining server closed).
            if "Refused" in result.error:
                self.refusal_ms.append((time.monotonic() - started) * 1000)
            else:
                self.cache_errors += 1
            upstream = RegistryClient("127.0.0.1", self.upstream_port, timeout=30)
            direct = upstream.pull(image.repository, image.tag, platform)
            upstream.close()
            if direct.ok:
                self.from_upstream += 1
            else:
                self.failed += 1
                self.errors.append(f"upstream: {direct.error}")


def scenario(major: int, workdir: Path, images: Catalog, log: Any) -> dict[str, Any]:
    binary = find_registry_binary(major)
    upstream_settings = DEFAULT_UPSTREAMS[1]
    name = upstream_settings.container
    state = workdir / "docker-state"
    state.mkdir(parents=True)
    fake = workdir / "fake-docker"
    fake.write_text(FAKE_DOCKER)
    fake.chmod(0o755)
    config_root, data_root = workdir / "etc", workdir / "data"
    env = {
        **os.environ, **DISTRIBUTIONS[major].env,
        "REGISTRY_DOCKER": str(fake), "REGISTRY_GC_COMMAND": binary,
        "REGISTRY_CONFIG_ROOT": str(config_root), "REGISTRY_DATA_ROOT": str(data_root),
        "REGISTRY_LOCK_DIR": str(workdir / "lock"),
        "REGISTRY_STATE_ROOT": str(workdir / "state"),
        "FAKE_DOCKER_STATE": str(state), "FAKE_REGISTRY_BINARY": binary,
    }  # fmt: skip
    upstream = start_registry(plain_registry_config(workdir / "upstream"), workdir / "up", major=2)
    result: dict[str, Any] = {"major": major}
    try:
        client = RegistryClient(upstream.host, upstream.port)
        pushed: set[str] = set()
        for image in images.images:
            client.push_image(image, {}, pushed)
        client.close()
        registry = RegistrySettings(image=IMAGES[major])
        config = yaml.safe_load(render_registry_config(upstream_settings, registry))
        config["storage"]["filesystem"]["rootdirectory"] = str(data_root / name)
        config["proxy"]["remoteurl"] = upstream.url
        port = free_port()
        config = listen_config(config, port, free_port())
        (config_root / name).mkdir(parents=True)
        (config_root / name / "config.yml").write_text(yaml.safe_dump(config))
        subprocess.run([str(fake), "start", name], env=env, check=True)
        wait_until_answers(f"http://127.0.0.1:{port}/v2/")
        started = time.monotonic()
        client = RegistryClient("127.0.0.1", port)
        for image in images.images:
            for platform in PLATFORMS:
                pulled = client.pull(image.repository, image.tag, platform)
                assert pulled.ok, pulled.error
        client.close()
        time.sleep(2)  # the proxy commits the last blobs as it streams them
        storage = data_root / name
        size = _du(storage)
        result.update(
            fill_s=round(time.monotonic() - started, 1), blobs=_blob_files(storage),
            repositories=len({i.repository for i in images.images}), size_bytes=size,
        )  # fmt: skip
        log(f"  {LABELS[major]}: {result['blobs']} blobs, {size / 1e6:.1f} MB cached")

        def timed(*args: str, extra: dict[str, str] | None = None) -> tuple[float, str]:
            begun = time.monotonic()
            done = subprocess.run(["bash", str(SCRIPT), *args], env={**env, **(extra or {})},
                                  capture_output=True, text=True, timeout=1800)  # fmt: skip
            assert done.returncode == 0, done.stderr
            return time.monotonic() - begun, done.stdout + done.stderr

        result["within_budget_s"], _ = timed("evict", name, str(size * 2))
        result["disk_report_s"], _ = timed("disk", "100", f"{name}={size // 2}")
        pullers = [Puller(images, port, upstream.port, seed) for seed in range(4)]
        for puller in pullers:
            puller.start()
        time.sleep(1)
        result["evict_s"], output = timed("evict", name, str(size // 2),
                                          extra={"REGISTRY_EVICT_MIN_AGE": "0"})  # fmt: skip
        time.sleep(1)
        for puller in pullers:
            puller.stop.set()
        for puller in pullers:
            puller.join(timeout=120)
        down = re.search(r"down for (\d+)s", output)
        gc = re.search(r"garbage collection done in (\d+)s", output)
        unlinked = re.search(r"unlinked (\d+) repositories", output)
        # Measured by the script after the GC, before the start: the pulls that follow re-cache
        # evicted images at once (they are misses again), which a du afterwards would count.
        after = re.search(r"; cache (\d+) bytes", output)
        refusals = sorted(ms for p in pullers for ms in p.refusal_ms)
        result.update(
            down_s=int(down[1]) if down else None, gc_s=int(gc[1]) if gc else None,
            evicted=int(unlinked[1]) if unlinked else 0,
            size_after_bytes=int(after[1]) if after else None,
            budget_bytes=size // 2,
            pulls_from_cache=sum(p.from_cache for p in pullers),
            pulls_from_upstream=sum(p.from_upstream for p in pullers),
            pulls_failed=sum(p.failed for p in pullers),
            cache_errors_not_refused=sum(p.cache_errors for p in pullers),
            errors=[e for p in pullers for e in p.errors][:5],
            refusal_ms_median=refusals[len(refusals) // 2] if refusals else None,
            refusal_ms_max=refusals[-1] if refusals else None,
            log=[line for line in output.splitlines() if "registry-maintenance[" in line],
        )  # fmt: skip
        log(f"  {LABELS[major]}: evict {result['evict_s']:.1f}s, down {result['down_s']}s, "
            f"{result['evicted']} repositories, pulls during it: {result['pulls_from_cache']} "
            f"cache / {result['pulls_from_upstream']} upstream / "
            f"{result['pulls_failed']} failed")  # fmt: skip
    finally:
        pidfile = state / f"{name}.pid"
        if pidfile.exists():
            subprocess.run([str(fake), "stop", "--time", "75", name], env=env, check=False)
        upstream.stop()
    return result


def run(log: Any = print, repositories: int = 300, tags: int = 2) -> PartResult:
    part = PartResult("evict")
    images = catalog(repositories, tags)
    part.info["catalog"] = {"repositories": repositories, "tags": tags,
                            "distinct_blobs": images.distinct_blobs,
                            "blob_mb": round(images.blob_bytes / 1e6, 1)}  # fmt: skip
    results = []
    for major in (3, 2):
        workdir = Path(tempfile.mkdtemp(prefix=f"rm-bench-evict-v{major}-"))
        try:
            results.append(scenario(major, workdir, images, log))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    part.info["scenarios"] = results
    for r in results:
        tag = LABELS[r["major"]]
        cache = (
            f"{r['blobs']} blobs, {r['repositories']} repositories, {r['size_bytes'] / 1e6:.1f} MB"
        )
        part.add(Figure("evict", f"{tag}: hourly evict run within budget", "s",
                        [r["within_budget_s"]],
                        note=f"{cache}: log scan + plan, no stop"))  # fmt: skip
        part.add(Figure("evict", f"{tag}: disk report (verify.py)", "s", [r["disk_report_s"]],
                        note="the plan again, read-only"))  # fmt: skip
        part.add(Figure("evict", f"{tag}: evict run over budget (budget = half)", "s",
                        [r["evict_s"]],
                        note=f"{r['evicted']} of {r['repositories']} repositories unlinked; "
                        f"{(r['size_after_bytes'] or 0) / 1e6:.1f} MB left (GC done, before the "
                        "start) of a "
                        f"{r['budget_bytes'] / 1e6:.1f} MB budget; GC {r['gc_s']} s"))  # fmt: skip
        part.add(Figure("evict", f"{tag}: cache down (drain, unlink, GC, start)", "s",
                        [float(r["down_s"] or 0)]))  # fmt: skip
        part.add(Figure("evict", f"{tag}: pulls failed during the eviction", "count",
                        [float(r["pulls_failed"])],
                        note=f"{r['pulls_from_cache']} served by the cache, "
                        f"{r['pulls_from_upstream']} by the upstream after the cache failed "
                        f"({r['cache_errors_not_refused']} of them not a refusal: a keep-alive "
                        "connection the drain closed); "
                        f"(median {r['refusal_ms_median'] or 0:.1f} ms, max "
                        f"{r['refusal_ms_max'] or 0:.1f} ms to the refusal)"
                        + (f"; {r['errors']}" if r["errors"] else "")).check(
                            lambda v: v == 0, "0"))  # fmt: skip
    return part
