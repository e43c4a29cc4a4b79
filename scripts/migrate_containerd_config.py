"""Switch a containerd config.toml from ``registry.mirrors`` to ``config_path`` (+ hosts.toml).

    python scripts/migrate_containerd_config.py --containerd-version 1.6.20 config.toml
    python scripts/migrate_containerd_config.py --containerd-version "$(containerd --version)" \
        --hosts-dir /etc/containerd/certs.d --in-place /etc/containerd/config.toml

The migrated TOML goes to stdout (or back into FILE with --in-place, after a FILE.bak-<time>
copy); what was removed/added/dropped goes to stderr. Nothing on stderr names a credential
(``configs.*.auth`` is kept in the file and never printed).

Exit 0 on success, 2 with one line naming the problem (and its line) when the input cannot be
migrated; nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# scripts/ is not a package: make `components` importable when run as a file from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.renderers.containerd_config import (
    DEFAULT_CONFIG_PATH,
    ConfigParseError,
    migrate_config,
)
from components.renderers.hosts_toml import registry_dir_name, render_migrated_hosts


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("file", nargs="?", help="config.toml to migrate (default: stdin)")
    parser.add_argument(
        "--containerd-version",
        required=True,
        help="the node's containerd version, e.g. 1.6.20 or the whole `containerd --version` line",
    )
    parser.add_argument(
        "--config-path",
        default=DEFAULT_CONFIG_PATH,
        help=f"directory containerd reads hosts.toml from (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--in-place", action="store_true", help="rewrite FILE (a FILE.bak-<time> copy is kept)"
    )
    parser.add_argument(
        "--hosts-dir",
        help="write DIR/<registry>/hosts.toml for the mirrors/TLS settings carried over",
    )
    arguments = parser.parse_args(argv)
    if arguments.in_place and not arguments.file:
        parser.error("--in-place needs a FILE")
    return arguments


def _write_atomically(path: Path, text: str, mode: int | None = None) -> None:
    """Write via a temp file in the same directory + rename: a node never sees half a config."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        if mode is not None:
            Path(temporary).chmod(mode)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    source = Path(arguments.file) if arguments.file else None
    try:
        if source is None:
            text = sys.stdin.read()
        elif source.exists():
            text = source.read_text(encoding="utf-8")
        else:
            text = ""  # a node without config.toml runs on defaults: same as an empty file
        result = migrate_config(text, arguments.containerd_version, arguments.config_path)
    except (ConfigParseError, ValueError, UnicodeDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    hosts_files = {}
    if arguments.hosts_dir:
        for registry in result.migrated:
            hosts_files[registry_dir_name(registry.host)] = render_migrated_hosts(
                registry, arguments.containerd_version
            )

    for line in result.summary:
        print(f"migrate: {line}", file=sys.stderr)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)

    if arguments.in_place:
        assert source is not None
        if result.changed:
            if source.exists():
                backup = source.with_name(f"{source.name}.bak-{time.strftime('%Y%m%d%H%M%S')}")
                shutil.copy2(source, backup)
                print(f"migrate: backup {backup}", file=sys.stderr)
                mode = source.stat().st_mode & 0o7777  # config.toml may hold credentials
            else:
                mode = 0o600
            _write_atomically(source, result.text, mode)
        else:
            print(f"migrate: {source} already migrated, not rewritten", file=sys.stderr)
    else:
        sys.stdout.write(result.text)

    for name, content in hosts_files.items():
        target = Path(arguments.hosts_dir) / name / "hosts.toml"
        _write_atomically(target, content, 0o644)
        print(f"migrate: wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
