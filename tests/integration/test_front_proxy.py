"""The rendered front (components/renderers/front_proxy.py) run by the REAL Apache Traffic Server
from Debian (one process: coalescing and TLS), in front of the REAL Distribution of both majors,
proving what issue 26 and the TLS design ask of it (docs/design/front-proxy.md):

(a) N = 10 concurrent cold pulls of a multi-layer image (16 MiB layers) cost the upstream ONE
    fetch per blob (what the major does for one miss: 3.1.1 once, 2.8 twice); the control without
    the front fetches again for every client;
(b) a client that joins an in-flight fetch gets body bytes while that one fetch still runs;
(d) the upstream stopped mid-fetch: every waiting client gets an error, none hangs;
(e) the registry down: the front answers 503 at once; the front down: connection refused;
(f) only blob GETs are coalesced: manifests by tag, HEAD, ?ns=, auth challenges and redirects
    pass through as the registry answers them;
(g) Distribution 3's proxy counters still count (one miss per blob, hits on a warm pull);
(h) a blob is the front's for a moment after its fetch: past it the registry answers again
    (nothing served past a GC), in a bounded store; a blob larger than the store still pulls.

The upstream is a plain Distribution behind bench/relay.py (a shaped link that is slow enough
for the clients to overlap, and counts bytes); the upstream's access log counts its GETs per
blob. Traffic stays on 127.0.0.1. No test asserts a duration: "none hangs" is a client timeout
that would fail the test, "bytes before the fetch ended" an order of events.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.image import Image, build
from bench.relay import ShapedRelay
from components.renderers.front_proxy import COALESCE_TTL_S, Front, FrontCache, check_front
from components.renderers.registry_config import DISTRIBUTIONS, render_registry_config
from components.settings import DEFAULT_UPSTREAMS
from tests.integration.blob_client import (
    BlobResult,
    fetch_blob,
    manifest,
    pull_concurrently,
    pull_image,
    request,
)
from tests.integration.front_proc import (
    FrontProcess,
    make_test_ca,
    managed_front,
    running_front,
    start_front,
    verify_config,
)
from tests.integration.registry_proc import (
    RegistryProcess,
    free_port,
    plain_registry_config,
    running_registry,
    start_registry,
)
from tests.prereq import require_binary
from tests.sample import REGISTRY_IMAGES as IMAGES
from tests.sample import sample_settings

pytestmark = pytest.mark.integration

MAJORS = pytest.mark.parametrize("major", sorted(IMAGES), ids=lambda m: f"v{m}")
N = 10
REPOSITORY = "library/fronttest"
TAG = "1"
NS = "docker.io"
LAYER_BYTES = 16 * 1024 * 1024
# Fast enough for ten uncoalesced copies in the control, slow enough that ten clients started
# together all arrive while the first fetch is still running.
FAST_LINK_BPS = 400e6
SLOW_LINK_BPS = 40e6


@dataclass(frozen=True)
class OriginStore:
    storage: Path
    image: Image
    manifest: dict[str, Any]

    @property
    def layers(self) -> list[str]:
        return [layer["digest"] for layer in self.manifest["layers"]]

    @property
    def blobs(self) -> list[str]:
        return [self.manifest["config"]["digest"], *self.layers]


def make_origin_store(workdir: Path, layers: int = 2) -> OriginStore:
    """An image of ``layers`` layers (16 MiB of random bytes each), pushed once to a plain
    registry's storage under ``workdir``."""
    image = build(workdir / "layout", TAG, layers=layers, layer_bytes=LAYER_BYTES)
    storage = workdir / "storage"
    with running_registry(plain_registry_config(storage), workdir / "push", major=2) as origin:
        pushed = subprocess.run(
            ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
             image.oci_ref, f"docker://{origin.address}/{REPOSITORY}:{TAG}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
        status, body = manifest(origin.url, REPOSITORY, TAG)
        assert status == 200
    return OriginStore(storage, image, body)


@pytest.fixture(scope="module")
def origin_store(tmp_path_factory: pytest.TempPathFactory) -> OriginStore:
    """Every test serves this storage as its upstream: a two-layer image."""
    require_binary("skopeo")
    return make_origin_store(tmp_path_factory.mktemp("origin"))


@dataclass
class Stack:
    """origin registry <- shaped relay <- Distribution proxy (rendered) <- front (rendered)."""

    origin: RegistryProcess
    relay: ShapedRelay
    proxy: RegistryProcess
    front: FrontProcess | None
    cache: FrontCache
    store: OriginStore

    @property
    def url(self) -> str:
        """Where nodes pull: the front's public port, or the registry itself without a front."""
        return self.front.url(self.cache) if self.front else self.proxy.url

    def origin_gets(self, digest: str) -> int:
        """Full GETs of ``digest`` the upstream served (its access log)."""
        return self.origin.log().count(f'"GET /v2/{REPOSITORY}/blobs/{digest} ')

    def registry_requests(self, method: str, path: str) -> int:
        return self.proxy.log().count(f'"{method} {path}')

    def pull(self) -> Any:
        return pull_image(self.url, REPOSITORY, TAG, ns=NS)


def _origin_config(storage: Path) -> dict[str, Any]:
    config = plain_registry_config(storage)
    # Access log on: it counts the upstream's GETs per blob.
    config["log"] = {"level": "info", "formatter": "text", "accesslog": {"disabled": False}}
    return config


def _proxy_config(major: int, storage: Path, remote_url: str) -> dict[str, Any]:
    """The RENDERED cache config for ``major``, pointed at local paths and the local upstream."""
    registry = sample_settings().registry.model_copy(update={"image": IMAGES[major]})
    config = yaml.safe_load(render_registry_config(DEFAULT_UPSTREAMS[0], registry))
    config["storage"]["filesystem"]["rootdirectory"] = str(storage)
    config["proxy"]["remoteurl"] = remote_url
    return config


def _front(backend_port: int, **options: Any) -> Front:
    cache = FrontCache("registry", free_port(), backend_port, options.pop("tls_port", None))
    front = Front((cache,), storage_mb=options.pop("storage_mb", 256), **options)
    assert check_front(front) == []
    return front


@contextlib.contextmanager
def stack(
    store: OriginStore, major: int, workdir: Path, *, with_front: bool = True,
    rate_bps: float = FAST_LINK_BPS, delay_s: float = 0.005, **front_options: Any,
) -> Iterator[Stack]:  # fmt: skip
    origin = start_registry(_origin_config(store.storage), workdir / "origin", major=2)
    relay = ShapedRelay(("127.0.0.1", free_port()), ("127.0.0.1", origin.port),
                        delay_s=delay_s, rate_bps=rate_bps)  # fmt: skip
    relay.start()
    proxy = front = None
    try:
        config = _proxy_config(major, workdir / "cache", f"http://127.0.0.1:{relay.listen[1]}")
        proxy = start_registry(config, workdir / "proxy", major=major)
        cache_front = _front(proxy.port, **front_options)
        if with_front:
            front = start_front(cache_front, workdir / "front")
        yield Stack(origin, relay, proxy, front, cache_front.caches[0], store)
    finally:
        if front is not None:
            front.stop()
        if proxy is not None:
            proxy.stop()
        relay.stop()
        origin.stop()


def _metrics(registry: RegistryProcess) -> str:
    assert registry.metrics_url is not None
    status, _headers, body = request(registry.metrics_url.rsplit("/metrics", 1)[0], "GET",
                                     "/metrics")  # fmt: skip
    assert status == 200
    return body.decode()


def _counter(metrics: str, name: str, **labels: str) -> float:
    want = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith((f"{name}{{", f"{name} ")) and all(w in line for w in want)
    )


def _wait_for(predicate: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- (a) and (g): one upstream fetch per blob for ten concurrent cold pulls -----------------------
@MAJORS
def test_ten_concurrent_cold_pulls_fetch_each_blob_once(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    per_miss = DISTRIBUTIONS[major].upstream_fetches_per_miss
    with stack(origin_store, major, tmp_path) as s:
        results = pull_concurrently(N, s.pull)
        assert all(r.ok for r in results), [r.error or r.blobs for r in results if not r.ok]
        for digest in origin_store.blobs:
            assert s.origin_gets(digest) == per_miss, digest
            # The registry itself saw the blob once: the front fetched it for all ten. (Its access
            # log line comes once the blob is committed, after the client has it all.)
            path = f"/v2/{REPOSITORY}/blobs/{digest}"
            _wait_for(lambda path=path: s.registry_requests("GET", path) >= 1, f"GET {path}")
            assert s.registry_requests("GET", path) == 1
        assert s.front is not None
        stats = s.front.stats()
        assert stats["proxy.process.http.cache_miss_cold"] == len(origin_store.blobs)
        # Requests that found the blob in flight read it while it was written (or fresh).
        assert (
            stats["proxy.process.http.cache_hit_rww"]
            + stats["proxy.process.http.cache_hit_fresh"]
            + stats["proxy.process.http.cache_hit_mem_fresh"]
            >= (N - 1) * 1
        )
        if major == 3:
            metrics = _metrics(s.proxy)
            assert _counter(metrics, "registry_proxy_misses_total", type="blob") == len(
                origin_store.blobs
            )
            # Past the coalescing window the next pull reaches the registry, which counts hits.
            time.sleep(1.5)
            warm = s.pull()
            assert warm.ok
            assert _counter(_metrics(s.proxy), "registry_proxy_hits_total", type="blob") == len(
                origin_store.blobs
            )
        for digest in origin_store.blobs:
            assert s.origin_gets(digest) == per_miss


@MAJORS
def test_control_without_the_front_every_concurrent_pull_fetches_again(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    """Distribution alone (distribution #3969): each of the ten concurrent misses goes to the
    upstream on its own."""
    with stack(origin_store, major, tmp_path, with_front=False) as s:
        results = pull_concurrently(N, s.pull)
        assert all(r.ok for r in results)
        for digest in origin_store.layers:
            assert s.origin_gets(digest) >= N, digest


# --- (b): a client joining an in-flight fetch is streamed to --------------------------------------
@MAJORS
def test_a_client_joining_an_inflight_fetch_gets_bytes_before_it_ends(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    layer = origin_store.layers[0]
    with stack(origin_store, major, tmp_path, rate_bps=SLOW_LINK_BPS) as s:
        first: list[BlobResult] = []
        leader = threading.Thread(
            target=lambda: first.append(fetch_blob(s.url, REPOSITORY, layer, ns=NS))
        )
        leader.start()
        # Join once the one upstream fetch is well under way.
        _wait_for(lambda: s.relay.bytes_down > 2 * 1024 * 1024, "the fetch to be under way")
        joined = [None] * (N - 1)

        def join(index: int) -> None:
            joined[index] = fetch_blob(s.url, REPOSITORY, layer, ns=NS)  # type: ignore[call-overload]

        joiners = [threading.Thread(target=join, args=(i,)) for i in range(N - 1)]
        for thread in joiners:
            thread.start()
        for thread in [leader, *joiners]:
            thread.join(timeout=300)
        fetch = first[0]
        assert fetch.ok, fetch.error
        assert fetch.ended_at is not None
        for result in joined:
            assert isinstance(result, BlobResult) and result.ok, result
            # Streamed: its first bytes came while the single upstream fetch was still running.
            assert result.first_byte_at is not None and result.first_byte_at < fetch.ended_at
        assert s.origin_gets(layer) == DISTRIBUTIONS[major].upstream_fetches_per_miss


# --- (d): upstream stopped mid-fetch --------------------------------------------------------------
@MAJORS
def test_upstream_stopped_mid_fetch_fails_every_waiting_client(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    layer = origin_store.layers[1]
    with stack(origin_store, major, tmp_path, rate_bps=SLOW_LINK_BPS) as s:
        results: list[BlobResult | None] = [None] * N

        def one(index: int) -> None:
            # The timeout is the hang detector: a client still waiting after it fails the test.
            results[index] = fetch_blob(s.url, REPOSITORY, layer, ns=NS, timeout=60)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(N)]
        for thread in threads:
            thread.start()
        _wait_for(lambda: s.relay.bytes_down > 2 * 1024 * 1024, "the fetch to be under way")
        s.origin.stop()
        s.relay.stop()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in threads)
        for result in results:
            assert result is not None
            assert not result.ok
            assert "timed out" not in result.error, result.error  # an error, not a hang
            assert result.error or result.status >= 500
        # Nothing truncated stays in the front: with the upstream back, the blob is whole.
        origin = start_registry(_origin_config(origin_store.storage), tmp_path / "origin2",
                                major=2, port=s.origin.port)  # fmt: skip
        relay = ShapedRelay(s.relay.listen, ("127.0.0.1", origin.port), 0.005, FAST_LINK_BPS)
        relay.start()
        try:
            again = fetch_blob(s.url, REPOSITORY, layer, ns=NS, timeout=60)
            assert again.ok, again.error
        finally:
            relay.stop()
            origin.stop()


# --- (e): registry down, front down ---------------------------------------------------------------
@MAJORS
def test_registry_down_the_front_answers_503_at_once_and_a_stopped_front_refuses(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    with stack(origin_store, major, tmp_path) as s:
        s.proxy.stop()
        for path in (
            f"/v2/{REPOSITORY}/blobs/{origin_store.layers[0]}?ns={NS}",
            f"/v2/{REPOSITORY}/manifests/{TAG}?ns={NS}",
            "/v2/",
        ):
            status, _headers, _body = request(s.url, "GET", path, timeout=10)
            # containerd moves to its next host on any status >= 400.
            assert status == 503, path
        assert s.front is not None
        s.front.stop()
        with pytest.raises(ConnectionRefusedError):
            request(s.url, "GET", "/v2/", timeout=10)


# --- (f): what passes through ---------------------------------------------------------------------
@MAJORS
def test_only_blob_gets_are_coalesced_everything_else_passes_through(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    layer = origin_store.layers[0]
    with stack(origin_store, major, tmp_path) as s:
        manifest_path = f"/v2/{REPOSITORY}/manifests/{TAG}"
        for _ in range(2):
            status, body = manifest(s.url, REPOSITORY, TAG, ns=NS)
            assert status == 200 and body == origin_store.manifest
        # Both reached the registry, with the query string: a tag is never answered by the front.
        assert s.registry_requests("GET", f"{manifest_path}?ns={NS}") == 2

        status, headers, body = request(s.url, "HEAD", f"/v2/{REPOSITORY}/blobs/{layer}?ns={NS}")
        assert (status, body) == (200, b"")
        assert headers["Docker-Content-Digest"] == layer
        assert int(headers["Content-Length"]) > LAYER_BYTES
        # A HEAD stays a HEAD: the front did not turn it into a fetch of the whole blob.
        assert s.registry_requests("HEAD", f"/v2/{REPOSITORY}/blobs/{layer}") == 1
        assert s.registry_requests("GET", f"/v2/{REPOSITORY}/blobs/{layer}") == 0

        unknown = "sha256:" + "0" * 64
        for _ in range(2):
            status, _h, _b = request(s.url, "GET", f"/v2/{REPOSITORY}/blobs/{unknown}?ns={NS}")
            assert status == 404
        # A 404 is never cached: the second one asked the registry again.
        assert s.registry_requests("GET", f"/v2/{REPOSITORY}/blobs/{unknown}") == 2

        # A redirect is the registry's, untouched (not followed, not cached).
        status, headers, _b = request(s.url, "GET", "/v2")
        direct = request(s.proxy.url, "GET", "/v2")
        assert status == direct[0]
        assert headers.get("Location") == direct[1].get("Location")

    # An auth challenge and a request with credentials: a registry that asks for them.
    challenged = plain_registry_config(tmp_path / "auth-storage")
    challenged["auth"] = {"silly": {"realm": "https://auth.example.test/token",
                                    "service": "registry.test"}}  # fmt: skip
    with running_registry(challenged, tmp_path / "auth", major=major) as registry:
        front = _front(registry.port)
        with running_front(front, tmp_path / "auth-front") as proc:
            url = proc.url(front.caches[0])
            status, headers, _b = request(url, "GET", f"/v2/{REPOSITORY}/blobs/{layer}?ns={NS}")
            assert status == 401
            challenge = {k.lower(): v for k, v in headers.items()}["www-authenticate"]
            assert "auth.example.test" in challenge
            for _ in range(2):
                status, _h, _b = request(
                    url, "GET", f"/v2/{REPOSITORY}/blobs/{layer}",
                    headers={"Authorization": "Bearer anything"},
                )  # fmt: skip
                assert status == 404  # the registry's answer, for the registry's client
            # Requests with credentials are never looked up in the front.
            assert proc.stat("proxy.process.http.cache_lookups") == 1


# --- (h): short-lived and bounded ---------------------------------------------------------------
def _store_bytes(front: FrontProcess) -> int:
    """Bytes of the front's disk store in use (ATS reuses the store cyclically)."""
    return front.stat("proxy.process.cache.bytes_used")


@MAJORS
def test_a_blob_is_the_fronts_only_a_moment_after_its_fetch(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    with stack(origin_store, major, tmp_path) as s:
        assert s.front is not None
        first = s.pull()
        assert first.ok
        # It went through the front's bounded store to be streamed ...
        assert 2 * LAYER_BYTES <= _store_bytes(s.front) <= 256 * 1024 * 1024
        # ... and past the coalescing window it is the registry's again: the next pull asks the
        # registry (after a GC it gets what the registry has now, never the front's copy), and
        # the upstream is not asked again.
        path = f"/v2/{REPOSITORY}/blobs/{origin_store.layers[0]}"
        _wait_for(lambda: s.registry_requests("GET", path) == 1, "the first GET logged")
        time.sleep(COALESCE_TTL_S + 0.5)
        assert s.pull().ok
        _wait_for(lambda: s.registry_requests("GET", path) == 2, "the second GET reaching it")
        layer = origin_store.layers[0]
        assert s.origin_gets(layer) == DISTRIBUTIONS[major].upstream_fetches_per_miss


def test_a_blob_larger_than_the_store_still_pulls(
    origin_store: OriginStore, tmp_path: Path
) -> None:
    """A store smaller than the blobs in flight (64 MiB for 3 pulls of 2 x 16 MiB layers, ATS's
    smallest useful store): ATS cannot size-limit what it coalesces (max_doc_size breaks
    read-while-writer, measured), so a blob that does not fit must still reach every client."""
    with stack(origin_store, 3, tmp_path, storage_mb=64) as s:
        results = pull_concurrently(3, s.pull)
        assert all(r.ok for r in results), [r.error for r in results]


# --- the rendered files are what the real tools accept --------------------------------------------
def test_rendered_config_passes_traffic_servers_own_check(tmp_path: Path) -> None:
    ca = make_test_ca(tmp_path / "ca")
    for front in (
        _front(free_port()),
        dataclasses.replace(
            _front(free_port(), tls_port=free_port()), pem_file=str(ca.pem), plain_http=False
        ),
    ):
        checked = verify_config(front, tmp_path / f"verify-{front.plain_http}")
        assert checked.returncode == 0, (checked.stdout + checked.stderr)[-3000:]


# --- TLS: the same traffic_server, on its TLS ports ----------------------------------------------
@MAJORS
def test_tls_front_with_an_ip_san_coalesces_and_a_wrong_ca_is_refused(
    major: int, origin_store: OriginStore, tmp_path: Path
) -> None:
    ca = make_test_ca(tmp_path / "ca")
    other = make_test_ca(tmp_path / "other-ca", name="other")
    with stack(origin_store, major, tmp_path, tls_port=free_port(), pem_file=str(ca.pem)) as s:
        assert s.front is not None
        https = s.front.url(s.cache, tls=True)
        results = pull_concurrently(
            N, lambda: pull_image(https, REPOSITORY, TAG, ns=NS, ca_file=str(ca.ca_cert))
        )
        assert all(r.ok for r in results), [r.error for r in results if not r.ok]
        for digest in origin_store.blobs:
            assert s.origin_gets(digest) == DISTRIBUTIONS[major].upstream_fetches_per_miss
        # During the HTTP -> HTTPS switch the plain port still serves the nodes not yet switched.
        assert pull_image(s.url, REPOSITORY, TAG, ns=NS).ok
        # A client that trusts another CA does not get past the handshake.
        with pytest.raises(ssl.SSLCertVerificationError):
            request(https, "GET", "/v2/", ca_file=str(other.ca_cert))


def test_with_plain_http_off_the_plain_port_refuses_and_never_asks_the_registry(
    origin_store: OriginStore, tmp_path: Path
) -> None:
    """The end of the HTTP -> HTTPS switch: HTTPS serves; the plain port, still a listener (the
    switch is a reload, not a restart), answers 403 at once and the registry never hears of it
    (containerd takes its next host on a 403 as on a refused port)."""
    ca = make_test_ca(tmp_path / "ca")
    with stack(origin_store, 3, tmp_path, tls_port=free_port(), pem_file=str(ca.pem),
               plain_http=False) as s:  # fmt: skip
        assert s.front is not None
        status, _h, _b = request(s.front.url(s.cache, tls=True), "GET", "/v2/",
                                 ca_file=str(ca.ca_cert))  # fmt: skip
        assert status == 200
        seen = s.registry_requests("GET", "/v2/")
        for path in ("/v2/", f"/v2/{REPOSITORY}/manifests/{TAG}?ns={NS}",
                     f"/v2/{REPOSITORY}/blobs/{origin_store.layers[0]}?ns={NS}"):  # fmt: skip
            status, _h, _b = request(s.front.url(s.cache), "GET", path, timeout=10)
            assert status == 403
        assert s.registry_requests("GET", "/v2/") == seen
        assert s.registry_requests("GET", f"/v2/{REPOSITORY}/manifests/{TAG}") == 0


# --- scripts/vm/front.sh: how a change goes live ------------------------------------------------
@contextlib.contextmanager
def _in_flight(url: str, blob: str, ca_file: str | None = None) -> Iterator[list[BlobResult]]:
    """A slow client fetching ``blob`` (16 MiB at ~3 MB/s), under way when the block starts."""
    results: list[BlobResult] = []
    thread = threading.Thread(target=lambda: results.append(
        fetch_blob(url, REPOSITORY, blob, ns=NS, ca_file=ca_file, pause_s=0.02)))  # fmt: skip
    thread.start()
    _wait_for(lambda: bool(results) or _bytes_moving(thread), "the transfer under way")
    yield results
    thread.join(timeout=180)
    assert results, "the transfer never ended"


def _bytes_moving(thread: threading.Thread) -> bool:
    time.sleep(0.5)  # the client's first chunks: its request is in, its connection open
    return thread.is_alive()


def test_front_script_reloads_for_rules_restarts_drained_for_a_new_port_and_refuses_bad_files(
    origin_store: OriginStore, tmp_path: Path
) -> None:
    """scripts/vm/front.sh for real (real traffic_ctl, traffic_server and traffic_manager; only
    systemctl is a stand-in): a first apply starts the front; the same files again change
    nothing; plain HTTP off (remap rules only) is a reload and a transfer in flight finishes;
    a new cache (a new listening port) is a restart that waits for the transfer in flight to
    end; a file set traffic_server refuses is never installed and the front keeps serving."""
    ca = make_test_ca(tmp_path / "ca")
    storage = tmp_path / "registry-storage"
    shutil.copytree(origin_store.storage, storage)
    layer = origin_store.layers[0]
    with (
        running_registry(plain_registry_config(storage), tmp_path / "registry") as registry,
        managed_front(tmp_path / "front") as managed,
    ):
        cache = FrontCache("registry", free_port(), registry.port, free_port())
        front = Front((cache,), pem_file=str(ca.pem), storage_mb=128)
        https, plain = f"https://127.0.0.1:{cache.tls_port}", f"http://127.0.0.1:{cache.port}"
        ca_file = str(ca.ca_cert)

        first = managed.apply(front)
        assert first.returncode == 0, first.stderr + managed.log()[-2000:]
        assert "action=start" in first.stdout and "store=created" in first.stdout
        assert fetch_blob(https, REPOSITORY, layer, ns=NS, ca_file=ca_file).ok
        assert fetch_blob(plain, REPOSITORY, layer, ns=NS).ok

        again = managed.apply(front)
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines()[-2:] == ["action=none", "changed=0"]

        plain_off = dataclasses.replace(front, plain_http=False)
        with _in_flight(https, layer, ca_file) as transfer:
            started = time.monotonic()
            off = managed.apply(plain_off, restart=False)
            assert off.returncode == 0, off.stderr
            assert "action=reload" in off.stdout and "written=remap.config" in off.stdout
        [done] = transfer
        assert done.ok, done.error
        assert done.ended_at is not None and done.ended_at > started
        assert request(plain, "GET", "/v2/")[0] == 403
        assert fetch_blob(https, REPOSITORY, layer, ns=NS, ca_file=ca_file).ok

        # A cache whose registry is not running: its new port answers, and says 503.
        second = FrontCache("registry-ghcr", free_port(), free_port(), free_port())
        grown = dataclasses.replace(plain_off, caches=(cache, second))
        refused = managed.apply(grown, restart=False)
        assert refused.returncode != 0 and "may not restart the front" in refused.stderr
        with _in_flight(https, layer, ca_file) as transfer:
            started = time.monotonic()
            added = managed.apply(grown)
            assert added.returncode == 0, added.stderr + managed.log()[-2000:]
            assert "action=drained-restart" in added.stdout
        [done] = transfer
        assert done.ok, done.error
        assert done.ended_at is not None and started < done.ended_at
        new_port = f"https://127.0.0.1:{second.tls_port}"
        assert request(new_port, "GET", "/v2/", ca_file=ca_file)[0] == 503

        # A bundle traffic_server refuses: nothing installed, the front still serving.
        installed = (managed.workdir / "etc" / "remap.config").read_text()
        broken = managed.apply(grown, edit=lambda text: text.replace("cachekey.so", "nope.so"))
        assert broken.returncode == 3, broken.stdout + broken.stderr
        assert "refuses the new configuration; nothing was installed" in broken.stderr
        assert (managed.workdir / "etc" / "remap.config").read_text() == installed
        assert fetch_blob(https, REPOSITORY, layer, ns=NS, ca_file=ca_file).ok


# --- the certificate: made on the VM, renewed and rotated without cutting a transfer -----------
def _tls_params(front: Front, **changes: Any) -> dict[str, Any]:
    return {"ACTION": "trust", "GENERATION": 1, "TRUST_PREVIOUS": 0, "SANS": "IP:127.0.0.1",
            "CA_DAYS": 3650, "CERT_DAYS": 90, "RENEW_BEFORE_DAYS": 30,
            "TLS_PORT": front.caches[0].tls_port, **changes}  # fmt: skip


def _served(url: str, ca_file: Path) -> dict[str, Any]:
    """The certificate a new handshake gets, verified against ``ca_file`` (IP SAN included)."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        certificate = tls.getpeercert()
    assert certificate is not None
    return dict(certificate)


def test_certificate_made_on_the_vm_renews_and_rotates_without_cutting_a_transfer(
    origin_store: OriginStore, tmp_path: Path
) -> None:
    """scripts/vm/registry-tls.sh with the real front: the trust step makes the CA and a first
    certificate and prints only the CA certificate; a client trusting exactly that verifies the
    IP SAN; cron's renewal (a new PEM, a reload) switches to a new certificate while a transfer is
    in flight, and the transfer finishes; a CA rotation in one step is refused before anything
    changes; in two steps the nodes' bundle holds both CAs, the issue step switches the served
    certificate to the new CA and shreds the old CA's key."""
    storage = tmp_path / "registry-storage"
    shutil.copytree(origin_store.storage, storage)
    layer = origin_store.layers[0]
    with (
        running_registry(plain_registry_config(storage), tmp_path / "registry") as registry,
        managed_front(tmp_path / "front") as managed,
    ):
        cache = FrontCache("registry", free_port(), registry.port, free_port())
        front = Front((cache,), managed_certificate=True, storage_mb=128)
        https = f"https://127.0.0.1:{cache.tls_port}"

        trust = managed.tls(_tls_params(front))
        assert trust.returncode == 0, trust.stderr
        bundle = tmp_path / "bundle.pem"
        bundle.write_text(trust.stdout)
        # Only the CA's certificate crosses: one certificate, no key.
        assert trust.stdout.count("BEGIN CERTIFICATE") == 1 and "PRIVATE KEY" not in trust.stdout
        ca_key = managed.tls_dir / "ca" / "1" / "ca.key"
        assert ca_key.stat().st_mode & 0o777 == 0o600
        applied = managed.apply(front)
        assert applied.returncode == 0, applied.stderr + managed.log()[-2000:]
        first = _served(https, bundle)
        assert ("IP Address", "127.0.0.1") in first["subjectAltName"]
        assert fetch_blob(https, REPOSITORY, layer, ns=NS, ca_file=str(bundle)).ok

        with _in_flight(https, layer, str(bundle)) as transfer:
            started = time.monotonic()
            renewed = managed.renew_now()
            assert renewed.returncode == 0, renewed.stderr
            assert "issued=1" in renewed.stdout
        [done] = transfer
        assert done.ok, done.error
        assert done.ended_at is not None and started < done.ended_at
        second = _served(https, bundle)
        assert second["serialNumber"] != first["serialNumber"]

        # A rotation in one step would leave nodes trusting only CA 2 while CA 1's certificate
        # is served until the step after the nodes: refused, nothing changed.
        one_step = managed.tls(_tls_params(front, GENERATION=2))
        assert one_step.returncode == 1
        assert "rotate in two steps" in one_step.stderr
        assert _served(https, bundle)["serialNumber"] == second["serialNumber"]

        both = managed.tls(_tls_params(front, GENERATION=2, TRUST_PREVIOUS=1))
        assert both.returncode == 0, both.stderr
        assert both.stdout.count("BEGIN CERTIFICATE") == 2
        bundle.write_text(both.stdout)  # the nodes' step writes this
        with _in_flight(https, layer, str(bundle)) as transfer:
            issued = managed.tls(_tls_params(front, ACTION="issue", GENERATION=2))
            assert issued.returncode == 0, issued.stderr
            assert "issued=1" in issued.stdout and "issuer_generation=2" in issued.stdout
        [done] = transfer
        assert done.ok, done.error
        only_new = tmp_path / "ca-2.pem"
        only_new.write_text((managed.tls_dir / "ca" / "2" / "ca.crt").read_text())
        assert _served(https, only_new)["serialNumber"] != second["serialNumber"]
        only_old = tmp_path / "ca-1.pem"
        only_old.write_text((managed.tls_dir / "ca" / "1" / "ca.crt").read_text())
        with pytest.raises(ssl.SSLCertVerificationError):
            _served(https, only_old)
        assert not ca_key.exists()
