"""The full engine, WITH provider plugins: run by hand, never by scripts/test.sh or CI.

The Go module proxy refuses the provider modules (pulumi-command, pulumi-docker, pulumi-proxmoxve;
README "Tests"), so no CI run can build them. Given binaries built elsewhere, this tier runs
the program's components through them:

    PULUMI_RESOURCE_COMMAND_BINARY=/path/pulumi-resource-command \\
    PULUMI_RESOURCE_DOCKER_BINARY=/path/pulumi-resource-docker \\
    PULUMI_RESOURCE_PROXMOXVE_BINARY=/path/pulumi-resource-proxmoxve \\
      .venv/bin/python -m pytest -m engine_plugins tests/engine_plugins

Nothing is installed under a version: the binaries are put on the CLI's PATH as ambient plugins
(``PULUMI_IGNORE_AMBIENT_PLUGINS`` off for this tier only), where the engine takes them whatever
their version and WARNS when it differs from the pip package's. The tests report that warning
(``plugin_versions``) instead of hiding it: docs/engine-proof.md says which versions ran.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.engine.toolchain import Toolchain, require
from tests.prereq import missing

# The VM tier's session fixtures: the guest booted from the program's cloud-init, cloud-init done.
from tests.vm.conftest import ready, tier  # noqa: F401

PLUGINS = ("command", "docker", "proxmoxve")


@dataclass(frozen=True)
class PluginEngine:
    engine: Toolchain
    bin: Path  # a directory holding pulumi-resource-<name> links
    binaries: dict[str, Path]

    @property
    def env(self) -> dict[str, str]:
        """For every command of this tier: the plugins on PATH, ambient plugins allowed."""
        return {
            "PATH": f"{self.bin}:{os.environ.get('PATH', os.defpath)}",
            "PULUMI_IGNORE_AMBIENT_PLUGINS": "false",
        }

    def version(self, name: str) -> str:
        """What the binary says it is (pulumi-resource-proxmoxve has -version; the others do not:
        their version is what the engine reports when it loads them)."""
        done = subprocess.run(
            [str(self.binaries[name]), "-version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.stdout.strip() if done.returncode == 0 else "(no -version flag)"


@pytest.fixture(scope="session")
def plugin_engine(tmp_path_factory: pytest.TempPathFactory) -> PluginEngine:
    engine = require()
    binaries: dict[str, Path] = {}
    for name in PLUGINS:
        variable = f"PULUMI_RESOURCE_{name.upper()}_BINARY"
        value = os.environ.get(variable)
        if not value or not Path(value).is_file():
            missing(f"{variable} is not set to a pulumi-resource-{name} binary (see conftest)")
        assert value is not None
        binaries[name] = Path(value).resolve()
    directory = tmp_path_factory.mktemp("plugins")
    for name, binary in binaries.items():
        (directory / f"pulumi-resource-{name}").symlink_to(binary)
    return PluginEngine(engine, directory, binaries)
