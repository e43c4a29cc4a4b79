"""scripts/migrate_containerd_config.py as a node would run it: a subprocess."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

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
    assert len(lines) == 1 and "line 3" in lines[0], done.stderr
    assert config.read_text() == broken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_missing_version_is_a_usage_error() -> None:
    done = _run(stdin="")
    assert done.returncode == 2
    assert "--containerd-version" in done.stderr
