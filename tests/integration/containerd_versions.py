"""The containerd versions every real-daemon test runs on, and what differs between them: DATA.

One table, used by every parametrised test (``pytest.mark.parametrize`` over :data:`VERSIONS`, or
the ``containerd`` fixture of tests/integration/conftest.py). A difference between versions is a
column here, never a copy of a test.

Where the binaries come from: 1.6.20 is Debian 12's ``containerd`` package (scripts/test.sh
installs it, on PATH); 1.7.24 (trixie) and 2.1.9 (sid) are unpacked, never installed, by
scripts/testenv/setup-containerd.sh, and 2.2.9 and 2.3.7 (no Debian package) are built from
their Go module by scripts/testenv/setup-containerd-go.sh, all under
``$REGISTRY_MIRRORS_TOOLCHAIN_CACHE/containerd/<version>/usr/bin`` (default
``~/.cache/registry-mirrors``: outside the clone, so every clone on the machine shares them). A
missing one skips with how to get it, and FAILS under CI=true (tests/prereq.py).

Every row was measured on this machine with that exact binary (FIELD-NOTES, "Added turn 2"; 2.2.9
and 2.3.7 behave as 2.1.9 in every column).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from tests.prereq import missing

ROOT = Path(__file__).resolve().parents[2]

# What each version logs (and ctr shows as the plugin's error) for `mirrors` next to `config_path`.
CONFLICT_1X = "invalid plugin config: `mirrors` cannot be set when `config_path` is provided"
CONFLICT_2X = "invalid cri image config: `mirrors` cannot be set when `config_path` is provided"


@dataclass(frozen=True)
class ImportRules:
    """How a version reads the files its config's ``imports`` names: measured by
    tests/integration/test_containerd_imports.py, explained with the sources in
    docs/containerd-imports.md. The same on every version: the main file first, then each
    imported file breadth first (a drop-in's own ``imports`` after every file already queued),
    glob matches in lexical order, a file imported twice read once; a later file's scalar wins;
    ``disabled_plugins``/``required_plugins``/``imports`` are appended; a missing file (not a
    pattern) stops the daemon."""

    plugin_tables: Literal["replaced", "merged"]
    """A drop-in's ``[plugins."<id>"]`` table replaces the whole table the files before it built
    (1.x: every other key of that plugin is lost), or is merged into it key by key, nested tables
    merged, a later scalar or array winning (2.x)."""
    relative_glob_base: Literal["cwd", "file"]
    """A relative pattern with ``*`` is matched in the daemon's working directory (1.6) or next
    to the importing file (1.7+); a relative path without ``*`` is next to the file everywhere."""
    older_dropins: Literal["refused", "renamed", "migrated"]
    """A drop-in whose config version is older than the files before it. ``refused`` (1.x):
    nothing is migrated; version 1 plugin names in a version 2 config stop the daemon.
    ``renamed`` (2.0-2.2): only a version 1 file's plugin names are renamed; the merged config
    takes the LAST file's version and the plugins' own migrations run once, on the merged result.
    ``migrated`` (2.3): every file is migrated on its own to the current version, plugin
    migrations included, before it is merged."""
    dump_ignores_missing_import: bool
    """``containerd config dump`` exits 0 with a partial merge when an imported file is missing
    (2.x): only the daemon's start shows the error."""
    dump_lists_conf_d: bool
    """``config dump`` shows ``imports = ['/etc/containerd/conf.d/*.toml']`` (the default config's
    new entry) although the daemon reads only what the file itself imports (2.2+)."""


IMPORTS_1_6 = ImportRules("replaced", "cwd", "refused", False, False)
IMPORTS_1_7 = ImportRules("replaced", "file", "refused", False, False)
IMPORTS_2_1 = ImportRules("merged", "file", "renamed", True, False)
IMPORTS_2_2 = ImportRules("merged", "file", "renamed", True, True)
IMPORTS_2_3 = ImportRules("merged", "file", "migrated", True, True)


@dataclass(frozen=True)
class ContainerdVersion:
    """One containerd release under test and the behaviour the tests expect of it."""

    version: str
    """What ``containerd --version`` reports (its third field starts with this)."""
    setup: str
    """Where the binaries come from: ``""`` for the system package on PATH (Debian 12), else the
    scripts/testenv script that puts them in the toolchain cache."""
    config_versions: tuple[int, ...]
    """config.toml versions a node of this version can start from (2.x loads a version 1 file,
    but without its CRI settings: see :meth:`written_config_version`)."""
    conflict_error: str
    """Its error text for `mirrors` + `config_path` (the CRI plugin is then `error`)."""
    conflict_plugin: str
    """The plugin (``<type>.<id>``) whose init fails with ``conflict_error``."""
    refuses_tls_with_config_path: bool
    """1.x refuses ``registry.configs.<host>.tls`` next to ``config_path``; 2.1 accepts it."""
    has_deprecations: bool
    """``ctr deprecations list`` exists (1.7+): names cri-registry-mirrors while a mirror is set."""
    dump_quote: str
    """The quote ``containerd config dump`` puts around strings (2.x: single quotes)."""
    tls_on_http_tries_https: bool
    """A TLS setting on an ``http://`` host makes it try HTTPS first (1.7+)."""
    cri_status_has_registry: bool
    """CRI ``Status(verbose)`` reports the registry config (1.x); 2.x reports only the runtime's."""
    cri_pull_splits_config_path: bool
    """A CRI pull reads a colon-separated ``config_path`` as a list of directories (1.x). 2.x
    pulls through the transfer service, which takes the whole value as ONE directory
    (core/transfer/registry/registry.go ``HostDirFromRoot``): hosts.toml is never found. 2.2+
    default to such a list when the file sets no registry option."""
    imports: ImportRules
    """How it resolves and merges ``imports`` drop-ins."""

    @property
    def series(self) -> str:
        """``1.6``, ``1.7``, ``2.1``: the test id."""
        return ".".join(self.version.split(".")[:2])

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def effective_sandbox_image(self) -> tuple[str, ...]:
        """Where ``containerd config dump`` shows the pinned pause image (2.x: version 3)."""
        if self.major >= 2:
            return ("plugins", "io.containerd.cri.v1.images", "pinned_images", "sandbox")
        return ("plugins", "io.containerd.grpc.v1.cri", "sandbox_image")

    @property
    def effective_registry(self) -> tuple[str, ...]:
        """Where ``containerd config dump`` shows the registry settings it uses: 2.x dumps
        version 3 (the images plugin) whatever version the file is."""
        if self.major >= 2:
            return ("plugins", "io.containerd.cri.v1.images", "registry")
        return ("plugins", "io.containerd.grpc.v1.cri", "registry")

    def written_config_version(self, start: int) -> int:
        """The config.toml version the program writes for a node of this version whose file is
        version ``start``: the same, except version 1 on 2.x becomes 2 (2.x ignores a v1 file's
        CRI settings; components/renderers/containerd_config/v1_to_v2.py)."""
        return 2 if start == 1 and self.major >= 2 else start

    def bin_dir(self) -> Path | None:
        """The directory holding this version's ``containerd`` and ``ctr``, or None if absent."""
        return _bin_dir(self)

    def require(self) -> Path:
        """:meth:`bin_dir`, or skip (fail under CI=true) with how to get it."""
        found = self.bin_dir()
        if found is None:
            how = (
                f"bash scripts/testenv/{self.setup} (scripts/test.sh runs it)"
                if self.setup
                else "apt-get install containerd (scripts/test.sh does)"
            )
            missing(f"containerd {self.version} not found: {how}")
        assert found is not None
        return found

    def binary(self, name: str) -> str:
        """Absolute path of ``containerd``/``ctr`` of this version (after :meth:`require`)."""
        return str(self.require() / name)


def toolchain_cache() -> Path:
    """scripts/testenv/lib.sh's TOOLCHAIN_CACHE: the same variable, the same default."""
    configured = os.environ.get("REGISTRY_MIRRORS_TOOLCHAIN_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "registry-mirrors"


@cache
def _bin_dir(version: ContainerdVersion) -> Path | None:
    if not version.setup:
        found = shutil.which("containerd")
        candidate = Path(found).parent if found else None
    else:
        candidate = toolchain_cache() / "containerd" / version.version / "usr" / "bin"
    if candidate is None or not (candidate / "containerd").is_file():
        return None
    if not (candidate / "ctr").is_file():
        return None
    reported = subprocess.run(
        [str(candidate / "containerd"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.split()
    # "containerd github.com/containerd/containerd 1.6.20~ds1 ..." (v2: ".../v2 2.1.9+unknown";
    # built from the module: ".../v2 v2.2.9").
    if len(reported) < 3 or not reported[2].lstrip("v").startswith(f"{version.version}"):
        return None
    return candidate


V1_6 = ContainerdVersion(
    version="1.6.20",
    setup="",
    config_versions=(1, 2),
    conflict_error=CONFLICT_1X,
    conflict_plugin="io.containerd.grpc.v1.cri",
    refuses_tls_with_config_path=True,
    has_deprecations=False,
    dump_quote='"',
    tls_on_http_tries_https=False,
    cri_status_has_registry=True,
    cri_pull_splits_config_path=True,
    imports=IMPORTS_1_6,
)
V1_7 = ContainerdVersion(
    version="1.7.24",
    setup="setup-containerd.sh",
    config_versions=(1, 2),
    conflict_error=CONFLICT_1X,
    conflict_plugin="io.containerd.grpc.v1.cri",
    refuses_tls_with_config_path=True,
    has_deprecations=True,
    dump_quote='"',
    tls_on_http_tries_https=True,
    cri_status_has_registry=True,
    cri_pull_splits_config_path=True,
    imports=IMPORTS_1_7,
)
V2_1 = ContainerdVersion(
    version="2.1.9",
    setup="setup-containerd.sh",
    config_versions=(1, 2, 3),
    conflict_error=CONFLICT_2X,
    conflict_plugin="io.containerd.cri.v1.images",
    refuses_tls_with_config_path=False,
    has_deprecations=True,
    dump_quote="'",
    tls_on_http_tries_https=True,
    cri_status_has_registry=False,
    cri_pull_splits_config_path=False,
    imports=IMPORTS_2_1,
)

V2_2 = ContainerdVersion(
    version="2.2.9",
    setup="setup-containerd-go.sh",
    config_versions=(1, 2, 3),
    conflict_error=CONFLICT_2X,
    conflict_plugin="io.containerd.cri.v1.images",
    refuses_tls_with_config_path=False,
    has_deprecations=True,
    dump_quote="'",
    tls_on_http_tries_https=True,
    cri_status_has_registry=False,
    cri_pull_splits_config_path=False,
    imports=IMPORTS_2_2,
)
V2_3 = ContainerdVersion(
    version="2.3.7",
    setup="setup-containerd-go.sh",
    config_versions=(1, 2, 3),
    conflict_error=CONFLICT_2X,
    conflict_plugin="io.containerd.cri.v1.images",
    refuses_tls_with_config_path=False,
    has_deprecations=True,
    dump_quote="'",
    tls_on_http_tries_https=True,
    cri_status_has_registry=False,
    cri_pull_splits_config_path=False,
    imports=IMPORTS_2_3,
)

VERSIONS: tuple[ContainerdVersion, ...] = (V1_6, V1_7, V2_1, V2_2, V2_3)
