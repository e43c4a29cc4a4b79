"""Parsing a config.toml, per config file version: where each version keeps the CRI registry
settings, which version a containerd prefers, and the file read as plain data and as a tomlkit
document (with a byte order mark, as containerd reads it). Pure: no ``import pulumi``.
"""

from __future__ import annotations

import re
import tomllib
from typing import Any

import tomlkit
import tomlkit.exceptions

BOM = "\ufeff"


# Where the CRI registry settings live, by config file version.
REGISTRY_PATHS: dict[int, tuple[str, ...]] = {
    1: ("plugins", "cri", "registry"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "registry"),
    3: ("plugins", "io.containerd.cri.v1.images", "registry"),
}


class ConfigParseError(ValueError):
    """The config.toml cannot be migrated; ``line`` is 1-based when known."""

    def __init__(self, problem: str, line: int | None = None) -> None:
        self.problem = problem
        self.line = line
        where = f"line {line}: " if line is not None else ""
        super().__init__(f"config.toml {where}{problem}")


def parse_containerd_version(s: str) -> tuple[int, int, int]:
    """(major, minor, patch) from ``1.6.20~ds1``, ``v2.1.3`` or a ``containerd --version`` line."""
    for token in s.split():
        match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?(?:$|[~+\-.])", token)
        if match:
            return int(match[1]), int(match[2]), int(match[3] or 0)
    raise ValueError(f"no containerd version (like 1.6.20 or v2.1.3) in {s!r}")


def preferred_config_version(containerd_version: str) -> int:
    """The config version containerd itself writes (``containerd config default``)."""
    major, minor, _ = parse_containerd_version(containerd_version)
    if major >= 2:
        return 3
    return 2 if minor >= 3 else 1  # version 2 files exist since 1.3


# --- parsing -----------------------------------------------------------------------------------


def _parse(text: str) -> tuple[dict[str, Any], tomlkit.TOMLDocument]:
    # containerd reads a file that starts with a UTF-8 byte order mark (go-toml skips it);
    # tomllib and tomlkit refuse it. Every text read here (a node's config.toml, its saved
    # original) may start with one; migrate_config also puts it back on its output.
    text = text.removeprefix(BOM)
    try:
        plain = tomllib.loads(text)
    except RecursionError:  # tomllib recurses per nested array/inline table
        raise ConfigParseError("invalid TOML: nested too deeply") from None
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        match = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(match[1]) if match else None
        if line is None and "end of document" in message:
            line = text.count("\n") + 1
        problem = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        raise ConfigParseError(f"invalid TOML: {problem}", line) from None
    try:
        document = tomlkit.parse(text)
    except RecursionError:
        raise ConfigParseError("invalid TOML: nested too deeply") from None
    except tomlkit.exceptions.ParseError as error:
        raise ConfigParseError(f"invalid TOML: {error}", error.line) from None
    return plain, document


def _version_line(text: str) -> int | None:
    for number, line in enumerate(text.splitlines(), start=1):
        if re.match(r"^\s*version\s*=", line):
            return number
    return None


def _file_version(plain: dict[str, Any], text: str) -> int:
    version = plain.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version not in REGISTRY_PATHS:
        raise ConfigParseError(
            f"unsupported config version {version!r} (expected 1, 2 or 3)", _version_line(text)
        )
    return version


def _lookup(plain: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = plain
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
