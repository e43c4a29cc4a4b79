"""A throw-away "cluster node" on this machine: a network namespace with sshd and a real containerd.

Layout (all under one tmp dir, nothing of the host's containerd is touched):
- netns ``rmt-<id>`` with one veth pair: the host side has ``10.231.X.1/30``, the node
  ``10.231.X.2/30``. No default route inside: an accidental pull from a real registry fails at once
  with "network is unreachable" instead of leaving the machine.
- ``sshd -D`` inside the netns under ``unshare --mount``, with bind mounts over ``/etc/containerd``,
  ``/run``, ``/var/lib`` and ``/opt``: every process started over SSH (the node scripts,
  containerd) sees the node's own files at the real paths, so the scripts run with their
  production defaults.
- containerd is started and restarted by a helper script (the node's ``restart_command``) that
  kills the previous daemon by pid file: there is no systemd here.
- The node runs one containerd version of tests/integration/containerd_versions.py: sshd gives
  every session a PATH with that version's bin dir first (``SetEnv``), so ``containerd --version``
  in probe.sh reports it and the node scripts use its ``containerd`` and ``ctr``, as on a node
  where that version is installed.
- The node's ``/run`` is a directory of the node's own, bind-mounted inside the sshd's mount
  namespace: 1.7+ always create ``/run/containerd`` and 2.x serves NRI at
  ``/var/run/nri/nri.sock`` (``/var/run`` is ``/run``), both land there, never in the host's.
  (A directory rather than a tmpfs: the host reaches the node's socket through it.)
- The containerd socket is reachable from the host at ``host.containerd_socket`` (a link in a
  short /tmp dir: a unix socket path must fit in 108 bytes; it resolves to the same inode as
  ``/run/containerd/containerd.sock`` in the node), so a CRI client on the host drives the node's
  daemon while the pulls themselves happen inside the netns.
- ``flavour`` k3s-server/k3s-agent/rke2-server/rke2-agent: the node also gets the unit files, the
  enabled symlink, ``/etc/rancher/<dist>`` (its ``/etc`` is an overlay over the host's) and the
  distribution's bin dir, and its ``restart_command`` is a TEST STAND-IN for the k3s service
  (tests/integration/k3s_standin.py) that runs the chosen containerd the way k3s does.
- An ssh-agent holding the node's key (``agent_socket``): the program's SSH story, for reading the
  node exactly as the program does (components/fleet.py).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from components.ssh_client import ssh_client_options
from tests.integration.containerd_proc import CRI_PLUGIN, parse_plugins_ls
from tests.integration.containerd_versions import V1_6, ContainerdVersion

STANDIN = Path(__file__).resolve().parent / "k3s_standin.py"
# Flavour -> (distribution, its unit, the units its installer puts on disk). RKE2 installs both
# units and the person enables one: the probe must go by the enabled symlink.
DISTRIBUTIONS = {
    "k3s-server": ("k3s", "k3s", ("k3s",)),
    "k3s-agent": ("k3s", "k3s-agent", ("k3s-agent",)),
    "rke2-server": ("rke2", "rke2-server", ("rke2-server", "rke2-agent")),
    "rke2-agent": ("rke2", "rke2-agent", ("rke2-server", "rke2-agent")),
}


class Step(Protocol):
    """components.plan.node_steps.Step: what pulumi-command would send."""

    @property
    def command(self) -> str: ...

    @property
    def stdin(self) -> str: ...


# Root's authorized_keys on a node with ``private_system`` (inside the node's /var/lib).
ROOT_KEYS_NAME = "registry-mirrors-test-root-keys"
# sshd's default PATH for root sessions (what a node's scripts would otherwise get).
# sshd listens on 22 and on this one: a node with nodes[].sshPort set (ssh looks its host key up
# as [address]:port there).
OTHER_SSH_PORT = 2200
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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
    containerd: ContainerdVersion
    # A short dir in /tmp for unix sockets (108-byte limit; tmp_path is longer): the ssh
    # connection-sharing sockets and a link to the node's containerd socket.
    socket_dir: Path
    share_ssh: bool = True
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    flavour: str = "containerd"
    sshd: subprocess.Popen[bytes] | None = None

    def stop_sshd(self) -> None:
        """The node is down as the program sees it: nothing answers on its SSH ports (the
        listening sshd is stopped, by its pid; containerd keeps running)."""
        assert self.sshd is not None
        _kill(self.sshd.pid)
        self.sshd.wait(timeout=5)

    # --- k3s/RKE2 flavours: the node's /etc is an overlay whose upper dir is etc_upper ---------

    @property
    def dist(self) -> str:
        return DISTRIBUTIONS[self.flavour][0]

    @property
    def etc_upper(self) -> Path:
        return self.root / "node" / "etc-upper"

    @property
    def registries_file(self) -> Path:
        """The node's /etc/rancher/<dist>/registries.yaml as seen from the host."""
        return self.etc_upper / "rancher" / self.dist / "registries.yaml"

    @property
    def agent_dir(self) -> Path:
        return self.root / "node" / "var-lib" / "rancher" / self.dist / "agent"

    @property
    def generated_hosts_dir(self) -> Path:
        return self.agent_dir / "etc" / "containerd" / "certs.d"

    @property
    def service_log(self) -> Path:
        """The stand-in's own log (k3s's journal)."""
        return self.root / "service.log"

    @property
    def cri_socket(self) -> Path:
        """The socket the node's CRI is served on, reachable from the host (a short link)."""
        if self.flavour == "containerd":
            return self.containerd_socket
        return self.socket_dir / "k3s-containerd.sock"

    @property
    def etc_containerd(self) -> Path:
        return self.root / "node" / "etc-containerd"

    @property
    def config_file(self) -> Path:
        """The node's /etc/containerd/config.toml as seen from the host."""
        return self.etc_containerd / "config.toml"

    @property
    def containerd_socket(self) -> Path:
        """The node's /run/containerd/containerd.sock, reachable from the host (a short link)."""
        return self.socket_dir / "containerd.sock"

    @property
    def containerd_log(self) -> Path:
        return self.root / "containerd.log"

    @property
    def restart_command(self) -> str:
        return str(self.root / "restart-containerd")

    @property
    def host_public_key(self) -> str:
        """The node's SSH host key, as ``nodes[].sshHostPublicKey`` pins it."""
        return " ".join((self.root / "ssh_host_ed25519_key.pub").read_text().split()[:2])

    def regenerate_host_key(self) -> None:
        """A reinstalled node (or a host impersonating it): a new host key, and sshd reloaded
        with it (SIGHUP: sshd re-executes and reads its host keys again)."""
        key = self.root / "ssh_host_ed25519_key"
        for path in (key, key.with_name(f"{key.name}.pub")):
            path.unlink()
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key))
        sshd = self.processes[0]  # exec'd through ip netns exec, unshare and bash: sshd's pid
        os.kill(sshd.pid, signal.SIGHUP)
        # Until the node presents the new key (the old listener may answer for a moment).
        new = self.host_public_key
        deadline = time.monotonic() + 15
        scanned = None
        while time.monotonic() < deadline:
            scanned = subprocess.run(
                ["ssh-keyscan", "-T", "2", "-t", "ed25519", self.node_address],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if new.split()[1] in scanned.stdout:
                return
            time.sleep(0.1)
        raise AssertionError(f"sshd did not present its new host key: {scanned!r}")

    @property
    def agent_socket(self) -> str:
        """An ssh-agent holding the node's login key: the program's SSH story."""
        return str(self.socket_dir / "agent.sock")

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
        merge_stderr: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` as the remote login shell's command, like pulumi-command does.
        ``merge_stderr``: stdout and stderr in one stream, in the order they arrive (what
        pulumi-command prints after a failed command)."""
        # With share_ssh: one connection per node, a new session per command. A fresh
        # connection costs ~0.5-1 s of key exchange on a loaded 2-core machine, times every step
        # of every test; each step still runs as its own session, as pulumi-command runs it.
        # Benchmarks turn it off: pulumi-command pays a connection per step.
        sharing = (
            ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.socket_dir}/ssh-%C",
             "-o", "ControlPersist=300"]
            if self.share_ssh else []
        )  # fmt: skip
        # Verified as the program's connections are: the node's own host key, pinned.
        return ssh_run(
            self.key,
            f"root@{address or self.node_address}",
            command,
            stdin,
            port=port,
            host_key=self.host_public_key,
            extra_options=sharing,
            timeout=timeout,
            merge_stderr=merge_stderr,
        )

    def run_step(
        self, step: Step, address: str | None = None, port: int = 22
    ) -> subprocess.CompletedProcess[str]:
        return self.ssh(step.command, step.stdin, address=address, port=port)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The node's version of ``ctr``, run on the host against the node's socket."""
        return subprocess.run(
            [self.containerd.binary("ctr"), "--address", str(self.cri_socket), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def cri_status(self) -> str:
        # "absent" also while the daemon restarts (ctr cannot connect).
        return parse_plugins_ls(self.ctr("plugins", "ls").stdout).get(CRI_PLUGIN, "absent")

    def start_containerd(self, config_text: str, timeout: float = 15) -> None:
        self.config_file.write_text(config_text)
        result = self.ssh(self.restart_command)
        assert result.returncode == 0, result.stderr
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cri_status() in ("ok", "error"):
                return
            time.sleep(0.1)
        plugins = self.ctr("plugins", "ls")
        raise AssertionError(
            f"containerd's CRI plugin did not come up: ctr: {plugins.stdout[-500:]}"
            f"{plugins.stderr[-500:]}\n--- log:\n{self.containerd_log.read_text()[-2000:]}"
        )


def ssh_run(
    key: Path,
    destination: str,
    command: str,
    stdin: str = "",
    *,
    port: int = 22,
    host_key: str | None = None,
    extra_options: list[str] | None = None,
    timeout: float = 90,
    merge_stderr: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``command`` as the remote login shell's command with ``stdin``: what pulumi-command does
    with a Command's ``create`` and ``stdin``. With ``host_key``, the host must present exactly
    that key (the program's pinning options, components/ssh_client.py); without, it is not
    checked (only before a test knows the key)."""
    address = destination.rpartition("@")[2]
    checking = (
        ssh_client_options(address, host_key, port)
        if host_key
        else ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    )
    return subprocess.run(
        [
            "ssh", "-i", str(key),
            "-o", "ConnectTimeout=5",
            *checking,
            "-o", "LogLevel=ERROR",
            *(extra_options or []),
            "-p", str(port),
            destination,
            command,
        ],
        input=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
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


def _running(pid: int) -> bool:
    """True while ``pid`` runs. A zombie has finished: kill(pid, 0) still succeeds on it until its
    parent reaps it (sshd is our own child; a daemon the restart helper left is init's)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not _running(pid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_DISTRIBUTION_BINARY = """#!/usr/bin/env bash
# TEST STAND-IN for /usr/local/bin/{dist} (see tests/integration/k3s_standin.py).
if [[ ${{1:-}} == --version ]]; then
  echo "{dist} version v0.0.0+test-standin (TEST STAND-IN)"
  exit 0
fi
command=${{1:-restart}}
(($#)) && shift
exec {python} {standin} "$command" --dist {dist} --containerd {containerd} \\
  --log {log} --pidfile {pidfile} --role {role} --member {member} --cluster {cluster} \\
  --events {events} -- "$@"
"""
# The multicall links k3s puts in its bin dir (kubectl, like ctr and containerd, is k3s itself).
_KUBECTL_LINK = """#!/usr/bin/env bash
exec {binary} kubectl "$@"
"""


def _install_distribution(
    root: Path, flavour: str, containerd: str, cluster: Path | None, events: Path | None
) -> Path:
    """The files a k3s/RKE2 installer leaves where the probe looks (``containerd``: the path of
    the containerd it embeds); returns the restart command. ``cluster``: the directory whose
    servers form one etcd cluster (the stand-in's quorum); ``events``: where restarts are logged."""
    dist, unit, units = DISTRIBUTIONS[flavour]
    binary = root / "bin" / dist
    binary.parent.mkdir(parents=True, exist_ok=True)
    member = root.parent.name
    binary.write_text(
        _DISTRIBUTION_BINARY.format(
            dist=dist,
            python=shlex.quote(sys.executable),
            standin=shlex.quote(str(STANDIN)),
            containerd=shlex.quote(containerd),
            log=shlex.quote(str(root / "service.log")),
            pidfile=shlex.quote(str(root / "containerd.pid")),
            role="agent" if unit.endswith("agent") else "server",
            member=shlex.quote(member),
            cluster=shlex.quote(str(cluster or "")),
            events=shlex.quote(str(events or "")),
        )
    )
    if cluster is not None and not unit.endswith("agent"):
        (cluster / f"{member}.member").write_text(f"{root / 'containerd.pid'}\n")
    binary.chmod(0o755)
    systemd = root / "node" / "etc-upper" / "systemd" / "system"
    (systemd / "multi-user.target.wants").mkdir(parents=True)
    for name in units:
        role = "agent" if name.endswith("agent") else "server"
        (systemd / f"{name}.service").write_text(
            f"[Unit]\nDescription=TEST STAND-IN for {name}\n\n[Service]\nType=notify\n"
            f"ExecStart={binary} \\\n    {role}\n\n[Install]\nWantedBy=multi-user.target\n"
        )
    (systemd / "multi-user.target.wants" / f"{unit}.service").symlink_to(f"../{unit}.service")
    (root / "node" / "etc-upper" / "rancher" / dist).mkdir(parents=True)
    # Where the distribution keeps its own containerd and ctr.
    bin_dir = root / "node" / "var-lib" / "rancher" / dist
    bin_dir = bin_dir / "data" / "current" / "bin" if dist == "k3s" else bin_dir / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "containerd").symlink_to(containerd)
    (bin_dir / "ctr").symlink_to(Path(containerd).parent / "ctr")
    (bin_dir / "kubectl").write_text(_KUBECTL_LINK.format(binary=shlex.quote(str(binary))))
    (bin_dir / "kubectl").chmod(0o755)
    return binary


@contextlib.contextmanager
def node_host(
    tmp_path: Path,
    containerd: ContainerdVersion = V1_6,
    *,
    flavour: str = "containerd",
    share_ssh: bool = True,
    cluster: Path | None = None,
    events: Path | None = None,
    etc_overlay: bool = False,
    private_system: bool = False,
) -> Iterator[NodeHost]:
    """Create a node running ``containerd``; tear everything down (processes by pid, netns,
    veth) even on failure. ``share_ssh=False``: a new SSH connection per command.

    ``flavour`` k3s-server/k3s-agent/rke2-server/rke2-agent: the node is laid out like one (see
    the module docstring); no containerd runs until the test starts one. ``cluster``/``events``:
    see k3s_standin.py (the servers of one etcd cluster; the restarts' log). ``etc_overlay``: a
    plain containerd node's /etc is an overlay too (files a test puts in ``etc_upper``, e.g.
    /etc/docker/certs.d, never land in the host's /etc).

    ``private_system``: the node may get users, sudo rules and files in /usr/local (the read
    identity, README "The read identity"): its ``/etc`` and ``/usr/local`` are overlays whose
    changes land in ``etc-upper`` and ``usr-local-upper`` (useradd, visudo and sudo run on
    the node's own files, never the host's), and sshd checks file modes as a production sshd
    does (``StrictModes yes``; root's own key then lives in the node's /var/lib)."""
    bin_dir = containerd.require()
    token = secrets.token_hex(3)
    netns = f"rmt-{token}"
    third = int(token[:2], 16)
    fourth = (int(token[2:4], 16) % 64) * 4
    host_address, node_address = f"10.231.{third}.{fourth + 1}", f"10.231.{third}.{fourth + 2}"
    host_if, node_if = f"rmh{token}", f"rmn{token}"
    root = tmp_path / "node-host"
    for sub in ("etc-containerd", "run/sshd", "var-lib", "opt"):
        (root / "node" / sub).mkdir(parents=True)
    (root / "node" / "etc-containerd" / "cni").mkdir()
    key = root / "id_ed25519"
    _run(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "registry-mirrors-test", "-f", str(key)
    )
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "ssh_host_ed25519_key"))
    (root / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    if private_system:
        # Inside the node: /var/lib is node/var-lib (0755 root), under / and /var: a path sshd's
        # StrictModes accepts. tmp_path's parents are not root-owned 0755 everywhere.
        (root / "node" / "var-lib" / ROOT_KEYS_NAME).write_text(Path(f"{key}.pub").read_text())
        root_keys, strict = f"/var/lib/{ROOT_KEYS_NAME}", "yes"
    else:
        root_keys, strict = str(root / "authorized_keys"), "no"
    (root / "sshd_config").write_text(
        "\n".join(
            [
                f"ListenAddress {node_address}",
                "Port 22",
                f"Port {OTHER_SSH_PORT}",
                f"HostKey {root / 'ssh_host_ed25519_key'}",
                # Every other user (the read identity): its own file, as sshd's default.
                "AuthorizedKeysFile .ssh/authorized_keys",
                f"PidFile {root / 'sshd.pid'}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                f"StrictModes {strict}",
                # The node's containerd version: its bin dir first (sshd's own default PATH after).
                f'SetEnv "PATH={bin_dir}:{NODE_PATH}"',
                # The test's key logs in as root only (Match last: it runs to the end).
                "Match User root",
                f"  AuthorizedKeysFile {root_keys}",
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
    if flavour != "containerd":
        binary = _install_distribution(
            root, flavour, containerd.binary("containerd"), cluster, events
        )
        helper.write_text(f"#!/usr/bin/env bash\nexec {shlex.quote(str(binary))} restart\n")

    socket_dir = Path(tempfile.mkdtemp(prefix="rmnode-", dir="/tmp"))
    (socket_dir / "containerd.sock").symlink_to(
        root / "node" / "run" / "containerd" / "containerd.sock"
    )
    (socket_dir / "k3s-containerd.sock").symlink_to(
        root / "node" / "run" / "k3s" / "containerd" / "containerd.sock"
    )
    host = NodeHost(
        netns, host_address, node_address, root, key, containerd, socket_dir, share_ssh,
        flavour=flavour,
    )  # fmt: skip
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
                # containerd's opt plugin creates /opt/containerd/{bin,lib} at start.
                ("opt", "/opt"),
            )
        )
        overlays = []
        if flavour != "containerd" or etc_overlay or private_system:
            # /etc/rancher does not exist on the host and must not be created there (nor users
            # and sudo rules): the node's /etc is an overlay whose changes land in etc-upper.
            overlays.append(("etc", "/etc"))
        if private_system:
            overlays.append(("usr-local", "/usr/local"))
        for name, target in overlays:
            (root / "node" / f"{name}-upper").mkdir(exist_ok=True)
            (root / "node" / f"{name}-work").mkdir()
            overlay = (
                f"lowerdir={target},upperdir={root / 'node' / f'{name}-upper'},"
                f"workdir={root / 'node' / f'{name}-work'}"
            )
            mounts = f"mount -t overlay overlay -o {shlex.quote(overlay)} {target} && {mounts}"
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
        host.sshd = sshd
        agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", host.agent_socket],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        host.processes.append(agent)
        # The socket file appears before the agent listens: retry ssh-add until it answers.
        added = None
        for _ in range(250):
            added = subprocess.run(
                ["ssh-add", "-q", str(key)],
                env={**os.environ, "SSH_AUTH_SOCK": host.agent_socket},
                check=False,
                capture_output=True,
            )
            if added.returncode == 0:
                break
            time.sleep(0.02)
        else:
            reason = added.stderr if added is not None else ""
            raise AssertionError(f"ssh-agent did not take the node's key: {reason!r}")
        _wait_for_port(node_address, 22)
        yield host
    finally:
        for control in socket_dir.glob("ssh-*"):
            # The shared connection's master (ours, on the host side): by its socket.
            subprocess.run(
                ["ssh", "-o", f"ControlPath={control}", "-O", "exit", "node"],
                check=False, capture_output=True, timeout=10,
            )  # fmt: skip
        shutil.rmtree(socket_dir, ignore_errors=True)
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
