"""A small Docker Registry HTTP API v2 client for the benchmarks (stdlib only, loopback only):
push a catalog of many small multi-arch images fast, and pull them the way containerd does.

    client = RegistryClient("127.0.0.1", port)     # one keep-alive connection; one per thread
    client.push_blob("team/app", data)             # cross-repository mount when it can
    client.push_manifest("team/app", "1", body, media_type)
    result = client.pull("team/app", "1", "linux/amd64")   # PullResult: ok, bytes, error

A pull is containerd's request sequence for one platform: HEAD the tag (resolve), GET the index
by digest, GET the platform's manifest by digest, GET the config and every layer, each body
checked against its digest. skopeo would cost a process per pull; a few thousand pulls need this.

``build_catalog`` writes nothing to disk: it returns the images (every blob and manifest in
memory, a few tens of MB) with deterministic content, so two runs push the same digests.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tests.integration import oci_image

ACCEPT = ", ".join(
    (
        oci_image.INDEX,
        oci_image.MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
PLATFORMS = oci_image.DEFAULT_PLATFORMS


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data),
                **extra}  # fmt: skip


@dataclass(frozen=True)
class PlatformImage:
    platform: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]


@dataclass(frozen=True)
class CatalogImage:
    repository: str
    tag: str
    index: Blob
    children: dict[str, PlatformImage]

    def blobs(self) -> Iterator[Blob]:
        for child in self.children.values():
            yield child.config
            yield from child.layers


@dataclass
class Catalog:
    images: list[CatalogImage]

    @property
    def distinct_blobs(self) -> int:
        return len({b.digest for image in self.images for b in image.blobs()})

    @property
    def blob_bytes(self) -> int:
        seen: dict[str, int] = {}
        for image in self.images:
            for blob in image.blobs():
                seen[blob.digest] = len(blob.data)
        return sum(seen.values())


def _json_blob(value: Any, media_type: str) -> Blob:
    return Blob(json.dumps(value, separators=(",", ":"), sort_keys=True).encode(), media_type)


def build_catalog(
    repositories: int,
    tags: int,
    *,
    bases: int = 8,
    base_bytes: int = 256 * 1024,
    repo_layer_bytes: int = 32 * 1024,
    tag_layer_bytes: int = 8 * 1024,
    seed: str = "bench-catalog",
) -> Catalog:
    """``repositories`` x ``tags`` multi-arch images (linux/amd64 + linux/arm64). Each platform's
    image has three layers, as real images share them: a base layer shared by every repository
    on that base (``bases`` of them, per platform), a layer shared by the tags of one repository,
    and one of its own. Layers are random bytes (no real tar: Distribution never looks inside)."""

    def layer(name: str, size: int) -> Blob:
        rng = random.Random(f"{seed}/{name}")  # noqa: S311 (test data)
        return Blob(rng.randbytes(size), oci_image.LAYER)

    base_layers = {
        (platform, b): layer(f"base/{platform}/{b}", base_bytes)
        for platform in PLATFORMS
        for b in range(bases)
    }
    images = []
    for r in range(repositories):
        repository = f"team{r % 17}/app{r}"
        repo_layers = {p: layer(f"repo/{r}/{p}", repo_layer_bytes) for p in PLATFORMS}
        for t in range(tags):
            children = {}
            for platform in PLATFORMS:
                os_name, arch = platform.split("/", 1)
                layers = (
                    base_layers[(platform, r % bases)],
                    repo_layers[platform],
                    layer(f"tag/{r}/{t}/{platform}", tag_layer_bytes),
                )
                config = _json_blob(
                    {"architecture": arch, "os": os_name, "config": {"Labels": {"t": f"{r}/{t}"}},
                     "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]}},
                    oci_image.CONFIG,
                )  # fmt: skip
                manifest = _json_blob(
                    {"schemaVersion": 2, "mediaType": oci_image.MANIFEST,
                     "config": config.descriptor(),
                     "layers": [b.descriptor() for b in layers]},
                    oci_image.MANIFEST,
                )  # fmt: skip
                children[platform] = PlatformImage(platform, manifest, config, layers)
            index = _json_blob(
                {"schemaVersion": 2, "mediaType": oci_image.INDEX,
                 "manifests": [
                     c.manifest.descriptor(platform={"architecture": p.split("/")[1],
                                                     "os": p.split("/")[0]})
                     for p, c in children.items()
                 ]},
                oci_image.INDEX,
            )  # fmt: skip
            images.append(CatalogImage(repository, str(t), index, children))
    return Catalog(images)


class RegistryError(RuntimeError):
    pass


@dataclass
class PullResult:
    ok: bool
    bytes: int = 0
    requests: int = 0
    error: str = ""


class RegistryClient:
    """One keep-alive HTTP/1.1 connection to a registry; reconnects after an error. Not shared
    between threads."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                response = self._conn.getresponse()
                data = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            except (http.client.HTTPException, OSError):
                self.close()
                # A keep-alive connection the server closed while idle: retry once on a new one
                # (as Go's transport does for idempotent requests).
                if attempt == 2 or method not in ("GET", "HEAD"):
                    raise
        raise AssertionError("unreachable")

    # --- push -----------------------------------------------------------------------------------
    def push_blob(self, repository: str, blob: Blob, mount_from: str | None = None) -> None:
        path = f"/v2/{repository}/blobs/uploads/"
        if mount_from is not None:
            path += f"?mount={blob.digest}&from={mount_from}"
        status, headers, _ = self.request("POST", path, b"", {"Content-Length": "0"})
        if status == 201:
            return  # mounted
        if status != 202:
            raise RegistryError(f"POST {path}: HTTP {status}")
        location = headers["location"]
        if location.startswith("http"):
            location = "/" + location.split("/", 3)[3]
        sep = "&" if "?" in location else "?"
        status, _, body = self.request(
            "PUT", f"{location}{sep}digest={blob.digest}", blob.data,
            {"Content-Type": "application/octet-stream", "Content-Length": str(len(blob.data))},
        )  # fmt: skip
        if status != 201:
            raise RegistryError(
                f"PUT blob {blob.digest} to {repository}: HTTP {status} {body[:200]!r}"
            )

    def push_manifest(self, repository: str, reference: str, manifest: Blob) -> None:
        status, _, body = self.request(
            "PUT", f"/v2/{repository}/manifests/{reference}", manifest.data,
            {"Content-Type": manifest.media_type, "Content-Length": str(len(manifest.data))},
        )  # fmt: skip
        if status != 201:
            raise RegistryError(
                f"PUT manifest {repository}:{reference}: HTTP {status} {body[:200]!r}"
            )

    def push_image(self, image: CatalogImage, homes: dict[str, str], pushed: set[str]) -> None:
        """Blobs (mounted from the first repository that got them), children, then the index.
        ``homes``: digest -> first repository holding it; ``pushed``: "repository@digest" done."""
        for blob in image.blobs():
            key = f"{image.repository}@{blob.digest}"
            if key in pushed:
                continue
            self.push_blob(image.repository, blob, mount_from=homes.get(blob.digest))
            homes.setdefault(blob.digest, image.repository)
            pushed.add(key)
        for child in image.children.values():
            self.push_manifest(image.repository, child.manifest.digest, child.manifest)
        self.push_manifest(image.repository, image.tag, image.index)

    # --- pull -----------------------------------------------------------------------------------
    def pull(self, repository: str, tag: str, platform: str) -> PullResult:
        result = PullResult(ok=False)
        try:
            self._pull(repository, tag, platform, result)
            result.ok = True
        except (RegistryError, http.client.HTTPException, OSError, KeyError, ValueError) as error:
            result.error = f"{type(error).__name__}: {error}"
        return result

    def _get(
        self, path: str, result: PullResult, method: str = "GET"
    ) -> tuple[dict[str, str], bytes]:
        status, headers, data = self.request(method, path, headers={"Accept": ACCEPT})
        result.requests += 1
        result.bytes += len(data)
        if status != 200:
            raise RegistryError(f"{method} {path}: HTTP {status}")
        return headers, data

    def _checked(self, path: str, digest: str, result: PullResult) -> bytes:
        _, data = self._get(path, result)
        if digest_of(data) != digest:
            raise RegistryError(f"GET {path}: body is not {digest} ({len(data)} bytes)")
        return data

    def _pull(self, repository: str, tag: str, platform: str, result: PullResult) -> None:
        base = f"/v2/{repository}"
        headers, _ = self._get(f"{base}/manifests/{tag}", result, method="HEAD")
        index_digest = headers["docker-content-digest"]
        index = json.loads(self._checked(f"{base}/manifests/{index_digest}", index_digest, result))
        os_name, arch = platform.split("/", 1)
        (child,) = [
            m["digest"] for m in index["manifests"]
            if m["platform"] == {"architecture": arch, "os": os_name}
        ]  # fmt: skip
        manifest = json.loads(self._checked(f"{base}/manifests/{child}", child, result))
        for descriptor in (manifest["config"], *manifest["layers"]):
            self._checked(f"{base}/blobs/{descriptor['digest']}", descriptor["digest"], result)


@contextlib.contextmanager
def client(host: str, port: int) -> Iterator[RegistryClient]:
    c = RegistryClient(host, port)
    try:
        yield c
    finally:
        c.close()
