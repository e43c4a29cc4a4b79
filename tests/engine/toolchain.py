"""The Pulumi engine that scripts/testenv/setup-pulumi.sh builds, for tests that run the real CLI.

    from tests.engine.toolchain import require

    engine = require()
    engine.run(["version"], cwd=tmp_path)    # subprocess.CompletedProcess, never raises on exit

The setup step writes ``<cache>/pulumi/<cli version>-<recipe>/env`` (``<cache>`` is
``$REGISTRY_MIRRORS_TOOLCHAIN_CACHE``, default ``~/.cache/registry-mirrors``; ``<recipe>`` the
first 12 hex digits of the sha256 of setup-pulumi.sh), so this finds exactly the build of this
clone's recipe. Every command runs with that file's environment: the built ``pulumi`` first on
PATH, a private PULUMI_HOME, no plugin from PATH, no plugin download, no update check. A missing
CLI skips the test saying how to build it, or FAILS it under CI=true (tests/prereq.py).
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.prereq import missing

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "testenv" / "setup-pulumi.sh"
CACHE_ENV = "REGISTRY_MIRRORS_TOOLCHAIN_CACHE"
HOW = (
    "run `bash scripts/testenv/setup-pulumi.sh` (scripts/test.sh runs it): it builds the pulumi "
    "CLI from the Go module proxy"
)


def cache_root() -> Path:
    base = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache" / "registry-mirrors")
    return Path(base) / "pulumi"


def recipe() -> str:
    return hashlib.sha256(SETUP.read_bytes()).hexdigest()[:12]


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name.rsplit("-", 1)[0]))


def read_env_file(path: Path, base: Mapping[str, str]) -> dict[str, str]:
    """The KEY=VALUE lines of an env file over ``base``; ``$PATH`` in a value is base's PATH."""
    env = dict(base)
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {line!r}")
        env[key.strip()] = value.replace("$PATH", base.get("PATH", os.defpath))
    return env


@dataclass(frozen=True)
class Toolchain:
    directory: Path
    env: dict[str, str]

    @property
    def bin(self) -> Path:
        return self.directory / "bin"

    @property
    def pulumi(self) -> Path:
        return self.bin / "pulumi"

    @property
    def home(self) -> Path:
        return Path(self.env["PULUMI_HOME"])

    @property
    def cli_version(self) -> str:
        return self.env["PULUMI_CLI_VERSION"]

    def run(
        self,
        args: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """``pulumi ARGS`` in ``cwd`` with this toolchain's environment plus ``env``."""
        return subprocess.run(
            [str(self.pulumi), *args],
            cwd=cwd,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def find() -> Toolchain | None:
    """The newest CLI built with this clone's recipe, or None."""
    key = recipe()
    built = [
        env_file.parent
        for env_file in cache_root().glob(f"*-{key}/env")
        if (env_file.parent / "bin" / "pulumi").is_file()
    ]
    if not built:
        return None
    directory = max(built, key=lambda path: _version_key(path.name))
    return Toolchain(directory, read_env_file(directory / "env", os.environ))


def require() -> Toolchain:
    """The toolchain; skips (fails under CI=true) saying how to build it."""
    toolchain = find()
    if toolchain is None:
        missing(f"no Pulumi CLI built for recipe {recipe()} under {cache_root()}: {HOW}")
    assert toolchain is not None
    return toolchain
