"""The registry image, built locally: the guest cannot pull ``registry:2`` / ``registry:3``.

A ``docker save`` archive (``docker load`` in the guest, tagged as the configured image) laid out
like the official images (distribution/distribution-library-image): the ``registry`` binary at
``/bin/registry``, ``/entrypoint.sh`` (a config path serves it; ``garbage-collect`` etc. run the
binary), the default config path of that major as CMD, ``/var/lib/registry`` as a volume, and
busybox's ``sh`` and ``wget`` (the container's health check runs ``wget``). One table of
differences per major, one builder.

    archive = build_registry_archive(MAJORS["2"], "registry:2.8.3", tmp_path)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

ENTRYPOINT = """#!/bin/sh
set -e
case "$1" in
    *.yaml|*.yml) set -- registry serve "$@" ;;
    serve|garbage-collect|help|-*) set -- registry "$@" ;;
esac
exec "$@"
"""

# The default config the official images carry (a plain registry on :5000).
DEFAULT_CONFIG = """version: 0.1
log:
  fields:
    service: registry
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: /var/lib/registry
http:
  addr: :5000
  headers:
    X-Content-Type-Options: [nosniff]
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
"""


def _shared_bin(name: str) -> Path:
    """``shared/bin/<name>`` beside the project (a git worktree sits one level deeper, so each
    parent directory is looked at); the project itself never needs it."""
    for parent in Path(__file__).resolve().parents[2:]:
        candidate = parent / "shared" / "bin" / name
        if candidate.is_file():
            return candidate
    return Path("/nonexistent/shared/bin") / name


@dataclass(frozen=True)
class Major:
    """What differs between Distribution majors, for the image and for finding the binary."""

    name: str
    config_path: str  # the image's CMD: where its config lives
    binary_env: str  # environment variable naming a binary (else the default below)
    default_binary: str
    # Libraries a dynamically linked binary needs (Debian's docker-registry links libc).
    libraries: tuple[str, ...] = ()


MAJORS: dict[str, Major] = {
    "2": Major(
        name="2",
        config_path="/etc/docker/registry/config.yml",
        binary_env="REGISTRY_V2_BINARY",
        default_binary="/usr/bin/docker-registry",
        libraries=("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"),
    ),
    "3": Major(
        name="3",
        config_path="/etc/distribution/config.yml",
        binary_env="REGISTRY_V3_BINARY",
        default_binary=str(_shared_bin("registry-3.1.1.gz")),
    ),
}
BUSYBOX = "/bin/busybox"  # Debian busybox-static: no libraries needed


def major_of(image: str) -> Major:
    """The major of a configured image reference by its tag (``registry:2.8.3`` -> 2)."""
    match = re.search(r":v?(\d+)[.\w-]*(@sha256:[0-9a-f]{64})?$", image)
    if match is None or match.group(1) not in MAJORS:
        raise ValueError(
            f"registry.image {image!r}: the VM tier builds Distribution {sorted(MAJORS)} locally "
            "and needs a tag naming the major (e.g. registry:2.8.3)"
        )
    return MAJORS[match.group(1)]


def binary_path(major: Major) -> Path | None:
    path = Path(os.environ.get(major.binary_env, major.default_binary))
    return path if path.is_file() else None


def _add(tar: tarfile.TarFile, name: str, data: bytes | None = None, mode: int = 0o644,
         link: str | None = None) -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.mtime = 0
    if link is not None:
        info.type = tarfile.SYMTYPE
        info.linkname = link
        tar.addfile(info)
    elif data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    else:
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))


def _binary_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def build_registry_archive(major: Major, tag: str, workdir: Path) -> Path:
    """Write ``workdir/registry-<major>.tar`` (docker-archive) tagged ``tag``; return its path."""
    binary = binary_path(major)
    if binary is None:
        raise FileNotFoundError(f"no registry {major.name}.x binary at {major.default_binary}")
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = {"bin", "etc", "lib", "lib64", "tmp", "var", "var/lib", "var/lib/registry",
                       "lib/x86_64-linux-gnu", str(Path(major.config_path).parent.relative_to("/")),
                       "etc/docker"}  # fmt: skip
        for directory in sorted(directories):
            _add(tar, directory)
        _add(tar, "bin/registry", _binary_bytes(binary), 0o755)
        _add(tar, "bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for applet in ("sh", "wget"):
            _add(tar, f"bin/{applet}", link="busybox")
        for library in major.libraries:
            _add(tar, library.lstrip("/"), Path(library).resolve().read_bytes(), 0o755)
        _add(tar, "entrypoint.sh", ENTRYPOINT.encode(), 0o755)
        _add(tar, major.config_path.lstrip("/"), DEFAULT_CONFIG.encode())
    layer = layer_buffer.getvalue()
    diff_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": ["/entrypoint.sh"],
            "Cmd": [major.config_path],
            "ExposedPorts": {"5000/tcp": {}},
            "Volumes": {"/var/lib/registry": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config_bytes).hexdigest()}.json"
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [f"{diff_id}/layer.tar"]}]
    workdir.mkdir(parents=True, exist_ok=True)
    archive = workdir / f"registry-{major.name}.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, diff_id)
        _add(tar, f"{diff_id}/layer.tar", layer)
        _add(tar, config_name, config_bytes)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return archive
