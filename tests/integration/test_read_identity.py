"""The read identity over real SSH (README "The read identity"), against test nodes with a private
/etc and /usr/local (testhost ``private_system``): useradd, visudo and sudo run for real on the
node's own files, and its sshd checks file modes as a production sshd (``StrictModes yes``).

- Installed by the apply identity (the plan's own ``read-access`` step), the read key reads every
  node as the program needs: the planner plans exactly what it plans from the apply identity's
  read, with only the read key in the agent and with both; on containerd 1.6 and 2.1 (the probe
  runs with the PATH the apply identity's steps had: the control takes it away), and on k3s and
  RKE2 nodes.
- Everything else the read key tries is refused: other commands, injections, a shell, a pty,
  scp and sftp, TCP and unix-socket forwarding (the containerd socket), agent forwarding, `sudo`
  of anything else, writing the installed scripts, its sudo rule or its own key. Each refusal
  that depends on sshd or sudo has its control (the same attempt with what lets it through).
- The apply key still does the full rollout; a read access installed for other parameters or
  with older scripts is told apart; removing it leaves nothing; ``scripts/verify.py --nodes``
  works with the read key alone.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.fleet import FleetReadError, NodeRead, ReadMode, plan_fleet, run_read, ssh_runner
from components.plan import read_access
from components.plan.node_plan import AnyPlan, step_to_send
from components.plan.node_steps import check_step, verify_step
from components.renderers.flavours import FLAVOURS
from components.renderers.read_access import FORCED_COMMAND, GATE, INSTALL_DIR, authorized_keys
from components.settings import DEFAULT_READ_USER, Node, Settings, load_settings
from components.ssh_client import run_on_node, ssh_client_options
from components.verify.nodes import node_report
from tests.integration import test_node_e2e as e2e
from tests.integration.containerd_versions import V1_6, V2_1, ContainerdVersion
from tests.integration.test_k3s_e2e import k3s_world
from tests.integration.test_node_e2e import (
    ANY_NODE,
    World,
    make_settings,
    registry_vm,
    run_verify_nodes,
    start_config,
)
from tests.integration.testhost import NodeHost, node_host, ssh_run
from tests.prereq import require_binary, require_root

pytestmark = pytest.mark.integration

# The e2e world (a node, its upstreams and caches), here with a private /etc and /usr/local.
upstream_storage = e2e.upstream_storage
node_start = e2e.node_start
world = e2e.world

READ_USER = DEFAULT_READ_USER
HOME = f"/var/lib/{READ_USER}"


def _prerequisites() -> None:
    require_root()
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "ssh-agent", "sudo", "visudo"):
        require_binary(binary)


@pytest.fixture
def private_system() -> bool:
    """The e2e world's node gets users and sudo rules on its own files (test_node_e2e)."""
    return True


# --- keys and agents ---------------------------------------------------------------------------


@contextlib.contextmanager
def agent(path: Path, *keys: Path) -> Iterator[str]:
    """An ssh-agent holding ``keys`` at ``path``; stopped by its pid."""
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for key in keys:
            added = None
            for _ in range(250):
                added = subprocess.run(
                    ["ssh-add", "-q", str(key)],
                    env={**os.environ, "SSH_AUTH_SOCK": str(path)},
                    capture_output=True,
                    check=False,
                )
                if added.returncode == 0:
                    break
                time.sleep(0.02)
            else:
                reason = added.stderr if added is not None else b""
                raise AssertionError(f"ssh-agent did not take {key}: {reason!r}")
        yield str(path)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


@dataclass
class Access:
    """A node with the read identity planned for it, and the agents of the three cases."""

    host: NodeHost
    settings: Settings
    read_key: Path
    read_agent: str  # only the read key: a pull request's preview
    both_agent: str  # the read key and the apply key: an operator, the deploy's preview
    apply_agent: str  # only the apply key (the node's root key)

    @property
    def node(self) -> Node:
        return self.settings.nodes[0]

    def plan(self, agent_socket: str, mode: ReadMode = "read-first") -> tuple[AnyPlan, NodeRead]:
        reads: dict[str, NodeRead] = {}
        [plan] = plan_fleet(self.settings, ssh_runner(agent_socket), mode, reads).values()
        return plan, reads[self.node.name]

    def install(self) -> str:
        """The plan's read-access step, run by the apply identity as pulumi-command runs it."""
        plan, _ = self.plan(self.apply_agent, "apply")
        step = plan.steps[0]
        assert step.role == read_access.ROLE
        result = run_on_node(self.node, step.create, agent_socket=self.apply_agent)
        check_step(self.node, step.role, result.exit_code, result.stderr)
        return result.stdout

    def as_read(self, command: str, *options: str, stdin: str = "") -> subprocess.CompletedProcess:
        """``command`` as the client's command line of a read key session."""
        return ssh_run(
            self.read_key,
            f"{READ_USER}@{self.host.node_address}",
            command,
            stdin,
            host_key=self.host.host_public_key,
            extra_options=["-o", "IdentitiesOnly=yes", *options],
            timeout=60,
        )

    def read_session(self, *options: str) -> subprocess.CompletedProcess:
        """A read key session without a command line (a shell, a forwarding), stdin closed."""
        return subprocess.run(
            [
                "ssh", "-i", str(self.read_key), "-o", "IdentitiesOnly=yes",
                *ssh_client_options(self.host.node_address, self.host.host_public_key),
                *options, f"{READ_USER}@{self.host.node_address}",
            ],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def as_root(self, command: str) -> subprocess.CompletedProcess:
        result = self.host.ssh(command)
        assert result.returncode == 0, result.stderr
        return result

    def as_read_user_on_node(self, command: str) -> subprocess.CompletedProcess:
        """``command`` run by the read user on the node (root's runuser, no SSH): what the
        account itself may do, whatever sshd allows."""
        return self.host.ssh(f"runuser -u {READ_USER} -- sh -c {shlex.quote(command)}")


def with_read_access(settings: Settings, public_key: str, **changes: object) -> Settings:
    raw = settings.model_dump(by_alias=True, exclude_none=True)
    raw["nodeAccess"] = {"readPublicKeys": [public_key]}
    for key, value in changes.items():
        raw[key] = value
    return load_settings(raw)


def _keygen(path: Path) -> str:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "read", "-f", str(path)], check=True
    )
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


@contextlib.contextmanager
def access_for(host: NodeHost, settings: Settings, tmp_path: Path) -> Iterator[Access]:
    read_key = tmp_path / "read_key"
    public = _keygen(read_key)
    with (
        agent(host.socket_dir / "read.sock", read_key) as read_agent,
        agent(host.socket_dir / "both.sock", read_key, host.key) as both_agent,
    ):
        yield Access(
            host,
            with_read_access(settings, public),
            read_key,
            read_agent,
            both_agent,
            host.agent_socket,
        )


@contextlib.contextmanager
def containerd_access(tmp_path: Path, containerd: ContainerdVersion = V1_6) -> Iterator[Access]:
    _prerequisites()
    with node_host(tmp_path, containerd, private_system=True, share_ssh=False) as host:
        host.start_containerd(start_config(f"http://{host.host_address}:5000"))
        with access_for(host, make_settings(host), tmp_path) as access:
            yield access


def steps(plan: AnyPlan) -> list[tuple[str, str, str, bool]]:
    """Everything pulumi-command gets from a plan, per step (no step has a delete), APPLY_MARK
    aside: a node that was never applied gets a new random mark at each planning, whoever read
    it (components/plan/node_plan.py apply_mark)."""
    return [
        (
            s.role,
            "\n".join(line for line in s.create.command.splitlines() if "APPLY_MARK=" not in line),
            s.create.stdin,
            s.sensitive,
        )
        for s in plan.steps
    ]


# --- the read key reads what the program needs ---------------------------------------------------


@pytest.mark.parametrize("containerd", [V1_6, V2_1], ids=lambda v: v.series)
def test_the_read_key_plans_what_the_apply_key_plans_and_the_apply_key_still_rolls_out(
    tmp_path: Path, containerd: ContainerdVersion
) -> None:
    with containerd_access(tmp_path, containerd) as access:
        node = access.node
        baseline, by_apply = access.plan(access.apply_agent, "apply")
        assert by_apply.node.ssh_user == "root"
        assert [s.role for s in baseline.steps] == ["read-access", "hosts", "config"]

        # Not installed yet: the read key alone cannot read the node, and says why, naming it.
        with pytest.raises(FleetReadError) as caught:
            access.plan(access.read_agent)
        [problem] = caught.value.problems
        assert problem.startswith(f"node node-1 (root@{node.address}:22) probe: cannot reach")
        assert "Permission denied" in problem
        assert f"tried first as {READ_USER}: the read key is not accepted" in problem
        # With both keys the apply identity reads it instead (a deploy's first preview).
        fallback_plan, fallback = access.plan(access.both_agent)
        assert fallback.node.ssh_user == "root" and "not accepted" in fallback.fallback
        assert steps(fallback_plan) == steps(baseline)

        assert "changed=1" in access.install()
        assert "changed=0" in access.install(), "a second install changes nothing"

        for agent_socket in (access.read_agent, access.both_agent):
            plan, read = access.plan(agent_socket)
            assert read.node.ssh_user == READ_USER, read
            assert (read.fallback, read.warning) == ("", "")
            assert steps(plan) == steps(baseline)
            only, _ = access.plan(agent_socket, "read-only")
            assert steps(only) == steps(baseline)
        # The probe the read key ran is the node's own containerd, as the apply key's.
        assert plan.probe is not None
        assert plan.probe.containerd_version.lstrip("v").startswith(containerd.version)

        # The apply key still does the full rollout (every step of the plan, in order).
        for step in baseline.steps:
            result = run_on_node(node, step.create, agent_socket=access.apply_agent)
            check_step(node, step.role, result.exit_code, result.stderr)
        assert access.host.cri_status() == "ok"
        after, _ = access.plan(access.apply_agent, "apply")
        assert not after.config_changed  # type: ignore[union-attr]
        for agent_socket in (access.read_agent, access.both_agent):
            plan, read = access.plan(agent_socket)
            assert read.node.ssh_user == READ_USER
            assert steps(plan) == steps(after)


def test_the_installed_probe_runs_with_the_apply_sessions_path(tmp_path: Path) -> None:
    """The node's containerd 2.1 is first on its sessions' PATH (as /usr/local/bin would be);
    the host's /usr/bin has 1.6.20. The read probe finds 2.1 through the PATH recorded at
    install; without that record (the control) it finds 1.6 and would plan another version."""
    with containerd_access(tmp_path, V2_1) as access:
        access.install()
        plan, _ = access.plan(access.read_agent, "read-only")
        assert plan.probe is not None
        assert plan.probe.containerd_version.lstrip("v").startswith("2.1")
        access.as_root(f"rm {INSTALL_DIR}/session-path")
        plan, _ = access.plan(access.read_agent, "read-only")
        assert plan.probe is not None
        assert not plan.probe.containerd_version.lstrip("v").startswith("2.1")


@pytest.mark.parametrize("flavour", ["k3s-server", "rke2-agent"])
def test_k3s_and_rke2_nodes_are_read_and_verified_with_the_read_key(
    tmp_path: Path, flavour: str
) -> None:
    _prerequisites()
    require_binary("ctr")
    with (
        k3s_world(tmp_path, None, flavour, private_system=True) as k3s,
        access_for(k3s.host, k3s.settings, tmp_path) as access,
    ):
        baseline, _ = access.plan(access.apply_agent, "apply")
        assert [s.role for s in baseline.steps] == ["read-access", "registries"]
        access.install()
        plan, read = access.plan(access.read_agent, "read-only")
        assert read.node.ssh_user == READ_USER
        assert steps(plan) == steps(baseline)
        assert plan.flavour.name == flavour

        # verify with the flavour's own containerd, socket and generated certs.d, as the
        # apply identity's verify step runs it.
        row = FLAVOURS[flavour]
        runner = ssh_runner(access.read_agent)
        by_read = run_read(
            access.settings, access.node, runner, "verify",
            verify_step(access.settings, access.node, (), row),
            mode="read-only", flavour=row,
        )  # fmt: skip
        assert by_read.node.ssh_user == READ_USER and by_read.run.exit_code == 0
        by_apply = run_on_node(
            access.node,
            verify_step(access.settings, access.node, (), row),
            agent_socket=access.apply_agent,
        )
        # The same report (`ctr deprecations list` names them in no fixed order).
        fields, _ = node_report(by_read.run.stdout)
        assert _sorted_deprecations(fields) == _sorted_deprecations(node_report(by_apply.stdout)[0])
        assert (fields["cri"], fields["config_path"]) == ("ok", row.hosts_dir)


def _sorted_deprecations(fields: dict[str, str]) -> dict[str, str]:
    return {**fields, "deprecations": " ".join(sorted(fields.get("deprecations", "").split()))}


# --- and nothing else ----------------------------------------------------------------------------

# Client command lines the gate must refuse (exit 64) without running anything of them. Each that
# would write does so into the node's /var/lib (its own, private), checked afterwards.
REFUSED = [
    "id",
    "sh",
    "bash -c id",
    "probe; touch /var/lib/pwned-1",
    "probe && touch /var/lib/pwned-2",
    "probe $(touch /var/lib/pwned-3)",
    "probe `touch /var/lib/pwned-4`",
    "probe\ntouch /var/lib/pwned-5",
    "probe | tee /var/lib/pwned-6",
    "probe > /var/lib/pwned-7",
    "probe CONFIG_FILE=/etc/shadow",
    "CONFIG_FILE=/etc/shadow probe",
    "verify docker.io/library/x:1;touch /var/lib/pwned-8",
    "verify --hosts-dir /var/lib docker.io/library/x:1",
    "verify -h",
    "verify docker.io/../../x:1",
    "verify evil.example/library/x:1",
    "verify /etc/shadow",
    "scp -t /var/lib/pwned-9",
    "internal-sftp",
    "/usr/lib/openssh/sftp-server",
    "sudo -n id",
    f"{INSTALL_DIR}/probe.sh",
]


def test_the_read_key_can_run_the_probe_and_nothing_else(tmp_path: Path) -> None:
    with containerd_access(tmp_path) as access:
        access.install()
        node_var_lib = access.host.root / "node" / "var-lib"
        # The control: what it may do.
        allowed = access.as_read("probe")
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith("read_access=1 op=probe ")
        assert "config_b64=" in allowed.stdout

        for command in REFUSED:
            refused = access.as_read(command)
            assert refused.returncode == 64, (command, refused.stdout, refused.stderr)
            assert "read-gate.sh: refused:" in refused.stderr, command
            assert refused.stdout == "", command
        # No command at all (a shell), with and without a pty.
        shell = access.read_session("-T")
        assert shell.returncode == 64 and "unknown request ''" in shell.stderr
        # A pty: refused by sshd (`restrict`), and ssh gives up before any command.
        pty = access.as_read("probe", "-tt")
        assert pty.returncode == 255 and pty.stdout == ""
        assert "PTY allocation request failed" in pty.stderr
        assert not list(node_var_lib.glob("pwned-*")), "a refused request wrote a file"

        # scp and sftp (their subsystem requests meet the forced command too).
        payload = tmp_path / "payload"
        payload.write_text("x\n")
        target = f"{READ_USER}@{access.host.node_address}"
        pinned = [
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
        ]  # fmt: skip
        for scp_mode in ("-O", "-s"):  # the legacy scp protocol, and scp over sftp
            copied = subprocess.run(
                ["scp", scp_mode, "-i", str(access.read_key), *pinned, str(payload),
                 f"{target}:/var/lib/pwned-scp"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert copied.returncode != 0, copied
        sftp = subprocess.run(
            ["sftp", "-b", "-", "-i", str(access.read_key), *pinned, target],
            input=f"put {payload} /var/lib/pwned-sftp\n",
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert sftp.returncode != 0, sftp
        assert not list(node_var_lib.glob("pwned-*"))

        # The read key logs in as nobody else.
        as_root = ssh_run(
            access.read_key, f"root@{access.host.node_address}", "id",
            host_key=access.host.host_public_key, extra_options=["-o", "IdentitiesOnly=yes"],
        )  # fmt: skip
        assert as_root.returncode == 255 and "Permission denied" in as_root.stderr


def test_the_read_key_forwards_nothing(tmp_path: Path) -> None:
    with containerd_access(tmp_path) as access:
        access.install()
        node = access.host.node_address
        # TCP: a direct-tcpip channel to the node's own sshd. Control: the root key gets it.
        forwarded = access.read_session("-W", f"{node}:22")
        assert forwarded.returncode != 0
        assert "administratively prohibited" in forwarded.stderr, forwarded.stderr
        pinned = ssh_client_options(node, access.host.host_public_key)
        control = subprocess.run(
            ["ssh", "-i", str(access.host.key), *pinned, "-W", f"{node}:22", f"root@{node}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert control.stdout.startswith("SSH-2.0-"), control
        # Remote forwarding: refused at once.
        remote = access.read_session("-N", "-R", "0:127.0.0.1:22", "-o", "ExitOnForwardFailure=yes")
        assert remote.returncode == 255 and "remote port forwarding failed" in remote.stderr

        # A unix socket: containerd's, where anyone who reaches it is root. Control: root's key.
        assert _reach_containerd_through(access, access.host.key, "root") is True
        assert _reach_containerd_through(access, access.read_key, READ_USER) is False

        # Agent forwarding: the key's own options, with the forced command swapped for `env`
        # (what the session would see); control: the same line without `restrict`.
        line = authorized_keys([_public(access)]).replace(_quoted(FORCED_COMMAND), "env")
        assert line.startswith('restrict,command="env" ')
        keys_file = f"{HOME}/.ssh/authorized_keys"
        try:
            for options, forwarded_agent in ((line, False), (line.removeprefix("restrict,"), True)):
                access.as_root(f"printf '%s' {shlex.quote(options)} > {keys_file}")
                seen = subprocess.run(
                    ["ssh", "-i", str(access.read_key), "-o", "IdentitiesOnly=yes", "-A",
                     *ssh_client_options(node, access.host.host_public_key),
                     f"{READ_USER}@{node}", "anything"],
                    env={**os.environ, "SSH_AUTH_SOCK": access.read_agent},
                    stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                    check=False,
                )  # fmt: skip
                assert seen.returncode == 0, seen.stderr
                assert ("SSH_AUTH_SOCK=" in seen.stdout) is forwarded_agent, seen.stdout
        finally:
            access.install()  # puts the real line back
        assert access.as_read("probe").returncode == 0


def _public(access: Access) -> str:
    return access.settings.node_access.read_public_keys[0]


def _quoted(command: str) -> str:
    return command.replace('"', '\\"')


def _reach_containerd_through(access: Access, key: Path, user: str) -> bool:
    """Forward a local unix socket to the node's containerd socket as ``user`` and ask the
    daemon its version through it."""
    local = access.host.socket_dir / f"fwd-{user[:4]}.sock"
    local.unlink(missing_ok=True)
    ssh = subprocess.Popen(
        [
            "ssh", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "ExitOnForwardFailure=yes", "-N",
            "-L", f"{local}:/run/containerd/containerd.sock", f"{user}@{access.host.node_address}",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not local.exists() and time.monotonic() < deadline and ssh.poll() is None:
            time.sleep(0.05)
        assert local.exists(), "ssh did not open the local socket"
        version = subprocess.run(
            [access.host.containerd.binary("ctr"), "--address", str(local), "--timeout", "5s",
             "version"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return version.returncode == 0 and "Server:" in version.stdout
    finally:
        ssh.send_signal(signal.SIGTERM)
        ssh.wait(timeout=10)
        local.unlink(missing_ok=True)


def test_the_read_user_may_sudo_the_gate_and_nothing_else_nor_change_it(tmp_path: Path) -> None:
    """What the account itself may do on the node (runuser as root; the forced command keeps
    the key from even trying): sudo runs the gate and nothing else, and no installed file, nor
    its own key or home, is writable by it."""
    with containerd_access(tmp_path) as access:
        access.install()
        control = access.as_read_user_on_node(f"sudo -n {GATE} probe")
        assert control.returncode == 0 and control.stdout.startswith("read_access=1"), control
        for command in (
            "sudo -n id",
            "sudo -n /bin/sh -c id",
            f"sudo -n {INSTALL_DIR}/probe.sh",
            f"sudo -n bash {GATE} probe",
            "sudo -n -u nobody id",
            "sudo -n -e /etc/shadow",
        ):
            refused = access.as_read_user_on_node(command)
            assert refused.returncode != 0, command
            assert "password is required" in refused.stderr or "not allowed" in refused.stderr
        listed = access.as_read_user_on_node("sudo -n -l")
        assert f"(root) NOPASSWD: {GATE}" in listed.stdout
        assert listed.stdout.count("NOPASSWD") == 1

        protected = [
            *(f"{INSTALL_DIR}/{name}" for name in (
                "read-gate.sh", "probe.sh", "verify-node.sh", "read-access.conf", "session-path"
            )),
            INSTALL_DIR, f"/etc/sudoers.d/{READ_USER}", "/etc/sudoers.d",
            f"{HOME}/.ssh/authorized_keys", f"{HOME}/.ssh", HOME,
        ]  # fmt: skip
        for path in protected:
            written = access.as_read_user_on_node(f"echo x >> {path} || touch {path}/x")
            assert written.returncode != 0, path
        # Nothing changed, and the installed files are root's, as sshd and sudo require.
        modes = access.as_root(
            "stat -c '%U:%G %a %n' " + " ".join(p for p in protected if p != "/etc/sudoers.d")
        ).stdout
        assert all(line.startswith("root:root ") for line in modes.splitlines()), modes
        assert f"root:root 440 /etc/sudoers.d/{READ_USER}" in modes
        assert f"root:root 755 {INSTALL_DIR}/probe.sh" in modes
        assert f"root:root 644 {HOME}/.ssh/authorized_keys" in modes
        assert access.as_read("probe").returncode == 0


# --- stale, missing, removed ---------------------------------------------------------------------


def test_a_read_access_for_other_parameters_or_older_scripts_is_told_apart(
    tmp_path: Path,
) -> None:
    with containerd_access(tmp_path) as access:
        access.install()
        # A pull request moves containerd.configPath: the installed probe reads the old one.
        moved = with_read_access(
            make_settings(access.host), _public(access), containerd={"configPath": "/etc/cd.d"}
        )
        moved_access = Access(**{**access.__dict__, "settings": moved})
        with pytest.raises(FleetReadError) as caught:
            moved_access.plan(access.read_agent)
        [problem] = caught.value.problems
        assert "installed for other parameters than this program's" in problem
        assert "Permission denied" in problem  # and the apply identity is not in this agent
        baseline, _ = moved_access.plan(access.apply_agent, "apply")
        plan, read = moved_access.plan(access.both_agent)
        assert read.node.ssh_user == "root" and "other parameters" in read.fallback
        assert steps(plan) == steps(baseline)

        # An older probe on the node (this pull request edits probe.sh): what it reads is used,
        # with a warning, when nothing better is at hand; the apply identity when it is.
        access.as_root(f"echo '# an older probe' >> {INSTALL_DIR}/probe.sh")
        baseline, _ = access.plan(access.apply_agent, "apply")
        plan, read = access.plan(access.read_agent)
        assert read.node.ssh_user == READ_USER and "not this program's" in read.warning
        assert steps(plan) == steps(baseline)
        plan, read = access.plan(access.both_agent)
        assert read.node.ssh_user == "root" and "not this program's" in read.fallback
        with pytest.raises(FleetReadError, match="not this program's"):
            access.plan(access.read_agent, "read-only")


def test_removing_the_read_access_leaves_nothing_and_never_takes_a_foreign_user(
    tmp_path: Path,
) -> None:
    with containerd_access(tmp_path) as access:
        etc = access.host.etc_upper
        access.install()
        plan, _ = access.plan(access.apply_agent, "apply")
        # nodes[].state: restored removes it (no step has a delete: leaving runs nothing).
        remove = read_access.remove_step(access.settings, access.node)
        result = run_on_node(access.node, remove, agent_socket=access.apply_agent)
        assert result.exit_code == 0 and "removed=1" in result.stdout, result
        assert READ_USER not in (etc / "passwd").read_text()
        assert not (etc / "sudoers.d" / READ_USER).exists()
        assert (
            access.as_root(f"ls -A {INSTALL_DIR} {HOME} 2>&1 || true").stdout.count("No such file")
            == 2
        )
        denied = access.as_read("probe")
        assert denied.returncode == 255 and "Permission denied" in denied.stderr

        # A user of that name that is not ours: the install refuses it and changes nothing.
        access.as_root(f"useradd --system --no-create-home {READ_USER}")
        passwd = (etc / "passwd").read_text()
        step = plan.steps[0].create
        refused = run_on_node(access.node, step, agent_socket=access.apply_agent)
        assert refused.exit_code == 3, refused
        assert "is not the registry-mirrors read identity" in refused.stderr
        assert (etc / "passwd").read_text() == passwd
        assert not (etc / "sudoers.d" / READ_USER).exists()

        # A node whose sudo does not read /etc/sudoers.d: the rule would not take effect, so the
        # read key is not installed at all (and the install fails, saying why).
        access.as_root(f"userdel {READ_USER}")
        access.as_root("sed -i '/includedir/d' /etc/sudoers")
        broken = run_on_node(access.node, step, agent_socket=access.apply_agent)
        assert broken.exit_code == 5, broken
        assert "does /etc/sudoers include /etc/sudoers.d?" in broken.stderr
        assert access.as_read("probe").returncode == 255
        assert access.as_root(f"test -e {HOME}/.ssh/authorized_keys || echo absent").stdout == (
            "absent\n"
        )


# --- scripts/verify.py --nodes with the read key alone -------------------------------------------


MIRROR_IMAGES = ("docker.io=library/x:1", "ghcr.io=org/y:1")


@pytest.mark.parametrize("node_start", ANY_NODE, ids=str)
def test_verify_nodes_works_with_the_read_key_alone(world: World) -> None:
    read_key = world.workdir / "read_key"
    settings = with_read_access(world.settings, _keygen(read_key))
    # The rollout, read access included, with the apply key.
    [plan] = plan_fleet(settings, ssh_runner(world.host.agent_socket)).values()
    for step in plan.steps:
        # With TLS on (the default) the CA in front of the hosts step's stdin, as the program
        # sends it.
        result = world.host.run_step(step_to_send(step, world.ca_pem))
        check_step(world.node, step.role, result.returncode, result.stderr)

    options = ("--identity", "read", "--ssh-option=-oIdentitiesOnly=yes")
    env_without_agent = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    with registry_vm(world.workdir, settings, world.registries) as vm:
        passed = run_verify_nodes(
            settings, world.host, world.workdir, "docker.io/library/x:2",
            mirror_images=MIRROR_IMAGES, ssh_key=read_key, extra_args=options,
            env=env_without_agent, vm=vm, ca_pem=world.ca_pem,
        )  # fmt: skip
        # The control: an image of a registry without a cache is not the read key's to pull.
        refused = run_verify_nodes(
            settings, world.host, world.workdir, "quay.io/org/z:1",
            mirror_images=MIRROR_IMAGES, ssh_key=read_key, extra_args=options,
            env=env_without_agent, vm=vm, ca_pem=world.ca_pem,
        )  # fmt: skip
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert f"{READ_USER}@{world.host.node_address}" in passed.stdout
    assert "docker.io/library/x:2 cached in" in passed.stdout
    # Over the gate too: the node's hosts.toml files are the ones the program wrote.
    assert "2 as applied (docker.io, ghcr.io)" in passed.stdout, passed.stdout
    # The bypass probes (a digest per cache) pass the gate, and reach each cache.
    bypass = [line for line in passed.stdout.splitlines() if "  bypass  " in line]
    assert len(bypass) == 2 and all("reached the cache" in line for line in bypass), bypass
    assert refused.returncode == 1
    assert "quay.io has no cache" in refused.stdout + refused.stderr
