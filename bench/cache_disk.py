"""Part "disk": what TTL expiry plus the project's GC procedure really free on a cache's disk, per
Distribution major, for manifests, for layers shared between images and for multi-arch children
(issue 24; distribution #4957, #4659).

Two multi-arch images (linux/amd64 + linux/arm64) in two repositories of a local upstream
(a plain Distribution 2.8 on loopback): ``disk/a:1`` and ``disk/b:1``. Per platform each has a
4 MiB base layer that BOTH share, a 1 MiB layer of its repository and a 1 MiB layer of its own
(bench/registry_api.py builds and pushes them). Each is pulled the way containerd pulls (the tag,
the index, the platform's manifest, config, layers), for both platforms, through a proxy running
the RENDERED config of the major under test. The timeline, with the TTL T:

    t=0       pull a                      (a's entries scheduled to expire at T)
    t=T/2     pull a again (a hit), pull b (b's entries: 1.5 T)
    ~T        a expired -> disk measured; upstream stopped: is b still served?
    ~1.5 T    b expired -> disk measured
    GC        the maintenance script's procedure: registry stopped, `registry garbage-collect
              CONFIG` (never --delete-untagged), started again -> disk measured; upstream
              stopped: is anything still served?

- 3.1.1 runs with ``registry.proxyTtl`` = T (20 s): the real timers.
- 2.8 hard-codes 168 h and ignores ``proxy.ttl``: its expiry is brought forward by rewriting its
  own ``scheduler-state.json`` while it is stopped (the entries' ``ExpiryData``, keeping the
  same order and spacing), then started again: the same timers (the scheduler re-arms every entry
  from the file at start), a week sooner.
- A 3.1.1 control with ``storage.delete.enabled: false`` (the rendered config has it true):
  distribution #4957 reports that expiry then never reclaims a blob.
Disk is counted from the cache's own tree: blob data files (count, bytes), manifest revision
links, layer links, tag links, and the allocated total (st_blocks). Loopback only, no root.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import Figure, PartResult
from bench.registry_api import PLATFORMS, Catalog, CatalogImage, RegistryClient, build_catalog
from components.renderers.registry_config import render_registry_config
from components.settings import DEFAULT_UPSTREAMS, RegistrySettings
from tests.integration.registry_proc import (
    RegistryProcess,
    answers,
    find_registry_binary,
    plain_registry_config,
    start_registry,
)
from tests.sample import REGISTRY_IMAGES as IMAGES

LABELS = {2: "2.8", 3: "3.1.1"}
MIB = 1024 * 1024
TTL_S = 20
V2 = "docker/registry/v2"


def catalog() -> Catalog:
    # Two repositories ("disk/a", "disk/b" after renaming), one tag each, one base for both.
    built = build_catalog(
        2, 1, bases=1, base_bytes=4 * MIB, repo_layer_bytes=MIB, tag_layer_bytes=MIB,
        seed="bench-disk",
    )  # fmt: skip
    images = [
        CatalogImage(f"disk/{name}", "1", image.index, image.children)
        for name, image in zip("ab", built.images, strict=True)
    ]
    return Catalog(images)


def usage(root: Path) -> dict[str, Any]:
    """What the cache holds on disk, from its own tree."""
    blobs = list((root / V2 / "blobs").glob("sha256/*/*/data"))
    repos = root / V2 / "repositories"
    allocated = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                allocated += (Path(dirpath) / name).stat().st_blocks * 512
    return {
        "blob_files": len(blobs),
        "blob_mib": round(sum(p.stat().st_size for p in blobs if p.exists()) / MIB, 2),
        "manifest_revisions": len(list(repos.glob("*/*/_manifests/revisions/sha256/*/link"))),
        "layer_links": len(list(repos.glob("*/*/_layers/sha256/*/link"))),
        "tag_links": len(list(repos.glob("*/*/_manifests/tags/*/current/link"))),
        "uploads": len(list(repos.glob("*/*/_uploads/*"))),
        "allocated_mib": round(allocated / MIB, 2),
    }


def servable(proxy: RegistryProcess, repository: str) -> bool:
    client = RegistryClient(proxy.host, proxy.port, timeout=20)
    try:
        return all(client.pull(repository, "1", platform).ok for platform in PLATFORMS)
    finally:
        client.close()


def expiries(root: Path) -> dict[str, str]:
    """The saved schedule: key -> expiry. The registry rewrites the file in place, so a read
    can catch it empty or half written: read again."""
    path = root / "scheduler-state.json"
    for _ in range(50):
        if not path.exists():
            return {}
        with contextlib.suppress(json.JSONDecodeError):
            state = json.loads(path.read_text())
            return {key: entry["ExpiryData"] for key, entry in state.items()}
        time.sleep(0.1)
    raise RuntimeError(f"{path} stayed unreadable")


def wait_for(predicate: Any, what: str, timeout: float) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.25)
    return time.monotonic() - start


def scheduled(root: Path, repository: str) -> int:
    """Entries of ``repository`` still in the saved schedule (saved every 5 s once changed: an
    entry gone from the file has fired, whatever its handler did)."""
    return sum(key.startswith(f"{repository}@") for key in expiries(root))


def proxy_config(major: int, storage: Path, remote_url: str, delete: bool) -> dict[str, Any]:
    registry = RegistrySettings(image=IMAGES[major], proxy_ttl=f"{TTL_S}s" if major == 3 else None)
    config = yaml.safe_load(render_registry_config(DEFAULT_UPSTREAMS[0], registry))
    config["storage"]["filesystem"]["rootdirectory"] = str(storage)
    config["storage"]["delete"]["enabled"] = delete
    config["proxy"]["remoteurl"] = remote_url
    return config


def garbage_collect(major: int, proxy: RegistryProcess) -> tuple[RegistryProcess, str]:
    """The maintenance script's GC: stop, `registry garbage-collect CONFIG`, start again."""
    config = yaml.safe_load(proxy.config_path.read_text())
    proxy.stop()
    result = subprocess.run(
        [find_registry_binary(major), "garbage-collect", str(proxy.config_path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    summary = re.findall(r"\d+ blobs marked, \d+ blobs and \d+ manifests eligible for deletion",
                         result.stdout + result.stderr)  # fmt: skip
    again = start_registry(config, proxy.config_path.parent, major=major, port=proxy.port,
                           metrics_port=proxy.metrics_port)  # fmt: skip
    return again, (summary[-1] if summary else f"exit {result.returncode}: {result.stderr[-300:]}")


class Upstream:
    """The local upstream, stoppable and startable on the same port (remoteurl stays right)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.config = plain_registry_config(workdir / "data")
        self.process: RegistryProcess | None = start_registry(self.config, workdir / "run",
                                                              major=2)  # fmt: skip
        self.port = self.process.port
        self.url = self.process.url

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def start(self) -> None:
        if self.process is None:
            self.process = start_registry(self.config, self.workdir / "run", major=2,
                                          port=self.port)  # fmt: skip

    @contextlib.contextmanager
    def down(self) -> Any:
        self.stop()
        try:
            yield
        finally:
            self.start()


def scenario(
    major: int, workdir: Path, upstream: Upstream, images: Catalog, *, delete: bool = True,
    log: Any = print,
) -> dict[str, Any]:  # fmt: skip
    storage = workdir / "cache"
    a, b = (image.repository for image in images.images)
    out: dict[str, Any] = {"major": major, "delete_enabled": delete, "ttl_s": TTL_S}
    proxy = start_registry(proxy_config(major, storage, upstream.url, delete), workdir / "proxy",
                           major=major)  # fmt: skip
    try:
        t0 = time.monotonic()
        out["pulled_a"] = servable(proxy, a)
        wait_for(lambda: expiries(storage), "the scheduler state on disk", 15)
        a_before = {k: v for k, v in expiries(storage).items() if k.startswith(a)}
        time.sleep(max(0.0, t0 + TTL_S / 2 - time.monotonic()))
        out["pulled_a_again"] = servable(proxy, a)
        out["pulled_b"] = servable(proxy, b)
        time.sleep(6)  # the scheduler saves its state every 5 s
        state = expiries(storage)
        # distribution #4659: a hit does not push the entry's expiry back.
        out["a_ttl_refreshed_by_a_hit"] = any(
            state.get(key) != value for key, value in a_before.items()
        )
        out["entries"] = len(state)
        out["after_pulls"] = usage(storage)
        # GC before anything expired: what the weekly GC frees on its own (all 2.8 ever gets in
        # its first week).
        proxy, out["gc_before_expiry"] = garbage_collect(major, proxy)
        out["after_gc_before_expiry"] = usage(storage)
        if major == 2:
            # 168h hard-coded: bring the week forward, keeping a's and b's spacing.
            proxy.stop()
            now = datetime.datetime.now(datetime.UTC)
            entries = json.loads((storage / "scheduler-state.json").read_text())
            for key, entry in entries.items():
                due = TTL_S / 2 if key.startswith(a) else TTL_S
                entry["ExpiryData"] = (now + datetime.timedelta(seconds=due)).isoformat()
            (storage / "scheduler-state.json").write_text(json.dumps(entries))
            proxy = start_registry(yaml.safe_load(proxy.config_path.read_text()),
                                   workdir / "proxy", major=major, port=proxy.port,
                                   metrics_port=proxy.metrics_port)  # fmt: skip
        wait_for(lambda: scheduled(storage, a) == 0, "a's expiry", 4 * TTL_S)
        out["after_a_expired"] = usage(storage)
        with upstream.down():
            out["b_served_offline_after_a_expired"] = servable(proxy, b)
        wait_for(lambda: scheduled(storage, b) == 0, "b's expiry", 4 * TTL_S)
        out["after_all_expired"] = usage(storage)
        proxy, out["gc"] = garbage_collect(major, proxy)
        out["after_gc"] = usage(storage)
        with upstream.down():
            out["served_offline_after_gc"] = {r: servable(proxy, r) for r in (a, b)}
        errors = [line for line in proxy.log().splitlines() if "Scheduler error" in line]
        out["scheduler_errors"] = len(errors)
        out["scheduler_error_sample"] = errors[0][-300:] if errors else ""
        log(f"  {LABELS[major]}{'' if delete else ' (delete disabled)'}: {out}")
    finally:
        proxy.stop()
    return out


def run(log: Any = print) -> PartResult:
    part = PartResult("disk")
    workdir = Path(tempfile.mkdtemp(prefix="rm-bench-disk-"))
    images = catalog()
    part.info["images"] = {
        "repositories": [image.repository for image in images.images],
        "platforms": list(PLATFORMS),
        "layers_per_platform": "4 MiB base shared by both images, 1 MiB per repository, 1 MiB own",
        "distinct_blob_mib": round(images.blob_bytes / MIB, 2),
    }
    upstream: Upstream | None = None
    results: list[dict[str, Any]] = []
    try:
        upstream = Upstream(workdir / "upstream")
        assert upstream.process is not None
        client = RegistryClient(upstream.process.host, upstream.port)
        homes: dict[str, str] = {}
        pushed: set[str] = set()
        for image in images.images:
            client.push_image(image, homes, pushed)
        client.close()
        for major, delete in ((3, True), (2, True), (3, False)):
            case = workdir / f"v{major}-{'delete' if delete else 'nodelete'}"
            results.append(scenario(major, case, upstream, images, delete=delete, log=log))
            assert answers(f"{upstream.url}/v2/")
    finally:
        if upstream is not None:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    part.info["scenarios"] = results
    for result in results:
        _figures(part, result)
    return part


def _figures(part: PartResult, r: dict[str, Any]) -> None:
    tag = LABELS[r["major"]] + ("" if r["delete_enabled"] else ", delete disabled (#4957)")
    how = "real proxy.ttl 20s" if r["major"] == 3 else "168h brought forward in its state file"
    for moment, key in (("after both pulls", "after_pulls"),
                        ("after a GC before any expiry", "after_gc_before_expiry"),
                        ("a expired", "after_a_expired"),
                        ("both expired", "after_all_expired"),
                        ("after GC", "after_gc")):  # fmt: skip
        u = r[key]
        part.add(Figure("disk", f"{tag}: blob data {moment}", "MiB", [u["blob_mib"]],
                        note=f"{u['blob_files']} blobs, {u['manifest_revisions']} manifest "
                        f"revisions, {u['layer_links']} layer links, {u['tag_links']} tags; "
                        f"{u['allocated_mib']} MiB allocated"
                        + (f"; {how}" if key == "after_pulls" else "")
                        + (f"; {r['gc']}" if key == "after_gc" else "")
                        + (f"; {r['gc_before_expiry']}" if key == "after_gc_before_expiry"
                           else "")))  # fmt: skip
    part.add(Figure("disk", f"{tag}: b served, upstream down, after a expired", "yes=1",
                    [float(r["b_served_offline_after_a_expired"])],
                    note="b's own entries had not expired; a and b share the base"))  # fmt: skip
    part.add(Figure("disk", f"{tag}: a hit refreshed a's TTL (#4659)", "yes=1",
                    [float(r["a_ttl_refreshed_by_a_hit"])]))  # fmt: skip
    sample = r["scheduler_error_sample"]
    sample = sample[sample.find("OnExpire") :][:160]
    part.add(Figure("disk", f"{tag}: scheduler errors logged at expiry", "count",
                    [float(r["scheduler_errors"])], note=sample))  # fmt: skip
