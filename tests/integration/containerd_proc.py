"""A throwaway containerd daemon for tests: the real consumer of a config.toml.

    handle = start_containerd(tmp_path, config_text, netns="ctdtest-1234")
    try:
        assert handle.plugins_status()["io.containerd.grpc.v1.cri"] == "ok", handle.log
    finally:
        handle.stop()

Why a daemon and not ``containerd config dump``: dump catches TOML syntax and type errors but
NOT the mirrors/config_path conflict -- with that the daemon keeps running and only the CRI
plugin is skipped (``ctr plugins ls`` shows ``error``). So "containerd started" proves nothing;
the cri plugin's status does.

The config is the product's text plus test-only overrides applied to a parsed copy: its own
root, state, grpc/ttrpc address, opt dir, no metrics/debug listener, and a CNI conf_dir that
exists. Run it in a network namespace (``netns``) so an accidental pull cannot leave the host.

Any version of the table in tests/integration/containerd_versions.py (``containerd=``): its own
``containerd`` and ``ctr``. The daemon runs in a mount namespace of its own with a private tmpfs
on ``/run``: 1.7+ always create ``/run/containerd`` whatever ``state`` says, and 2.x turns NRI on
at ``/var/run/nri/nri.sock``; without it a test daemon would write into the host's /run.
Needs root (and ``ip`` when ``netns`` is given).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from tests.integration.containerd_versions import V1_6, ContainerdVersion

CRI_PLUGIN = "io.containerd.grpc.v1.cri"

# Where the CRI plugin's CNI settings live, by config version (v3 split CRI into runtime/images).
_CNI_PATHS = {
    1: ("plugins", "cri", "cni"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "cni"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "cni"),
}
# containerd 2.x reads CNI settings from the v3 runtime plugin. A version 1 file's `plugins.cri.cni`
# never gets there (2.x renames v1 plugins but skips their v2 -> v3 migration), and the CRI plugin
# then creates its default conf_dir /etc/cni/net.d on the host: name the test's dir there too.
_CNI_V3 = _CNI_PATHS[3]
_OPT_PATHS = {
    1: ("plugins", "opt"),
    2: ("plugins", "io.containerd.internal.v1.opt"),
    3: ("plugins", "io.containerd.internal.v1.opt"),
}


def parse_plugins_ls(stdout: str) -> dict[str, str]:
    """``ctr plugins ls`` output as {"<type>.<id>": status}, e.g. {CRI_PLUGIN: "ok"}."""
    status: dict[str, str] = {}
    for line in stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4:
            status[f"{fields[0]}.{fields[1]}"] = fields[-1]
    return status


def _table(data: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    for part in path:
        data = data.setdefault(part, {})
    return data


def test_overrides(config_text: str, base: Path, address: str) -> str:
    """The product's config with everything that would touch the host moved under ``base``.

    The test's own keys only: the product's text is never edited (tomllib + tomlkit round trip of
    a copy)."""
    data = tomllib.loads(config_text)
    version = data.get("version", 1)
    data["root"] = str(base / "root")
    data["state"] = str(base / "state")
    _table(data, ("grpc",))["address"] = address
    _table(data, ("ttrpc",))["address"] = address + ".ttrpc"
    _table(data, ("debug",))["address"] = ""
    _table(data, ("metrics",))["address"] = ""
    cni = base / "cni"
    (cni / "net.d").mkdir(parents=True, exist_ok=True)
    _table(data, _CNI_PATHS.get(version, _CNI_PATHS[2]))["conf_dir"] = str(cni / "net.d")
    if version == 1:
        # A dotted plugin name is taken as it is in a v1 file (1.x: an unknown plugin, ignored).
        _table(data, _CNI_V3)["conf_dir"] = str(cni / "net.d")
    _table(data, _OPT_PATHS.get(version, _OPT_PATHS[2]))["path"] = str(base / "opt")
    return tomlkit.dumps(data)


@dataclass
class ContainerdProcess:
    """A running throwaway containerd. ``address`` is its gRPC socket."""

    address: str
    pid: int
    config_file: Path
    log_file: Path
    containerd: ContainerdVersion
    _process: subprocess.Popen[bytes] = field(repr=False)
    _socket_dir: Path = field(repr=False)

    @property
    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def ctr(self, *args: str, timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.containerd.binary("ctr"), "--address", self.address, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def plugins_status(self) -> dict[str, str]:
        """``ctr plugins ls`` as {"<type>.<id>": status}, e.g. {CRI_PLUGIN: "ok"}."""
        done = self.ctr("plugins", "ls")
        if done.returncode != 0:
            raise RuntimeError(
                f"ctr plugins ls failed: {done.stderr}\n--- containerd log:\n{self.log}"
            )
        return parse_plugins_ls(done.stdout)

    def plugin_errors(self) -> str:
        """``ctr plugins ls --detailed``: every plugin's init error, as containerd words it."""
        return self.ctr("plugins", "ls", "--detailed").stdout

    def deprecations(self) -> list[str]:
        """IDs ``ctr deprecations list`` names (1.7+), e.g. ``.../cri-registry-mirrors``."""
        done = self.ctr("deprecations", "list")
        if done.returncode != 0:
            raise RuntimeError(f"ctr deprecations list failed: {done.stderr}")
        return [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()]

    def stop(self) -> None:
        """Terminate by pid (TERM, then KILL after 5 s); idempotent."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=5)
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def private_run(command: list[str]) -> list[str]:
    """``command`` in a mount namespace of its own with an empty tmpfs on /run (same pid)."""
    return [
        "unshare", "--mount", "--propagation", "private",
        "sh", "-c", 'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$@"', "private-run",
        *command,
    ]  # fmt: skip


def start_containerd(
    tmp_path: Path,
    config_text: str,
    netns: str | None = None,
    *,
    containerd: ContainerdVersion = V1_6,
    timeout: float = 10.0,
) -> ContainerdProcess:
    """Start ``containerd`` (a version of the table) with ``config_text`` (+ test overrides) and
    wait until it answers.

    Raises RuntimeError (with the daemon's log) if it exits or does not answer in ``timeout``.
    """
    base = tmp_path / "containerd"
    base.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to 108 bytes: keep the socket in a short /tmp dir.
    socket_dir = Path(tempfile.mkdtemp(prefix="ctd-", dir="/tmp"))
    address = str(socket_dir / "containerd.sock")
    config_file = base / "config.toml"
    config_file.write_text(test_overrides(config_text, base, address))
    log_file = base / "containerd.log"
    command = private_run([containerd.binary("containerd"), "--config", str(config_file)])
    if netns is not None:
        command = ["ip", "netns", "exec", netns, *command]  # ip execs: same pid
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    handle = ContainerdProcess(
        address, process.pid, config_file, log_file, containerd, process, socket_dir
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            handle.stop()
            raise RuntimeError(f"containerd exited with {process.returncode}:\n{handle.log}")
        # The socket appears only after every plugin was loaded (or failed): statuses are final.
        if os.path.exists(address) and handle.ctr("version", timeout=2).returncode == 0:
            return handle
        time.sleep(0.05)
    handle.stop()
    raise RuntimeError(f"containerd did not answer within {timeout} s:\n{handle.log}")


def config_dump(
    config_text: str, tmp_path: Path, containerd: ContainerdVersion = V1_6
) -> subprocess.CompletedProcess[str]:
    """``containerd -c FILE config dump``: catches TOML syntax/type errors (not conflicts)."""
    path = tmp_path / "dump-config.toml"
    path.write_text(config_text)
    return subprocess.run(
        [containerd.binary("containerd"), "-c", str(path), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
