"""A multi-layer, single-platform OCI image (~30 MB of incompressible layers), built offline with
the pieces of tests/integration/oci_image.py (its layer tar, JSON and media types)."""

from __future__ import annotations

import gzip
import hashlib
import json
import platform
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.integration import oci_image


@dataclass(frozen=True)
class Image:
    layout: Path
    tag: str
    total_bytes: int
    layers: int

    @property
    def oci_ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"


def build(directory: Path, tag: str, layers: int = 6, layer_bytes: int = 5 * 1024 * 1024) -> Image:
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    total = 0

    def put(data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        nonlocal total
        total += len(data)
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data), **extra}

    layer_descs, diff_ids = [], []
    for i in range(layers):
        seeded = random.Random(f"bench/{tag}/{i}")  # noqa: S311 (test data, not crypto)
        tar = oci_image._layer_tar(seeded.randbytes(layer_bytes))
        diff_ids.append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
        layer_descs.append(put(gzip.compress(tar, compresslevel=1, mtime=0), oci_image.LAYER))
    config = put(
        oci_image._json({"architecture": arch, "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}),
        oci_image.CONFIG,
    )  # fmt: skip
    manifest = put(
        oci_image._json({"schemaVersion": 2, "mediaType": oci_image.MANIFEST, "config": config,
                         "layers": layer_descs}),
        oci_image.MANIFEST,
        annotations={"org.opencontainers.image.ref.name": tag},
    )  # fmt: skip
    (directory / "index.json").write_text(
        json.dumps({"schemaVersion": 2, "mediaType": oci_image.INDEX, "manifests": [manifest]})
    )
    return Image(directory, tag, total, layers)
