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

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from components.renderers.registry_config import DISTRIBUTIONS
from components.settings import registry_image_major
from tests.integration.registry_proc import RegistryBinaryMissing, find_registry_binary

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


@dataclass(frozen=True)
class Major:
    """What the image builder needs per Distribution major, beside the product's own table
    (components/renderers/registry_config.DISTRIBUTIONS: where that major's image reads its
    config) and the tests' binary finder (tests/integration/registry_proc.find_registry_binary)."""

    number: int
    # Libraries a dynamically linked binary needs (Debian's docker-registry links libc).
    libraries: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return str(self.number)

    @property
    def config_path(self) -> str:
        """The image's CMD: where its config lives."""
        return DISTRIBUTIONS[self.number].config_path


MAJORS: dict[str, Major] = {
    "2": Major(2, libraries=("/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2")),
    "3": Major(3),
}
BUSYBOX = "/bin/busybox"  # Debian busybox-static: no libraries needed


def major_of(image: str) -> Major:
    """The major of a configured image reference, as the program reads it from the tag."""
    return MAJORS[str(registry_image_major(image))]


def binary_path(major: Major) -> Path | None:
    """That major's registry command, found as every registry test finds it; None if missing."""
    try:
        return Path(find_registry_binary(major.number))
    except RegistryBinaryMissing:
        return None


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


def build_registry_archive(major: Major, tag: str, workdir: Path) -> Path:
    """Write ``workdir/registry-<major>.tar`` (docker-archive) tagged ``tag``; return its path."""
    binary = binary_path(major)
    if binary is None:
        raise FileNotFoundError(f"no Distribution {major.name}.x binary (see registry_proc)")
    layer_buffer = io.BytesIO()
    with tarfile.open(fileobj=layer_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = {"bin", "etc", "lib", "lib64", "tmp", "var", "var/lib", "var/lib/registry",
                       "lib/x86_64-linux-gnu", str(Path(major.config_path).parent.relative_to("/")),
                       "etc/docker"}  # fmt: skip
        for directory in sorted(directories):
            _add(tar, directory)
        _add(tar, "bin/registry", binary.read_bytes(), 0o755)
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
