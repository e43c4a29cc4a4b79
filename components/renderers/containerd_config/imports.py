"""How each containerd version finds and merges the files a config's ``imports`` names: DATA, one
row per behaviour that differs (measured on the real daemons, docs/containerd-imports.md; the
test table tests/integration/containerd_versions.py ``ImportRules`` holds the same columns and a
unit test checks the two agree), and the files that belong to another tool.

Pure: no ``import pulumi``.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from dataclasses import dataclass
from typing import Literal

from components.renderers.containerd_config.versions import parse_containerd_version


@dataclass(frozen=True)
class ImportRules:
    """What differs between versions; the rest is the same everywhere: the main file first, then
    breadth first, glob matches in lexical order, a file read once, a later scalar wins."""

    plugin_tables: Literal["replaced", "merged"]
    """1.x: a later file's ``[plugins."<id>"]`` table replaces the whole table (so on 1.x the CRI
    registry settings in effect are those of the LAST file with a CRI plugin table); 2.x: merged
    key by key."""
    relative_glob_base: Literal["cwd", "file"]
    """Where a relative pattern with ``*`` is matched: the daemon's working directory (1.6: ``/``
    under systemd) or next to the importing file (1.7+)."""
    older_dropins: Literal["refused", "renamed", "migrated"]
    """A drop-in of another config version: ``refused`` (1.x: v1 names in a v2 config stop the
    daemon), ``renamed`` (2.0-2.2: the LAST file's version decides how the merged config is read,
    so files of different versions silently drop each other's CRI settings), ``migrated`` (2.3:
    each file is migrated on its own, any mix works)."""


_RULES: tuple[tuple[tuple[int, int], ImportRules], ...] = (
    # (first version it applies to, rules), newest first.
    ((2, 3), ImportRules("merged", "file", "migrated")),
    ((2, 0), ImportRules("merged", "file", "renamed")),
    ((1, 7), ImportRules("replaced", "file", "refused")),
    ((0, 0), ImportRules("replaced", "cwd", "refused")),
)


def import_rules(containerd_version: str) -> ImportRules:
    """The import rules of a containerd version (``1.6.20~ds1``, ``v2.1.3``, ...)."""
    major_minor = parse_containerd_version(containerd_version)[:2]
    return next(rules for since, rules in _RULES if major_minor >= since)


# Drop-ins another tool writes and rewrites on its own schedule: what we change there is undone
# without us knowing, so registry settings in them are refused (docs: README, "imports drop-ins").
# Matched on the file name; (pattern, owner, what the person should do).
OWNED_DROPINS: tuple[tuple[str, str, str], ...] = (
    (
        r"(?i).*nvidia.*\.toml",
        "the NVIDIA Container Toolkit (nvidia-ctk and the GPU Operator rewrite it)",
        "move the registry settings into config.toml or a drop-in of your own",
    ),
)


def owner_of(path: str) -> tuple[str, str] | None:
    """(owner, what to do) when ``path`` is a drop-in another tool rewrites, else None."""
    name = posixpath.basename(path)
    for pattern, owner, advice in OWNED_DROPINS:
        if re.fullmatch(pattern, name):
            return owner, advice
    return None


def go_glob_match(pattern: str, path: str) -> bool:
    """Go's ``filepath.Match`` on whole paths: ``*`` and ``?`` never cross a ``/`` (and, unlike a
    shell, match a leading dot)."""
    parts, names = pattern.split("/"), path.split("/")
    return len(parts) == len(names) and all(
        fnmatch.fnmatchcase(name, part) for part, name in zip(parts, names, strict=True)
    )


def resolve_entry(
    entry: str, importing_file: str, rules: ImportRules
) -> tuple[Literal["glob", "file"], str]:
    """An ``imports`` entry as containerd resolves it: a glob pattern (absolute) or one file."""
    if "*" in entry:
        if entry.startswith("/"):
            return "glob", entry
        base = "/" if rules.relative_glob_base == "cwd" else posixpath.dirname(importing_file)
        return "glob", posixpath.join(base, entry)
    path = posixpath.normpath(entry)
    if not path.startswith("/"):
        path = posixpath.normpath(posixpath.join(posixpath.dirname(importing_file), path))
    return "file", path


def go_glob_order(paths: list[str]) -> list[str]:
    """The order ``filepath.Glob`` returns matches in: names sorted directory by directory."""
    return sorted(paths, key=lambda path: [part.encode() for part in path.split("/")])
