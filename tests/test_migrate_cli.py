"""scripts/migrate_containerd_config.py as a node would run it: a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from components import atomic_files
from tests.cli_harness import (
    FaultyOs,
    assert_user_error,
    copy_tree,
    public_directory,
    require_unprivileged_runner,
    run,
    run_process,
    snapshot,
)

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "migrate_containerd_config.py"
FIXTURES = Path(__file__).parent / "fixtures" / "containerd"


def _run(
    *args: str, stdin: str | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_stdin_to_stdout_with_summary_on_stderr(tmp_path: Path) -> None:
    text = (FIXTURES / "wildcard-mirror.toml").read_text()
    # run from elsewhere: the script finds the repo itself
    done = _run("--containerd-version", "1.6.20~ds1", stdin=text, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    data = tomllib.loads(done.stdout)
    assert data["plugins"]["io.containerd.grpc.v1.cri"]["registry"] == {
        "config_path": "/etc/containerd/certs.d"
    }
    assert "wildcard" in done.stderr


def test_file_argument_and_config_path(tmp_path: Path) -> None:
    done = _run(
        "--containerd-version",
        "containerd github.com/containerd/containerd/v2 v2.1.3 abc",
        "--config-path",
        "/srv/certs.d",
        str(FIXTURES / "v3-images.toml"),
    )
    assert done.returncode == 0, done.stderr
    registry = tomllib.loads(done.stdout)["plugins"]["io.containerd.cri.v1.images"]["registry"]
    assert registry == {"config_path": "/srv/certs.d"}


def test_in_place_keeps_a_backup_and_mode(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    original = (FIXTURES / "tls-auth-mirrors.toml").read_text()
    config.write_text(original)
    config.chmod(0o600)
    done = _run("--containerd-version", "1.6.20", "--in-place", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    backups = list(tmp_path.glob("config.toml.bak-*"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert "mirrors" not in str(tomllib.loads(config.read_text()))
    assert config.stat().st_mode & 0o777 == 0o600
    assert "s3cr3t" not in done.stderr  # configs.*.auth stays in the file, never printed
    again = _run("--containerd-version", "1.6.20", "--in-place", str(config))
    assert again.returncode == 0
    assert len(list(tmp_path.glob("config.toml.bak-*"))) == 1, "unchanged file: no new backup"


def test_hosts_dir_gets_one_hosts_toml_per_migrated_registry(tmp_path: Path) -> None:
    hosts_dir = tmp_path / "certs.d"
    done = _run(
        "--containerd-version",
        "1.6.20",
        "--hosts-dir",
        str(hosts_dir),
        str(FIXTURES / "tls-auth-mirrors.toml"),
    )
    assert done.returncode == 0, done.stderr
    written = sorted(p.relative_to(hosts_dir).as_posix() for p in hosts_dir.rglob("hosts.toml"))
    assert written == [
        "docker.io/hosts.toml",
        "ghcr.io/hosts.toml",
        "harbor.corp.example/hosts.toml",
        "myreg.corp.example:5000/hosts.toml",
    ]
    hub = tomllib.loads((hosts_dir / "docker.io" / "hosts.toml").read_text())
    assert hub["server"] == "https://registry-1.docker.io"
    assert list(hub["host"]) == ["https://mirror.corp.example:5443"]
    assert hub["host"]["https://mirror.corp.example:5443"]["ca"] == [
        "/etc/containerd/certs/corp-ca.pem"
    ]


def test_bad_toml_exits_2_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    broken = 'version = 2\n\n[plugins."io.containerd.grpc.v1.cri".registry\nconfig_path = ""\n'
    config.write_text(broken)
    hosts_dir = tmp_path / "certs.d"
    done = _run(
        "--containerd-version",
        "1.6.20",
        "--in-place",
        "--hosts-dir",
        str(hosts_dir),
        str(config),
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert lines == [f"{config}:3: invalid TOML: Expected ']' at the end of a table declaration"], (
        done.stderr
    )
    assert config.read_text() == broken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_missing_version_is_a_usage_error() -> None:
    done = _run(stdin="")
    assert done.returncode == 2
    assert "--containerd-version" in done.stderr


# --- every user mistake: exit 2, one line naming the file, nothing written or changed ------------

AUTH_PASSWORD = "s3cr3t-PASSWORD-do-not-print"  # in tls-auth-mirrors.toml: never on stderr
MIRRORS = (FIXTURES / "tls-auth-mirrors.toml").read_bytes()
HOSTS = ["docker.io", "ghcr.io", "harbor.corp.example", "myreg.corp.example:5000"]


def _layout(root: Path, layout: dict[str, Any]) -> None:
    """{"path": bytes | "dir" | "link:TARGET" | ("mode", bytes, mode)} under ``root``."""
    for relative, entry in layout.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(entry, bytes):
            path.write_bytes(entry)
        elif isinstance(entry, tuple):
            path.write_bytes(entry[1])
            path.chmod(entry[2])
        elif entry == "dir":
            path.mkdir()
        else:
            path.symlink_to(entry.removeprefix("link:"))


V = ["--containerd-version", "1.6.20"]


def _with_registry(
    key: str, table: str = 'mirrors."{}"]\n  endpoint = ["https://m.example"]'
) -> bytes:
    """MIRRORS plus one more registry entry under ``key`` (as written in the file)."""
    header = '\n[plugins."io.containerd.grpc.v1.cri".registry.'
    return MIRRORS + (header + table.format(key) + "\n").encode()


# (id, layout, argv after the version (paths relative to the test dir), what the line names)
MISTAKES: list[tuple[str, dict[str, Any], list[str], str]] = [
    ("typo-in-name", {"config.toml": MIRRORS}, ["config.tmol"], "config.tmol: no such file"),
    (
        "typo-in-place",
        {"config.toml": MIRRORS},
        ["--in-place", "config.tmol"],
        "config.tmol: no such file",
    ),
    (
        "typo-hosts-dir",
        {"config.toml": MIRRORS},
        ["--hosts-dir", "d", "config.tmol"],
        "config.tmol: no such",
    ),
    (
        "missing-dir",
        {},
        ["--in-place", "etc/containerd/config.toml"],
        "etc/containerd/config.toml: no such",
    ),
    ("a-directory", {"config.toml": "dir"}, ["config.toml"], "config.toml: is a directory"),
    (
        "a-directory-in-place",
        {"config.toml": "dir"},
        ["--in-place", "config.toml"],
        "config.toml: is a directory",
    ),
    (
        "dangling-link",
        {"config.toml": "link:gone.toml"},
        ["--in-place", "config.toml"],
        "config.toml: no such file",
    ),
    (
        "link-loop",
        {"a.toml": "link:b.toml", "b.toml": "link:a.toml"},
        ["a.toml"],
        "a.toml: cannot read",
    ),
    (
        "hosts-dir-is-a-file",
        {"config.toml": MIRRORS, "certs.d": b"x"},
        ["--in-place", "--hosts-dir", "certs.d", "config.toml"],
        "certs.d: not a directory",
    ),
    (
        "hosts-dir-parent-is-a-file",
        {"config.toml": MIRRORS, "etc": b"x"},
        ["--in-place", "--hosts-dir", "etc/certs.d", "config.toml"],
        "etc: not a directory",
    ),
    (
        "hosts-dir-registry-is-a-file",
        {"config.toml": MIRRORS, "certs.d/ghcr.io": b"x"},
        ["--in-place", "--hosts-dir", "certs.d", "config.toml"],
        "certs.d/ghcr.io: not a directory",
    ),
    (
        "hosts-toml-is-a-dir",
        {"config.toml": MIRRORS, "certs.d/docker.io/hosts.toml": "dir"},
        ["--in-place", "--hosts-dir", "certs.d", "config.toml"],
        "certs.d/docker.io/hosts.toml: is a directory",
    ),
    (
        "hosts-dir-dangling-link",
        {"config.toml": MIRRORS, "certs.d": "link:gone"},
        ["--hosts-dir", "certs.d", "config.toml"],
        "certs.d: not a directory",
    ),
    (
        "hosts-dir-no-in-place",
        {"config.toml": MIRRORS, "certs.d": b"x"},
        ["--hosts-dir", "certs.d", "config.toml"],
        "certs.d: not a directory",
    ),
    (
        "hosts-dir-host-with-slash",
        {"config.toml": _with_registry("foo/bar")},
        ["--in-place", "--hosts-dir", "certs.d", "config.toml"],
        'config.toml: registry.mirrors."foo/bar": not a registry host[:port]',
    ),
    (
        "hosts-dir-host-with-space",
        {"config.toml": _with_registry("my reg")},
        ["--hosts-dir", "certs.d", "config.toml"],
        'config.toml: registry.mirrors."my reg": not a registry host[:port]',
    ),
    (
        "hosts-dir-tls-of-a-bad-host",
        {"config.toml": _with_registry("a b", 'configs."{}".tls]\n  insecure_skip_verify = true')},
        ["--in-place", "--hosts-dir", "certs.d", "config.toml"],
        'config.toml: registry.configs."a b": not a registry host[:port]',
    ),
    (
        "invalid-toml",
        {"config.toml": b'version = 2\n[plugins."x"\n'},
        ["--in-place", "config.toml"],
        "config.toml:2: invalid TOML",
    ),
    (
        "invalid-value",
        {"config.toml": MIRRORS.replace(b'level = "info"', b"level = info")},
        ["--in-place", "config.toml"],
        "config.toml:5: invalid TOML",
    ),
    (
        "duplicate-key",
        {
            "config.toml": MIRRORS.replace(
                b"enable_selinux = false", b"enable_selinux = false\nenable_selinux = true"
            )
        },
        ["--in-place", "config.toml"],
        "config.toml:11: invalid TOML",
    ),
    (
        "duplicate-table",
        {"config.toml": MIRRORS + b'\n[plugins."io.containerd.internal.v1.opt"]\n'},
        ["config.toml"],
        "config.toml:48: invalid TOML: Cannot declare",
    ),
    (
        "deep-nesting",
        {"config.toml": b"a = " + b"[" * 5000},
        ["--in-place", "config.toml"],
        "config.toml: invalid TOML: nested too deeply",
    ),
    (
        "version-4",
        {"config.toml": b"version = 4\n"},
        ["--in-place", "config.toml"],
        "config.toml:1: unsupported config version 4",
    ),
    (
        "version-string",
        {"config.toml": b'version = "2"\n[x]\n'},
        ["config.toml"],
        "config.toml:1: unsupported config version '2'",
    ),
    (
        "latin1-value",
        {"config.toml": MIRRORS.replace(b'"/opt/containerd"', b'"/opt/contain\xe9rd"')},
        ["--in-place", "config.toml"],
        "config.toml:46:25: byte 0xe9 in a key or value is not UTF-8",
    ),
    (
        "latin1-key",
        {"config.toml": MIRRORS.replace(b'"ghcr.io"]', b'"ghcr.\xe9o"]')},
        ["--in-place", "config.toml"],
        "config.toml:19:67: byte 0xe9",
    ),
    (
        "binary",
        {"config.toml": bytes(range(256))},
        ["--in-place", "config.toml"],
        "config.toml:1: invalid TOML",
    ),
    (
        "gzip",
        {"config.toml": b"\x1f\x8b\x08\x00" + b"\x00" * 20},
        ["--in-place", "config.toml"],
        "config.toml:1: invalid TOML",
    ),
    (
        "utf16",
        {"config.toml": "version = 2\n".encode("utf-16")},
        ["--in-place", "config.toml"],
        "config.toml:1: invalid TOML",
    ),
    (
        "bad-version-arg",
        {"config.toml": MIRRORS},
        ["--containerd-version", "latest", "--in-place", "config.toml"],
        "--containerd-version: no containerd version",
    ),
    (
        "relative-config-path",
        {"config.toml": MIRRORS},
        ["--config-path", "certs.d", "config.toml"],
        "--config-path: expected ONE absolute directory",
    ),
    (
        "list-config-path",
        {"config.toml": MIRRORS},
        ["--config-path", "/a:/b", "config.toml"],
        "--config-path",
    ),
    ("in-place-stdin", {}, ["--in-place"], "--in-place and --create need a FILE"),
    ("create-stdin", {}, ["--create"], "--in-place and --create need a FILE"),
    (
        "unknown-option",
        {"config.toml": MIRRORS},
        ["--inplace", "config.toml"],
        "unrecognized arguments: --inplace",
    ),
    (
        "two-files",
        {"config.toml": MIRRORS},
        ["config.toml", "config.toml"],
        "unrecognized arguments",
    ),
]


@pytest.mark.parametrize(
    ("layout", "argv", "named"), [c[1:] for c in MISTAKES], ids=[c[0] for c in MISTAKES]
)
def test_a_mistake_is_one_line_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: dict, argv: list[str], named: str
) -> None:

    _layout(tmp_path, layout)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    version = [] if "--containerd-version" in argv else V
    outcome = run("migrate_containerd_config", [*version, *argv])
    assert_user_error(outcome, [named], secrets=[AUTH_PASSWORD], lines=1)
    assert snapshot(tmp_path) == before


def test_at_least_30_mistakes() -> None:
    assert len(MISTAKES) >= 30


@pytest.mark.parametrize(
    ("layout", "argv", "named"),
    [
        (
            {"etc/config.toml": ("mode", MIRRORS, 0o600)},
            ["etc/config.toml"],
            "cannot read: Permission denied",
        ),
        (
            {"etc/config.toml": ("mode", MIRRORS, 0o666)},
            ["--in-place", "etc/config.toml"],
            "etc: permission denied",
        ),
        (
            {"config.toml": ("mode", MIRRORS, 0o644), "certs.d": "dir"},
            ["--hosts-dir", "certs.d", "config.toml"],
            "certs.d: permission denied",
        ),
        (
            {"w/config.toml": ("mode", MIRRORS, 0o644)},  # w/ is writable by anyone
            ["--in-place", "w/config.toml"],
            "w/config.toml: permission denied (the file is read-only)",
        ),
    ],
    ids=["unreadable", "directory-not-writable", "hosts-dir-not-writable", "file-read-only"],
)
def test_a_file_the_user_may_not_touch_is_one_line(
    layout: dict, argv: list[str], named: str
) -> None:
    """As a user, not root (root ignores permissions): setpriv to nobody when run as root."""

    require_unprivileged_runner()
    with public_directory() as root:
        _layout(root, layout)
        for directory in (root / "etc", root / "certs.d"):
            if directory.is_dir():
                directory.chmod(0o755)
        if (root / "w").is_dir():
            (root / "w").chmod(0o777)
        before = snapshot(root)
        absolute = [str(root / a) if not a.startswith("-") else a for a in argv]
        outcome = run_process("migrate_containerd_config", [*V, *absolute], unprivileged=True)
        assert_user_error(outcome, [named], secrets=[AUTH_PASSWORD], lines=1)
        assert snapshot(root) == before


# --- what must work, and keep the bytes it does not change ----------------------------------------

BOM = b"\xef\xbb\xbf"
WILDCARD = (FIXTURES / "wildcard-mirror.toml").read_bytes()


def _migrated(data: bytes) -> bytes:
    from components.renderers.containerd_config import migrate_config

    return migrate_config(data.decode("utf-8", "surrogateescape"), "1.6.20").text.encode(
        "utf-8", "surrogateescape"
    )


def test_a_byte_order_mark_is_accepted_and_kept(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(BOM + WILDCARD)
    done = _run("--containerd-version", "1.6.20", "--in-place", str(config))
    assert done.returncode == 0, done.stderr
    assert config.read_bytes() == BOM + _migrated(WILDCARD)
    assert "mirrors" not in str(tomllib.loads(config.read_bytes()[3:].decode()))


def test_non_utf8_bytes_in_comments_are_kept_byte_for_byte(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    latin1 = WILDCARD.replace(b"\n", b"  # Spiegel f\xfcr alle \xbb\n", 2)
    config.write_bytes(latin1)
    done = _run("--containerd-version", "1.6.20", "--in-place", str(config))
    assert done.returncode == 0, done.stderr
    assert config.read_bytes().count(b"Spiegel f\xfcr alle \xbb") == 2
    assert config.read_bytes() == _migrated(latin1)
    to_stdout = _run_in_process(*V, "--hosts-dir", str(tmp_path / "d"), stdin=latin1)
    assert to_stdout.code == 0 and to_stdout.stdout == _migrated(latin1), to_stdout.stderr


def _run_in_process(*argv: str, stdin: bytes = b""):

    return run("migrate_containerd_config", list(argv), stdin=stdin)


@pytest.mark.integration
@pytest.mark.parametrize(
    "data", [BOM + WILDCARD, WILDCARD.replace(b"\n", b" # caf\xe9\n", 3)], ids=["bom", "latin1"]
)
def test_containerd_reads_what_the_kept_bytes_make(tmp_path: Path, data: bytes) -> None:
    """The claim behind keeping them: a real containerd loads the migrated file as written."""
    from tests.prereq import require_binary

    require_binary("containerd")
    config = tmp_path / "config.toml"
    config.write_bytes(data)
    done = _run("--containerd-version", "1.6.20", "--in-place", str(config))
    assert done.returncode == 0, done.stderr
    dump = subprocess.run(
        ["containerd", "-c", str(config), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert dump.returncode == 0, dump.stderr
    assert 'config_path = "/etc/containerd/certs.d"' in dump.stdout
    assert "registry.mirrors." not in dump.stdout


@pytest.mark.parametrize(
    "text",
    [
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]',
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  a = 1',
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  a = 1 # the end',
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."x.io"]\n'
        '  endpoint = ["http://10.0.0.1:5000"] # the end',
    ],
    ids=["header", "value", "comment", "mirror"],
)
def test_a_last_line_without_newline_is_migrated(text: str) -> None:
    """Found by the property below: config_path was appended to that last line."""
    outcome = _run_in_process(*V, stdin=text.encode())
    assert outcome.code == 0, outcome.stderr
    migrated = tomllib.loads(outcome.stdout.decode())
    registry = migrated["plugins"]["io.containerd.grpc.v1.cri"]["registry"]
    assert registry["config_path"] == "/etc/containerd/certs.d"
    assert registry.get("a", 1) == 1 and "mirrors" not in registry
    assert outcome.stdout.decode().startswith(text.split("\n")[0] + "\n")


def test_a_symlinked_config_is_edited_at_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real" / "config.toml"
    real.parent.mkdir()
    real.write_bytes(MIRRORS)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    done = _run("--containerd-version", "1.6.20", "--in-place", str(link))
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and link.resolve() == real
    assert "mirrors" not in str(tomllib.loads(real.read_text()))
    assert [p.name for p in real.parent.glob("config.toml.bak-*")] != []
    assert f"is a symlink: editing its target {real}" in done.stderr


def test_create_starts_a_missing_config_only_when_asked(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "containerd" / "config.toml"
    done = _run("--containerd-version", "1.6.20", "--create", "--in-place", str(config))
    assert done.returncode == 0, done.stderr
    assert tomllib.loads(config.read_text())["version"] == 2
    assert config.stat().st_mode & 0o777 == 0o600


def test_a_different_hosts_toml_is_backed_up_and_an_equal_one_left_alone(tmp_path: Path) -> None:
    hosts_dir = tmp_path / "certs.d"
    mine = hosts_dir / "ghcr.io" / "hosts.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text('server = "https://ghcr.io"\n# hand-written\n')
    args = ["--containerd-version", "1.6.20", "--hosts-dir", str(hosts_dir)]
    done = _run(*args, str(FIXTURES / "tls-auth-mirrors.toml"))
    assert done.returncode == 0, done.stderr
    backups = list(mine.parent.glob("hosts.toml.bak-*"))
    assert len(backups) == 1 and "hand-written" in backups[0].read_text()
    again = _run(*args, str(FIXTURES / "tls-auth-mirrors.toml"))
    assert again.returncode == 0 and "already up to date" in again.stderr
    assert len(list(mine.parent.glob("hosts.toml.bak-*"))) == 1


@pytest.mark.parametrize("key", ["*", "_default"])
def test_hosts_dir_skips_keys_that_name_no_registry(tmp_path: Path, key: str) -> None:
    """``*`` (1.x's wildcard) and ``_default`` get no hosts.toml: a certs.d/_default would be the
    hosts.toml of every registry without its own. The real registries still get theirs."""
    config = tmp_path / "config.toml"
    config.write_bytes(_with_registry(key))
    hosts_dir = tmp_path / "certs.d"
    outcome = run("migrate_containerd_config", [*V, "--hosts-dir", str(hosts_dir), str(config)])
    assert outcome.code == 0, outcome.stderr
    assert sorted(p.parent.name for p in hosts_dir.rglob("hosts.toml")) == HOSTS
    registry = tomllib.loads(outcome.stdout.decode())["plugins"]["io.containerd.grpc.v1.cri"]
    assert "mirrors" not in registry["registry"]
    assert f'dropped {"wildcard mirror" if key == "*" else "mirror"} "{key}"' in outcome.stderr


# --- property: any bytes in config.toml ---------------------------------------------------------

_TOML_LINES = st.sampled_from(
    [
        "version = 2",
        "version = 1",
        "version = 3",
        '[plugins."io.containerd.grpc.v1.cri".registry]',
        '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]',
        '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]',
        '[plugins."io.containerd.grpc.v1.cri".registry.configs."x.io".tls]',
        '[plugins."io.containerd.cri.v1.images".registry]',
        "[plugins.cri.registry.mirrors.q]",
        '  endpoint = ["http://10.0.0.1:5000", "https://x.io"]',
        "  endpoint = []",
        '  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"',
        '  config_path = ""',
        "  insecure_skip_verify = true",
        '  ca_file = "/ca.pem"',
        "# a comment",
        "",
    ]
)
_CONFIGS = st.one_of(
    st.binary(max_size=400),
    st.lists(st.one_of(_TOML_LINES, st.text(max_size=30)), max_size=14).map(
        lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
    ),
    st.tuples(
        st.sampled_from([b"", BOM]), st.sampled_from([MIRRORS, WILDCARD]), st.binary(max_size=8)
    ).map(lambda parts: parts[0] + parts[1] + b"\n# " + parts[2]),
)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_CONFIGS)
@example(data=b'version=2\n[plugins."io.containerd.grpc.v1.cri".registry]')  # was a traceback
def test_any_bytes_are_migrated_or_one_line_and_unchanged(data: bytes) -> None:

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        config = root / "config.toml"
        config.write_bytes(data)
        before = snapshot(root)
        argv = [*V, "--in-place", "--hosts-dir", str(root / "certs.d"), str(config)]
        outcome = run("migrate_containerd_config", argv)
        assert outcome.code in (0, 2), outcome
        if outcome.code == 2:
            assert_user_error(outcome, [str(config)], lines=1)
            assert snapshot(root) == before
        else:
            assert "Traceback" not in outcome.stderr
            text = config.read_bytes().removeprefix(BOM).decode("utf-8", "surrogateescape")
            tomllib.loads(text)  # what was written is TOML


# --- fault injection: each write step fails (or the process dies) in turn ---------------------


def _node(root: Path) -> None:
    """A node mid-life: mirrors in config.toml, one hand-written hosts.toml already there."""
    _layout(
        root,
        {
            "etc/containerd/config.toml": ("mode", MIRRORS, 0o640),
            "etc/containerd/certs.d/ghcr.io/hosts.toml": b'server = "https://ghcr.io"\n',
        },
    )


def _argv(root: Path) -> list[str]:
    etc = root / "etc" / "containerd"
    return [*V, "--in-place", "--hosts-dir", str(etc / "certs.d"), str(etc / "config.toml")]


def _finished(root: Path) -> dict[str, bytes]:
    """What a successful run leaves: the expected final files (backups by content)."""

    assert run("migrate_containerd_config", _argv(root)).code == 0
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _nothing_lost(root: Path, finished: dict[str, bytes]) -> str:
    """The invariant: the original config.toml, with its mirrors, is never lost. Either it is
    still in place, or the migrated one is in place AND the backup holds the original AND every
    carried-over registry has its hosts.toml. No file under a final name is half-written."""
    etc = root / "etc" / "containerd"
    config = (etc / "config.toml").read_bytes()
    for path in root.rglob("*"):
        name = str(path.relative_to(root))
        if path.is_file() and not path.name.startswith("."):  # temp files are hidden
            assert ".bak-" in name or path.read_bytes() in (
                finished.get(name),
                MIRRORS,
                b'server = "https://ghcr.io"\n',
            ), f"{name} is neither old nor new"
    if config == MIRRORS:
        return "original"
    assert config == finished["etc/containerd/config.toml"], "config.toml half-written"
    backups = [p.read_bytes() for p in etc.glob("config.toml.bak-*")]
    assert backups == [MIRRORS], "migrated config.toml without a backup of the original"
    for host in HOSTS:
        assert (etc / "certs.d" / host / "hosts.toml").read_bytes() == finished[
            f"etc/containerd/certs.d/{host}/hosts.toml"
        ], f"migrated config.toml without {host}'s hosts.toml"
    return "migrated"


@pytest.mark.parametrize("keep_failing", [False, True], ids=["one-fault", "every-later-step-too"])
def test_a_failing_step_undoes_everything_and_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep_failing: bool
) -> None:
    """Disk full / I/O error at write step N, for every N: exit 2 with one line, and (when the
    undo itself can run) the node's files exactly as before. With every later step failing too,
    the undo cannot run: the line names what is left, and still nothing is lost."""

    pristine, work = tmp_path / "pristine", tmp_path / "work"
    _node(pristine)
    copy_tree(pristine, tmp_path / "finished")
    counter = FaultyOs()
    monkeypatch.setattr(atomic_files, "_os", counter)
    finished = _finished(tmp_path / "finished")
    steps = len(counter.calls)
    assert steps >= 6 * 5, counter.calls  # 4 hosts.toml + 2 backups + config.toml
    before = snapshot(pristine)
    outcomes = set()
    for fail_at in range(1, steps + 1):
        shutil.rmtree(work, ignore_errors=True)
        copy_tree(pristine, work)
        faulty = FaultyOs(fail_at, keep_failing=keep_failing)
        monkeypatch.setattr(atomic_files, "_os", faulty)
        outcome = run("migrate_containerd_config", _argv(work))
        monkeypatch.setattr(atomic_files, "_os", os)
        step = faulty.calls[fail_at - 1]
        outcomes.add(_nothing_lost(work, {k: v for k, v in finished.items()}))
        if outcome.code == 0:  # a directory fsync after a rename: best effort by design
            assert step in ("open", "fsync"), (fail_at, step, outcome.stderr)
            continue
        assert_user_error(
            outcome,
            ["Input/output error"],
            secrets=[AUTH_PASSWORD],
            lines=1,
            max_line=2000,  # "NOT undone, check:" lists every file left (long temp paths here)
        )
        if not keep_failing:
            assert snapshot(work) == before, (fail_at, step)
        elif "NOT undone" in outcome.stderr:
            assert "hosts.toml" in outcome.stderr
    assert outcomes == {"original", "migrated"}


def test_killed_at_any_step_loses_nothing(tmp_path: Path) -> None:
    """kill -9 (or a power cut) at write step N, for every N: no cleanup runs at all. The
    original config.toml and its mirrors survive every time (tests/cli_harness.crash)."""

    pristine = tmp_path / "pristine"
    _node(pristine)
    copy_tree(pristine, tmp_path / "finished")
    counter = FaultyOs()
    original_os = atomic_files._os
    atomic_files._os = counter
    try:
        finished = _finished(tmp_path / "finished")
    finally:
        atomic_files._os = original_os
    seen = set()
    for crash_at in range(1, len(counter.calls) + 1):
        work = tmp_path / f"run-{crash_at}"
        copy_tree(pristine, work)
        driver = (
            "import sys; sys.path.insert(0, sys.argv[1]);"
            "from components import atomic_files; from tests import cli_harness as h;"
            "atomic_files._os = h.FaultyOs(int(sys.argv[2]), h.crash);"
            "sys.exit(h.script('migrate_containerd_config').main(sys.argv[3:]))"
        )
        done = subprocess.run(
            [sys.executable, "-c", driver, str(ROOT), str(crash_at), *_argv(work)],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert done.returncode in (137, 0), done.stderr.decode()
        seen.add(_nothing_lost(work, finished))
    assert seen == {"original", "migrated"}
