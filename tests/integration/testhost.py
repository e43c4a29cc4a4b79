"""A throw-away "cluster node" on this machine: a network namespace with sshd and a real containerd.

Layout (all under one tmp dir, nothing of the host's containerd is touched):
- netns ``rmt-<id>`` with one veth pair: the host side has ``10.231.X.1/30``, the node
  ``10.231.X.2/30``. No default route inside: an accidental pull from a real registry fails at once
  with "network is unreachable" instead of leaving the machine.
- ``sshd -D`` inside the netns under ``unshare --mount``, with bind mounts over ``/etc/containerd``,
  ``/run`` and ``/var/lib``: every process started over SSH (the node scripts, containerd) sees the
  node's own files at the real paths, so the scripts run with their production defaults.
- containerd is started and restarted by a helper script (the node's ``restart_command``) that
  kills the previous daemon by pid file: there is no systemd here.
- The containerd socket is reachable from the host at ``host.containerd_socket`` (same inode as
  ``/run/containerd/containerd.sock`` in the node), so a CRI client on the host drives the node's
  daemon while the pulls themselves happen inside the netns.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.integration.containerd_proc import CRI_PLUGIN, parse_plugins_ls


class Step(Protocol):
    """components.renderers.node_steps.Step: what pulumi-command would send."""

    @property
    def command(self) -> str: ...

    @property
    def stdin(self) -> str: ...


_RESTART_HELPER = """#!/usr/bin/env bash
# The test node's "systemctl restart containerd": stop the daemon by pid file, start a new one.
set -euo pipefail
pidfile={pidfile}
if [[ -f $pidfile ]]; then
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
  fi
fi
# Output to the log file: the caller captures our stdout and would wait for the daemon's end.
setsid containerd -c /etc/containerd/config.toml >>{log} 2>&1 </dev/null &
echo $! >"$pidfile"
"""


@dataclass
class NodeHost:
    netns: str
    host_address: str
    node_address: str
    root: Path
    key: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def etc_containerd(self) -> Path:
        return self.root / "node" / "etc-containerd"

    @property
    def config_file(self) -> Path:
        """The node's /etc/containerd/config.toml as seen from the host."""
        return self.etc_containerd / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "node" / "run" / "containerd" / "containerd.sock"

    @property
    def containerd_log(self) -> Path:
        return self.root / "containerd.log"

    @property
    def restart_command(self) -> str:
        return str(self.root / "restart-containerd")

    @property
    def containerd_pid(self) -> int | None:
        path = self.root / "containerd.pid"
        return int(path.read_text()) if path.exists() else None

    def ssh(
        self,
        command: str,
        stdin: str = "",
        address: str | None = None,
        port: int = 22,
        timeout: float = 90,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as the remote login shell's command, like pulumi-command does."""
        return ssh_run(
            self.key,
            f"root@{address or self.node_address}",
            command,
            stdin,
            port=port,
            known_hosts=self.root / "known_hosts",
            timeout=timeout,
        )

    def run_step(
        self, step: Step, address: str | None = None, port: int = 22
    ) -> subprocess.CompletedProcess[str]:
        return self.ssh(step.command, step.stdin, address=address, port=port)

    def cri_status(self) -> str:
        result = subprocess.run(
            ["ctr", "--address", str(self.containerd_socket), "plugins", "ls"],
            capture_output=True,
            text=True,
            check=False,
        )
        # "absent" also while the daemon restarts (ctr cannot connect).
        return parse_plugins_ls(result.stdout).get(CRI_PLUGIN, "absent")

    def start_containerd(self, config_text: str, timeout: float = 15) -> None:
        self.config_file.write_text(config_text)
        result = self.ssh(self.restart_command)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cri_status() in ("ok", "error"):
                return
            time.sleep(0.1)
        raise AssertionError(f"containerd did not start: {self.containerd_log.read_text()[-2000:]}")


def ssh_run(
    key: Path,
    destination: str,
    command: str,
    stdin: str = "",
    *,
    port: int = 22,
    known_hosts: Path | None = None,
    timeout: float = 90,
) -> subprocess.CompletedProcess[str]:
    """``command`` as the remote login shell's command with ``stdin``: what pulumi-command does
    with a Command's ``create`` and ``stdin``. Host keys of test hosts are not pinned."""
    return subprocess.run(
        [
            "ssh", "-i", str(key),
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", f"UserKnownHostsFile={known_hosts or '/dev/null'}",
            "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR",
            "-p", str(port),
            destination,
            command,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def _wait_for_port(address: str, port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on {address}:{port} after {timeout}s")


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def node_host(tmp_path: Path) -> Iterator[NodeHost]:
    """Create the node; tear everything down (processes by pid, netns, veth) even on failure."""
    token = secrets.token_hex(3)
    netns = f"rmt-{token}"
    third = int(token[:2], 16)
    fourth = (int(token[2:4], 16) % 64) * 4
    host_address, node_address = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
    host_if, node_if = f"rmh{token}", f"rmn{token}"
    root = tmp_path / "node-host"
    for sub in ("etc-containerd", "run/sshd", "var-lib"):
        (root / "node" / sub).mkdir(parents=True)
    (root / "node" / "etc-containerd" / "cni").mkdir()
    key = root / "id_ed25519"
    _run(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "registry-mirrors-test", "-f", str(key)
    )
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "ssh_host_ed25519_key"))
    (root / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (root / "sshd_config").write_text(
        "\n".join(
            [
                f"ListenAddress {node_address}",
                "Port 22",
                f"HostKey {root / 'ssh_host_ed25519_key'}",
                f"AuthorizedKeysFile {root / 'authorized_keys'}",
                f"PidFile {root / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                # tmp_path's parents are not root-owned 0755 everywhere.
                "StrictModes no",
                "",
            ]
        )
    )
    helper = root / "restart-containerd"
    helper.write_text(
        _RESTART_HELPER.format(
            pidfile=shlex.quote(str(root / "containerd.pid")),
            log=shlex.quote(str(root / "containerd.log")),
        )
    )
    helper.chmod(0o755)

    host = NodeHost(netns, host_address, node_address, root, key)
    created_netns = False
    try:
        _run("ip", "netns", "add", netns)
        created_netns = True
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if)
        _run("ip", "link", "set", node_if, "netns", netns)
        _run("ip", "addr", "add", f"{host_address}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "-n", netns, "addr", "add", f"{node_address}/30", "dev", node_if)
        _run("ip", "-n", netns, "link", "set", node_if, "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        mounts = " && ".join(
            f"mount --bind {shlex.quote(str(root / 'node' / src))} {dst}"
            for src, dst in (
                ("etc-containerd", "/etc/containerd"),
                ("run", "/run"),
                ("var-lib", "/var/lib"),
            )
        )
        sshd_config = shlex.quote(str(root / "sshd_config"))
        sshd = subprocess.Popen(
            [
                "ip", "netns", "exec", netns,
                "unshare", "--mount", "--propagation", "private",
                "bash", "-c", f"{mounts} && exec /usr/sbin/sshd -D -e -f {sshd_config}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(root / "sshd.log").open("wb"),
        )  # fmt: skip
        host.processes.append(sshd)
        _wait_for_port(node_address, 22)
        yield host
    finally:
        if host.containerd_pid is not None:
            _kill(host.containerd_pid)
        for process in host.processes:
            _kill(process.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=5)
        if created_netns:
            # Whatever still runs in the node (a containerd a restart started while we were
            # interrupted, a session's children): by pid, from the netns's own list.
            for _ in range(3):
                listed = subprocess.run(
                    ["ip", "netns", "pids", netns], check=False, capture_output=True, text=True
                ).stdout.split()
                if not listed:
                    break
                for pid in listed:
                    _kill(int(pid))
            # Deleting the netns destroys the node end of the veth, and with it the host end.
            subprocess.run(["ip", "netns", "delete", netns], check=False, capture_output=True)
            subprocess.run(["ip", "link", "delete", host_if], check=False, capture_output=True)
