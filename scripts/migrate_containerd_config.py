"""Switch a containerd config.toml from ``registry.mirrors`` to ``config_path`` (+ hosts.toml).

    python scripts/migrate_containerd_config.py --containerd-version 1.6.20 config.toml
    python scripts/migrate_containerd_config.py --containerd-version "$(containerd --version)" \
        --hosts-dir /etc/containerd/certs.d --in-place /etc/containerd/config.toml

The migrated TOML goes to stdout, or with --in-place back into FILE after a FILE.bak-<time> copy;
with --hosts-dir the mirrors and TLS settings taken out of FILE become DIR/<registry>/hosts.toml
(an existing, different hosts.toml is kept as hosts.toml.bak-<time>). What was removed, added or
dropped goes to stderr; nothing there names a credential (``configs.*.auth`` stays in the file).

Nothing is lost: everything is computed and every target checked before anything is written;
then the hosts.toml files, then the backup, and config.toml LAST, each into a temp file beside
it and renamed into place; any failure undoes what was written. A symlinked FILE is edited at
its target (and said so). A missing FILE is an error: a typo must not become a fresh config;
--create starts from an empty one (containerd's defaults), as for a node without config.toml.
A UTF-8 byte order mark and non-UTF-8 bytes in comments (containerd reads both) are kept.

Exit 0 on success; 2 with one line per problem (naming the file, and its line) when the input
or a target is wrong; nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path

import tomlkit

# scripts/ is not a package: make `components` importable when run as a file from anywhere.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from components.atomic_files import AtomicFiles, WriteFailed
from components.cli import Parser, fail
from components.renderers.containerd_config import (
    DEFAULT_CONFIG_PATH,
    ConfigParseError,
    MigratedRegistry,
    MigrationResult,
    migrate_config,
    parse_containerd_version,
)
from components.renderers.hosts_toml import registry_dir_name, render_migrated_hosts
from components.settings import SHOWN_LENGTH

# Bytes that are not UTF-8 travel through the migration as lone surrogates and back out as the
# same bytes (Python's surrogateescape).
_ENCODING = ("utf-8", "surrogateescape")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(description=(__doc__ or "").splitlines()[0])
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
    parser.add_argument(
        "--create",
        action="store_true",
        help="FILE may not exist yet: start from an empty config (containerd's defaults)",
    )
    arguments = parser.parse_args(argv)
    if (arguments.in_place or arguments.create) and not arguments.file:
        parser.error("--in-place and --create need a FILE")
    try:
        parse_containerd_version(arguments.containerd_version)
    except ValueError as error:
        parser.error(f"argument --containerd-version: {error}")
    path = arguments.config_path
    if not path.startswith("/") or ":" in path or any(c.isspace() for c in path):
        parser.error("argument --config-path: expected ONE absolute directory (no ':' list)")
    return arguments


def _non_utf8_problem(text: str, name: str) -> str | None:
    """containerd 1.6 reads non-UTF-8 bytes anywhere, but in a key or value it reads them as
    U+FFFD: a path or host would silently change. Comments are fine (kept byte for byte)."""
    lines = text.split("\n")
    found = [
        (number, index)
        for number, line in enumerate(lines)
        for index, character in enumerate(line)
        if "\udc80" <= character <= "\udcff"
    ]
    if not found:
        return None
    try:
        if not _has_surrogate(tomllib.loads(text)):
            return None
    except (ValueError, RecursionError):
        return None  # the migration reports the syntax error itself
    # Point at the first one outside what looks like a comment.
    number, index = next(((n, i) for n, i in found if "#" not in lines[n][:i]), found[0])
    byte = ord(lines[number][index]) - 0xDC00
    return (
        f"{name}:{number + 1}:{index + 1}: byte 0x{byte:02x} in a key or value is not UTF-8"
        " (containerd would read it as U+FFFD): save the file as UTF-8"
    )


def _has_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= c <= "\udcff" for c in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_surrogate(v) for v in value)
    return False


def _free_name(path: Path) -> Path:
    """``path`` itself, or ``path-1``, ``path-2``... whichever does not exist yet."""
    candidate, counter = path, 0
    while os.path.lexists(candidate):
        counter += 1
        candidate = path.with_name(f"{path.name}-{counter}")
    return candidate


def _kept_owner(path: Path) -> tuple[int, int] | None:
    """The owner to give a replacement of ``path``: its own, when we may (as root)."""
    status = path.stat()
    if os.geteuid() == 0 and (status.st_uid, status.st_gid) != (0, os.getegid()):
        return status.st_uid, status.st_gid
    return None


def _key_of(registry: MigratedRegistry) -> str:
    """The config.toml key the registry came from: a mirrors entry, or only a configs TLS."""
    tls_only = not (registry.endpoints or registry.server) and (
        registry.ca or registry.client or registry.skip_verify is not None
    )
    key = tomlkit.key(registry.host).as_string()  # as config.toml spells it: "foo/bar"
    if len(key) > SHOWN_LENGTH:
        key = key[:SHOWN_LENGTH] + "..."
    return f"registry.{'configs' if tls_only else 'mirrors'}.{key}"


def _plan_hosts(
    files: AtomicFiles, arguments: argparse.Namespace, result: MigrationResult, stamp: str
) -> tuple[list[str], list[str]]:
    """Add each migrated registry's hosts.toml (and a backup of one it replaces)."""
    notes, problems = [], []
    hosts_dir = Path(arguments.hosts_dir)
    for registry in result.migrated:
        try:
            directory = registry_dir_name(registry.host)
        except ValueError:
            problems.append(
                f"{arguments.file or '<stdin>'}: {_key_of(registry)}: not a registry host[:port],"
                " so no certs.d directory can be named after it: fix or remove the key"
            )
            continue
        path = hosts_dir / directory / "hosts.toml"
        if path.is_symlink():
            path = Path(os.path.realpath(path))
        content = render_migrated_hosts(registry, arguments.containerd_version).encode()
        try:
            previous = path.read_bytes() if path.is_file() else None
            mode = path.stat().st_mode & 0o7777 if previous is not None else 0o644
        except OSError as error:
            problems.append(f"{path}: cannot read: {error.strerror or error}")
            continue
        if previous == content:
            notes.append(f"{path} already up to date")
            continue
        if previous is not None:
            backup = _free_name(path.with_name(f"{path.name}.bak-{stamp}"))
            files.add(backup, previous, mode)
            notes.append(f"backup {backup}")
        files.add(path, content, mode)
        notes.append(f"wrote {path}")
    return notes, problems


def main(argv: list[str] | None = None) -> int:
    arguments = _arguments(argv)
    notes: list[str] = []
    target: Path | None = None
    if arguments.file is None:
        name, data = "<stdin>", sys.stdin.buffer.read()
    else:
        name = arguments.file
        target = Path(arguments.file)
        if target.is_symlink():
            # Renaming over a symlink would replace the link; the config it points at is the
            # one containerd reads.
            resolved = Path(os.path.realpath(target))
            if arguments.in_place:
                notes.append(f"{target} is a symlink: editing its target {resolved}")
            target = resolved
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            if not arguments.create:
                return fail(
                    [
                        f"{name}: no such file (a node without config.toml runs on containerd's"
                        " defaults: add --create to start one)"
                    ]
                )
            data = None
        except IsADirectoryError:
            return fail([f"{name}: is a directory, not a config.toml"])
        except OSError as error:
            return fail([f"{name}: cannot read: {error.strerror or error}"])

    text = (data or b"").decode(*_ENCODING)
    problem = _non_utf8_problem(text, name)
    if problem:
        return fail([problem])
    try:
        result = migrate_config(text, arguments.containerd_version, arguments.config_path)
    except ConfigParseError as error:
        where = f"{name}:{error.line}" if error.line is not None else name
        return fail([f"{where}: {error.problem}"])
    new = result.text.encode(*_ENCODING)

    stamp = time.strftime("%Y%m%d%H%M%S")
    files = AtomicFiles()
    problems: list[str] = []
    if arguments.hosts_dir:
        hosts_dir = Path(arguments.hosts_dir)
        if os.path.lexists(hosts_dir) and not hosts_dir.is_dir():
            return fail([f"{hosts_dir}: not a directory (--hosts-dir)"])
        hosts_notes, problems = _plan_hosts(files, arguments, result, stamp)
        notes += hosts_notes
    if arguments.in_place:
        assert target is not None
        if data is not None and not result.changed:
            notes.append(f"{target} already migrated, not rewritten")
        elif data is not None:
            mode, owner = target.stat().st_mode & 0o7777, _kept_owner(target)
            backup = _free_name(target.with_name(f"{target.name}.bak-{stamp}"))
            files.add(backup, data, mode, owner)
            files.add(target, new, mode, owner)  # last: only once everything else is in place
            notes.append(f"backup {backup}")
        else:
            files.add(target, new, 0o600)  # config.toml may come to hold credentials
            notes.append(f"created {target}")
    problems += files.problems()
    if problems:
        return fail(problems)
    try:
        files.write()
    except WriteFailed as error:
        return fail([str(error)])

    for line in result.summary:
        print(f"migrate: {line}", file=sys.stderr)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for line in notes:
        print(f"migrate: {line}", file=sys.stderr)
    if not arguments.in_place:
        sys.stdout.buffer.write(new)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
