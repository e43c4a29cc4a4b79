"""Build a small multi-arch OCI image offline (stdlib only), for pull-through tests.

    image = build_multiarch_image(tmp_path / "layout", "1", size_bytes=256 * 1024)
    skopeo copy --all oci:{image.layout}:{image.tag} docker://127.0.0.1:PORT/library/x:1
    image.index_digest       # the tagged image index (what a tag resolves to)
    image.manifest_digests   # {"linux/amd64": "sha256:..."}: children, pulled by digest
    image.blob_digests       # every config and layer blob

Layers hold random (incompressible) bytes so "blobs are cached" is visible on disk. Content is
seeded by tag and platform: the same call builds the same digests.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DEFAULT_PLATFORMS = ("linux/amd64", "linux/arm64")


@dataclass(frozen=True)
class MultiArchImage:
    layout: Path
    tag: str
    index_digest: str
    manifest_digests: dict[str, str]
    blob_digests: tuple[str, ...]

    @property
    def oci_ref(self) -> str:
        """skopeo source reference: ``oci:LAYOUT:TAG``."""
        return f"oci:{self.layout}:{self.tag}"


def build_multiarch_image(
    directory: Path,
    tag: str,
    size_bytes: int = 128 * 1024,
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
) -> MultiArchImage:
    """Write an OCI layout at ``directory`` whose ``tag`` is an image index over ``platforms``."""
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))

    def put(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    manifests = []
    manifest_digests: dict[str, str] = {}
    blob_digests: list[str] = []
    for platform in platforms:
        os_name, arch = platform.split("/", 1)
        tar = _layer_tar(random.Random(f"{tag}/{platform}").randbytes(size_bytes))
        layer = put(gzip.compress(tar, mtime=0), LAYER)
        config = put(
            _json(
                {
                    "architecture": arch,
                    "os": os_name,
                    "config": {},
                    "rootfs": {
                        "type": "layers",
                        "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"],
                    },
                }
            ),
            CONFIG,
        )
        manifest = put(
            _json({"schemaVersion": 2, "mediaType": MANIFEST, "config": config, "layers": [layer]}),
            MANIFEST,
            platform={"architecture": arch, "os": os_name},
        )
        manifests.append(manifest)
        manifest_digests[platform] = manifest["digest"]
        blob_digests += [config["digest"], layer["digest"]]

    index = put(
        _json({"schemaVersion": 2, "mediaType": INDEX, "manifests": manifests}),
        INDEX,
        annotations={"org.opencontainers.image.ref.name": tag},
    )
    (directory / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": INDEX, "manifests": [index]})
    )
    return MultiArchImage(directory, tag, index["digest"], manifest_digests, tuple(blob_digests))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _layer_tar(content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("data.bin")
        info.size = len(content)
        info.mtime = 0
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()
