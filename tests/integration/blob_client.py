"""A registry client that pulls the way containerd does (manifest by tag, then the config and
layer blobs, three at a time, each request with ``?ns=<registry>``) and records, per blob, when
the response headers and the first body bytes arrived. For the front's tests and benchmark.

    result = pull_image("http://127.0.0.1:5000", "library/x", "1", ns="docker.io")
    result.ok, result.seconds, result.blobs["sha256:..."].first_byte_at
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import json
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.index.v1+json",
    )
)


@dataclass
class BlobResult:
    digest: str
    status: int = 0
    started_at: float = 0.0  # time.monotonic() of each event
    headers_at: float | None = None
    first_byte_at: float | None = None
    ended_at: float | None = None
    size: int = 0
    expected_size: int | None = None
    sha256: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.status == 200 and self.sha256 == self.digest


@dataclass
class PullResult:
    manifest_status: int = 0
    blobs: dict[str, BlobResult] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.blobs) and all(b.ok for b in self.blobs.values())


def connect(
    base_url: str, timeout: float, ca_file: str | None = None
) -> http.client.HTTPConnection:
    url = urllib.parse.urlsplit(base_url)
    assert url.hostname is not None
    if url.scheme == "https":
        context = ssl.create_default_context(cafile=ca_file)
        return http.client.HTTPSConnection(url.hostname, url.port, timeout=timeout,
                                           context=context)  # fmt: skip
    return http.client.HTTPConnection(url.hostname, url.port, timeout=timeout)


def request(
    base_url: str,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
    ca_file: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One request; (status, headers, body). Only a test's own loopback/netns addresses."""
    connection = connect(base_url, timeout, ca_file)
    try:
        connection.request(method, path, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def fetch_blob(
    base_url: str,
    repository: str,
    digest: str,
    *,
    ns: str | None = None,
    timeout: float = 120,
    ca_file: str | None = None,
    pause_s: float = 0.0,
) -> BlobResult:
    """GET one blob, reading it to the end (or to the error); ``pause_s`` after each 64 KiB
    chunk makes a slow client, whose transfer stays in flight."""
    result = BlobResult(digest, started_at=time.monotonic())
    query = f"?ns={ns}" if ns else ""
    connection = connect(base_url, timeout, ca_file)
    hasher = hashlib.sha256()
    try:
        connection.request("GET", f"/v2/{repository}/blobs/{digest}{query}")
        response = connection.getresponse()
        result.headers_at = time.monotonic()
        result.status = response.status
        length = response.getheader("Content-Length")
        result.expected_size = int(length) if length is not None else None
        while chunk := response.read(64 * 1024):
            if result.first_byte_at is None:
                result.first_byte_at = time.monotonic()
            hasher.update(chunk)
            result.size += len(chunk)
            if pause_s:
                time.sleep(pause_s)
        if result.expected_size is not None and result.size != result.expected_size:
            result.error = f"short body: {result.size} of {result.expected_size} bytes"
    except (OSError, http.client.HTTPException) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        connection.close()
        result.ended_at = time.monotonic()
    result.sha256 = "sha256:" + hasher.hexdigest()
    return result


def manifest(
    base_url: str, repository: str, reference: str, *, ns: str | None = None,
    timeout: float = 60, ca_file: str | None = None,
) -> tuple[int, dict]:  # fmt: skip
    query = f"?ns={ns}" if ns else ""
    status, _headers, body = request(
        base_url, "GET", f"/v2/{repository}/manifests/{reference}{query}",
        headers={"Accept": ACCEPT}, timeout=timeout, ca_file=ca_file,
    )  # fmt: skip
    return status, (json.loads(body) if status == 200 else {})


def pull_image(
    base_url: str,
    repository: str,
    tag: str,
    *,
    ns: str | None = None,
    parallel: int = 3,
    timeout: float = 120,
    ca_file: str | None = None,
) -> PullResult:
    """The manifest by tag, then its config and layers, ``parallel`` at a time (containerd's
    default max_concurrent_downloads is 3)."""
    result = PullResult()
    started = time.monotonic()
    try:
        result.manifest_status, body = manifest(base_url, repository, tag, ns=ns,
                                                timeout=timeout, ca_file=ca_file)  # fmt: skip
        if result.manifest_status != 200:
            result.error = f"manifest: HTTP {result.manifest_status}"
            return result
        digests = [body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            for blob in pool.map(
                lambda d: fetch_blob(
                    base_url, repository, d, ns=ns, timeout=timeout, ca_file=ca_file
                ),
                digests,
            ):
                result.blobs[blob.digest] = blob
    except (OSError, http.client.HTTPException, ValueError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.seconds = time.monotonic() - started
    return result


def pull_concurrently(count: int, pull: Callable[[], PullResult]) -> list[PullResult]:
    """``count`` pulls started together (a barrier: they all miss the cache at once)."""
    go = threading.Barrier(count)

    def one(_: int) -> PullResult:
        go.wait()
        return pull()

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def curl_pull(
    base_url: str, repository: str, tag: str, *, ns: str | None = None, parallel: int = 3
) -> PullResult:
    """The same pull with curl doing the blob transfers (``--parallel``): a client that costs
    the machine almost no CPU, for benchmarks where Python clients would compete with what is
    measured. Digests are not checked here (the tests check them with ``pull_image``)."""
    result = PullResult()
    started = time.monotonic()
    query = f"?ns={ns}" if ns else ""
    try:
        result.manifest_status, body = manifest(base_url, repository, tag, ns=ns)
        digests = [body["config"]["digest"], *(layer["digest"] for layer in body["layers"])]
        write_out = "%{http_code} %{size_download} %{time_starttransfer}\\n"
        argv = ["curl", "--silent", "--parallel", "--parallel-max", str(parallel),
                "--write-out", write_out]  # fmt: skip
        for digest in digests:
            argv += ["--output", "/dev/null", f"{base_url}/v2/{repository}/blobs/{digest}{query}"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        lines = done.stdout.split()
        for index, digest in enumerate(digests):
            status, size, first = lines[3 * index : 3 * index + 3]
            blob = BlobResult(digest, status=int(status), size=int(size), sha256=digest,
                              started_at=started, headers_at=started + float(first))  # fmt: skip
            result.blobs[digest] = blob
        if done.returncode != 0:
            result.error = f"curl exited {done.returncode}: {done.stderr[-300:]}"
    except (OSError, ValueError, subprocess.SubprocessError) as error:
        result.error = f"{type(error).__name__}: {error}"
    finally:
        result.seconds = time.monotonic() - started
    return result


def one_connection_pull(
    base_url: str,
    repository: str,
    tag: str,
    digests: list[str],
    *,
    ns: str | None = None,
    ca_file: str | None = None,
) -> tuple[PullResult, int]:
    """The manifest by tag and ``digests``, one after the other over ONE kept-alive connection
    (curl with every URL in one invocation), as a Go client that keeps its connection pulls a
    warm image: HTTPS pays one handshake per pull, not one per request. Returns the result and
    the number of connections curl opened (1 unless the server closed it)."""
    result = PullResult()
    query = f"?ns={ns}" if ns else ""
    argv = ["curl", "--silent", "--http1.1", "--write-out",
            "%{http_code} %{size_download} %{num_connects}\\n"]  # fmt: skip
    if ca_file is not None:
        argv += ["--cacert", ca_file]
    argv += ["--header", f"Accept: {ACCEPT}", "--output", "/dev/null",
             f"{base_url}/v2/{repository}/manifests/{tag}{query}"]  # fmt: skip
    for digest in digests:
        argv += ["--output", "/dev/null", f"{base_url}/v2/{repository}/blobs/{digest}{query}"]
    started = time.monotonic()
    connections = 0
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        result.seconds = time.monotonic() - started
        fields = done.stdout.split()
        result.manifest_status = int(fields[0])
        connections = sum(int(n) for n in fields[2::3])
        for index, digest in enumerate(digests, start=1):
            status, size = fields[3 * index : 3 * index + 2]
            result.blobs[digest] = BlobResult(digest, status=int(status), size=int(size),
                                              sha256=digest)  # fmt: skip
        if done.returncode != 0:
            result.error = f"curl exited {done.returncode}: {done.stderr[-300:]}"
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as error:
        result.error = f"{type(error).__name__}: {error}"
        result.seconds = time.monotonic() - started
    return result, connections
