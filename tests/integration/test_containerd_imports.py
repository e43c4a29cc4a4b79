"""What each real containerd does with ``imports`` drop-ins (docs/containerd-imports.md).

These tests document containerd's behaviour, not the product's (the product follows it:
tests/integration/test_node_dropins.py). Each one starts the version's own
daemon (or runs its ``config dump``, which goes through the same loader) on a main config that
imports a drop-in, and asserts what that version does, as a column of the table in
tests/integration/containerd_versions.py (``ImportRules``): one test per fact, every version.

The facts that matter most for a migration to ``config_path``:
- 1.x: a drop-in's ``[plugins."io.containerd.grpc.v1.cri"]`` replaces the main file's whole CRI
  table: a drop-in mirror wins silently over ``config_path`` (and the main file's pause image,
  runtimes, ... are gone). 2.x merges the tables: the same drop-in makes the CRI plugin fail.
- A drop-in's ``config_path`` wins over the main file's on every version.
- A drop-in of another config version: 1.x stops on version 1 names; 2.0-2.2 let the last
  file's version decide how the WHOLE merged config is read (a v2 drop-in mirror replaces a v3
  main file's registry table; a v3 drop-in drops a v2 main file's CRI settings; a v1 drop-in's
  CRI settings are ignored next to a v3 main file); 2.3 migrates each file before merging.

Drop-ins that touch the CRI plugin also name the test's CNI dir (the test's isolation, not part
of the fact): on 1.x they replace the table where the test's overrides put it.
"""

from __future__ import annotations

import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.containerd_proc import CRI_PLUGIN, start_containerd
from tests.integration.containerd_versions import VERSIONS, ContainerdVersion
from tests.prereq import missing, require_binary, require_root

pytestmark = pytest.mark.integration

CERTS_D = "/etc/containerd/certs.d"
OTHER_CERTS_D = "/etc/other/certs.d"
MIRROR = "http://127.0.0.1:5000"
MAIN_PAUSE = "registry.example/pause:main"
DROPIN_PAUSE = "registry.example/pause:dropin"
MIRRORS_DEPRECATION = "io.containerd.deprecation/cri-registry-mirrors"
GC = 'plugins."io.containerd.gc.v1.scheduler"'
GC_PATH = ("plugins", "io.containerd.gc.v1.scheduler")

# A main config.toml as the migration leaves it, one per version: config_path, a pinned pause
# image that is none of our business.
MAIN = {
    2: f"""version = 2
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{MAIN_PAUSE}"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{CERTS_D}"
""",
    3: f"""version = 3
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "{MAIN_PAUSE}"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "{CERTS_D}"
""",
}
# What the drop-ins set, in the plugin names of each config version (1: no version key).
WILDCARD_MIRROR = {
    1: f'[plugins.cri.registry.mirrors."*"]\n  endpoint = ["{MIRROR}"]\n',
    2: f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]\n'
    f'  endpoint = ["{MIRROR}"]\n',
}
OWN_CONFIG_PATH = (
    f'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
    f'  config_path = "{OTHER_CERTS_D}"\n'
)
V3_PAUSE = (
    f'version = 3\n[plugins."io.containerd.cri.v1.images".pinned_images]\n'
    f'  sandbox = "{DROPIN_PAUSE}"\n'
)
_CNI_TABLE = {
    1: "plugins.cri.cni",
    2: 'plugins."io.containerd.grpc.v1.cri".cni',
    3: 'plugins."io.containerd.cri.v1.runtime".cni',
}

LOADS_V3 = [v for v in VERSIONS if 3 in v.config_versions]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (no routes): nothing a daemon does can leave it."""
    require_root()
    require_binary("ip")
    require_binary("unshare")
    name = f"ctdimp-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)


def dig(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


@dataclass(frozen=True)
class Merged:
    """What a running daemon made of a main file plus its drop-ins."""

    cri: str
    config_path: Any
    mirrors: list[str]
    sandbox: Any
    mirrors_deprecated: bool | None
    log: str


def with_cni(dropin: str, version: int, tmp_path: Path) -> str:
    """``dropin`` plus the test's CNI dir in that config version's layout."""
    cni = tmp_path / "cni" / "net.d"
    cni.mkdir(parents=True, exist_ok=True)
    return f'{dropin}\n[{_CNI_TABLE[version]}]\n  conf_dir = "{cni}"\n'


def write_dropins(tmp_path: Path, dropins: dict[str, str]) -> str:
    """The drop-ins under ``tmp_path/conf.d``; the ``imports`` line naming them by pattern."""
    for name, text in dropins.items():
        path = tmp_path / "conf.d" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return f'imports = ["{tmp_path / "conf.d" / "*.toml"}"]\n'


def with_imports(main: str, imports_line: str) -> str:
    """``imports`` is a top-level key: it goes before the first table."""
    version_line, rest = main.split("\n", 1)
    return f"{version_line}\n{imports_line}{rest}"


def dump(
    containerd: ContainerdVersion, config: Path, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [containerd.binary("containerd"), "-c", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=cwd,
    )


def load(
    containerd: ContainerdVersion,
    tmp_path: Path,
    netns: str,
    main: str,
    dropins: dict[str, str],
) -> Merged:
    """Start the daemon on ``main`` importing ``dropins``; read back what it made of them."""
    text = with_imports(main, write_dropins(tmp_path, dropins))
    daemon = start_containerd(tmp_path / "daemon", text, netns=netns, containerd=containerd)
    try:
        status = daemon.plugins_status().get(CRI_PLUGIN, "absent")
        deprecated = (
            MIRRORS_DEPRECATION in daemon.deprecations() if containerd.has_deprecations else None
        )
        dumped = dump(containerd, daemon.config_file)
        assert dumped.returncode == 0, dumped.stderr
        merged = tomllib.loads(dumped.stdout)
        registry = dig(merged, containerd.effective_registry) or {}
        return Merged(
            cri=status,
            config_path=registry.get("config_path"),
            mirrors=sorted(registry.get("mirrors") or {}),
            sandbox=dig(merged, containerd.effective_sandbox_image),
            mirrors_deprecated=deprecated,
            log=daemon.log,
        )
    finally:
        daemon.stop()


def assert_conflict(merged: Merged, containerd: ContainerdVersion) -> None:
    """``mirrors`` next to ``config_path`` after the merge: the CRI plugin fails."""
    assert merged.cri == "error", merged.log
    assert containerd.conflict_error in merged.log


def assert_mirror_wins(merged: Merged, containerd: ContainerdVersion) -> None:
    """The drop-in's mirror is what the daemon uses; the main file's config_path is gone."""
    assert merged.cri == "ok", merged.log
    assert merged.mirrors == ["*"]
    assert not merged.config_path
    if containerd.has_deprecations:
        assert merged.mirrors_deprecated


# --- what a drop-in does to the main file's registry settings -------------------------------------


def test_a_dropin_mirror_next_to_the_main_files_config_path(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    """The node that issue 22 is about: config.toml migrated, the mirror left in a drop-in."""
    dropin = with_cni(WILDCARD_MIRROR[2], 2, tmp_path)
    merged = load(containerd, tmp_path, netns, MAIN[2], {"50-mirror.toml": dropin})
    if containerd.imports.plugin_tables == "replaced":
        # The drop-in's CRI table replaced the main file's: the mirror silently wins, and every
        # other CRI setting of config.toml is gone with config_path.
        assert_mirror_wins(merged, containerd)
        assert merged.sandbox != MAIN_PAUSE
    else:
        assert_conflict(merged, containerd)
        assert merged.sandbox == MAIN_PAUSE


def test_a_dropins_config_path_wins_over_the_main_files(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    dropin = with_cni(OWN_CONFIG_PATH, 2, tmp_path)
    merged = load(containerd, tmp_path, netns, MAIN[2], {"50-hosts.toml": dropin})
    assert merged.cri == "ok", merged.log
    assert merged.config_path == OTHER_CERTS_D
    assert (merged.sandbox == MAIN_PAUSE) == (containerd.imports.plugin_tables == "merged")


def test_a_dropin_without_a_version_key_in_a_version_2_config(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    """No ``version`` key: a version 1 file (``plugins.cri``)."""
    dropin = with_cni(WILDCARD_MIRROR[1], 1, tmp_path)
    if containerd.imports.older_dropins == "refused":
        # 1.x keeps the version of the files before (mergo skips a zero) and checks the names.
        with pytest.raises(RuntimeError, match='invalid plugin key URI "cri"'):
            load(containerd, tmp_path, netns, MAIN[2], {"50-v1.toml": dropin})
        return
    # 2.x renames its plugins to the version so far, then merges it as any drop-in.
    assert_conflict(load(containerd, tmp_path, netns, MAIN[2], {"50-v1.toml": dropin}), containerd)


@pytest.mark.parametrize("containerd", LOADS_V3, ids=lambda version: version.series)
def test_a_version_2_dropin_mirror_in_a_version_3_config(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    containerd.require()
    dropin = with_cni(WILDCARD_MIRROR[2], 2, tmp_path)
    merged = load(containerd, tmp_path, netns, MAIN[3], {"50-mirror.toml": dropin})
    if containerd.imports.older_dropins == "migrated":
        assert_conflict(merged, containerd)
    else:
        # The merged config became version 2 (the last file's); the images plugin's v2 -> v3
        # migration then copies the v2 `registry` table over the v3 one: config_path is gone.
        assert_mirror_wins(merged, containerd)
    assert merged.sandbox == MAIN_PAUSE


@pytest.mark.parametrize("containerd", LOADS_V3, ids=lambda version: version.series)
def test_a_version_3_dropin_in_a_version_2_config(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    """A drop-in written for 2.x (say, a pause image) next to a version 2 config.toml."""
    containerd.require()
    dropin = with_cni(V3_PAUSE, 3, tmp_path)
    merged = load(containerd, tmp_path, netns, MAIN[2], {"50-pause.toml": dropin})
    assert merged.cri == "ok", merged.log
    assert merged.sandbox == DROPIN_PAUSE
    if containerd.imports.older_dropins == "migrated":
        assert merged.config_path == CERTS_D
    else:
        # The merged config is version 3, so the main file's version 2 CRI settings are never
        # migrated: config_path is silently dropped (and pulls bypass the cache).
        assert not merged.config_path


@pytest.mark.parametrize("containerd", LOADS_V3, ids=lambda version: version.series)
def test_a_dropin_without_a_version_key_in_a_version_3_config(
    containerd: ContainerdVersion, tmp_path: Path, netns: str
) -> None:
    containerd.require()
    dropin = with_cni(WILDCARD_MIRROR[1], 1, tmp_path)
    merged = load(containerd, tmp_path, netns, MAIN[3], {"50-v1.toml": dropin})
    if containerd.imports.older_dropins == "migrated":
        assert_conflict(merged, containerd)
    else:
        # Renamed to io.containerd.grpc.v1.cri but never migrated to the v3 plugins: ignored.
        assert merged.cri == "ok", merged.log
        assert merged.config_path == CERTS_D and merged.mirrors == []
        assert "Ignoring unknown key in TOML for plugin" in merged.log


# --- how imports are found and in which order they merge (config dump: the daemon's loader) ------


def _threshold(containerd: ContainerdVersion, config: Path, cwd: Path | None = None) -> Any:
    done = dump(containerd, config, cwd)
    assert done.returncode == 0, done.stderr
    return dig(tomllib.loads(done.stdout), GC_PATH)


def test_relative_imports(containerd: ContainerdVersion, tmp_path: Path) -> None:
    """A relative path is next to the importing file; a relative PATTERN is too, except on 1.6
    (matched in the daemon's working directory: a systemd unit's is /)."""
    etc, cwd = tmp_path / "etc", tmp_path / "cwd"
    for base, value in ((etc, 0.11), (cwd, 0.99)):
        (base / "conf.d").mkdir(parents=True)
        (base / "conf.d" / "10.toml").write_text(
            f"version = 2\n[{GC}]\n  pause_threshold = {value}\n"
        )
    (etc / "config.toml").write_text('version = 2\nimports = ["conf.d/*.toml"]\n')
    from_file = containerd.imports.relative_glob_base == "file"
    gc = _threshold(containerd, etc / "config.toml", cwd=cwd)
    assert gc["pause_threshold"] == (0.11 if from_file else 0.99)

    (etc / "extra.toml").write_text(f"version = 2\n[{GC}]\n  pause_threshold = 0.12\n")
    (etc / "plain.toml").write_text('version = 2\nimports = ["extra.toml"]\n')
    assert _threshold(containerd, etc / "plain.toml", cwd=cwd)["pause_threshold"] == 0.12


def test_imports_merge_breadth_first_in_lexical_order(
    containerd: ContainerdVersion, tmp_path: Path
) -> None:
    """main, then 10-a and 20-b (the pattern's matches, sorted), then what 10-a imports: the
    nested file comes last and wins. A file already read is skipped (it would bring 20-b's
    value back). Lists append."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (tmp_path / "config.toml").write_text(
        f'version = 2\nimports = ["{conf_d}/*.toml"]\n'
        'disabled_plugins = ["io.containerd.snapshotter.v1.btrfs"]\n'
        f"[{GC}]\n  pause_threshold = 0.01\n  deletion_threshold = 7\n"
    )
    (conf_d / "20-b.toml").write_text(f"version = 2\n[{GC}]\n  pause_threshold = 0.22\n")
    (conf_d / "10-a.toml").write_text(
        f'version = 2\nimports = ["{tmp_path}/nested.toml"]\n'
        'disabled_plugins = ["io.containerd.snapshotter.v1.zfs"]\n'
        f"[{GC}]\n  pause_threshold = 0.21\n"
    )
    (tmp_path / "nested.toml").write_text(
        f'version = 2\nimports = ["{conf_d}/20-b.toml"]\n[{GC}]\n  pause_threshold = 0.23\n'
    )
    done = dump(containerd, tmp_path / "config.toml")
    assert done.returncode == 0, done.stderr
    merged = tomllib.loads(done.stdout)
    gc = dig(merged, GC_PATH)
    assert gc["pause_threshold"] == 0.23
    # 1.x: the last file's table replaced the main file's whole gc table.
    assert gc["deletion_threshold"] == (7 if containerd.imports.plugin_tables == "merged" else 0)
    assert merged["disabled_plugins"] == [
        "io.containerd.snapshotter.v1.btrfs",
        "io.containerd.snapshotter.v1.zfs",
    ]


def test_a_dropin_mirror_table_replaces_or_merges(
    containerd: ContainerdVersion, tmp_path: Path
) -> None:
    """Mirrors for two registries in the main file, one of them again in a drop-in: 1.x keeps
    only the drop-in's CRI table; 2.x merges per registry, the drop-in's endpoint list replacing
    (not extending) the main file's."""
    table = 'plugins."io.containerd.grpc.v1.cri".registry.mirrors'
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "50.toml").write_text(
        f'version = 2\n[{table}."docker.io"]\n  endpoint = ["http://b.example:1"]\n'
    )
    (tmp_path / "config.toml").write_text(
        f'version = 2\nimports = ["{conf_d}/*.toml"]\n'
        f'[{table}."docker.io"]\n  endpoint = ["http://a.example:1"]\n'
        f'[{table}."quay.io"]\n  endpoint = ["http://q.example:1"]\n'
    )
    done = dump(containerd, tmp_path / "config.toml")
    assert done.returncode == 0, done.stderr
    mirrors = dig(tomllib.loads(done.stdout), (*containerd.effective_registry, "mirrors"))
    expected = {"docker.io": {"endpoint": ["http://b.example:1"]}}
    if containerd.imports.plugin_tables == "merged":
        expected["quay.io"] = {"endpoint": ["http://q.example:1"]}
    assert mirrors == expected


def test_a_missing_import_stops_the_daemon_and_not_every_config_dump(
    containerd: ContainerdVersion, tmp_path: Path
) -> None:
    require_root()
    missing = tmp_path / "missing.toml"
    text = f'version = 2\nimports = ["{missing}", "{tmp_path}/none/*.toml"]\n'
    with pytest.raises(RuntimeError, match=f"{missing}: no such file or directory"):
        start_containerd(tmp_path / "daemon", text, containerd=containerd).stop()
    (tmp_path / "config.toml").write_text(text)
    done = dump(containerd, tmp_path / "config.toml")
    # 2.x `config dump` ignores a "not exist" error from the loader and prints what it merged.
    assert (done.returncode == 0) == containerd.imports.dump_ignores_missing_import, done.stderr


def test_the_default_conf_d_import_is_read_only_when_the_file_names_it(
    containerd: ContainerdVersion, tmp_path: Path
) -> None:
    """2.2+ list /etc/containerd/conf.d/*.toml in their default config (and in every
    ``config dump``), but only a file that itself says so imports it. The host's /etc/containerd
    is never touched: a private mount namespace binds a test dir over it."""
    require_root()
    require_binary("unshare")
    if not Path("/etc/containerd").is_dir():
        missing("no /etc/containerd to bind a test dir over (apt-get install containerd)")
    etc = tmp_path / "etc-containerd"
    (etc / "conf.d").mkdir(parents=True)
    (etc / "conf.d" / "10.toml").write_text(f"version = 2\n[{GC}]\n  pause_threshold = 0.42\n")
    names_it = 'version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n'
    results = {}
    for name, text in (("silent", "version = 2\n"), ("names-it", names_it)):
        (tmp_path / f"{name}.toml").write_text(text)
        command = (
            f'mount --bind "{etc}" /etc/containerd && exec "{containerd.binary("containerd")}" '
            f'-c "{tmp_path / name}.toml" config dump'
        )
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        results[name] = tomllib.loads(done.stdout)
    silent = results["silent"]
    assert ("/etc/containerd/conf.d/*.toml" in silent["imports"]) == (
        containerd.imports.dump_lists_conf_d
    )
    assert dig(silent, (*GC_PATH, "pause_threshold")) != 0.42
    assert dig(results["names-it"], (*GC_PATH, "pause_threshold")) == 0.42
