"""Host keys over real SSH (a test node: sshd in a network namespace, a real containerd).

- The rollout with pinned keys: the node is read and written only over connections that check
  its pinned key (the program's own ssh client options), and works.
- A node whose host key changes between runs (the test regenerates it: a reinstalled node, or a
  host impersonating it) is refused on read AND on write with one line naming it, and nothing
  runs on it; the same write with its new key pinned goes through (the control).
- ``scripts/vm/install-host-key.sh`` (the registry VM's key rotation) against this sshd: it
  installs the key and reloads sshd, also when sshd's effective config is long and has Match
  blocks (the VM guest's condition), and changes nothing when sshd would not load the file.
- ``scripts/pin_host_keys.py``: scans, shows the fingerprint ``ssh-keygen -lf`` shows, writes
  only after confirmation with the stack file's comments kept, re-checks pinned nodes, and never
  re-pins a changed key unless the node is named with ``--repin``.

pulumi-command's own client (Go, ``ssh.FixedHostKey`` on ``hostKey``) is not run here: the mocks
tests prove every Command gets ``hostKey``; the engine tier runs the provider.
"""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from components.fleet import FleetReadError, plan_fleet, ssh_runner
from components.plan.node_plan import NodePlan
from components.plan.node_steps import NodeStepError, check_step
from components.renderers.shell import remote_command
from components.settings import Settings
from components.ssh_client import run_on_node
from components.ssh_host_key import fingerprint, generate_host_key
from components.stack_file import load_stack_settings
from tests.cli_harness import run
from tests.integration.test_node_e2e import make_settings, start_config
from tests.integration.testhost import NodeHost, node_host
from tests.prereq import require_binary, require_root
from tests.sample import TEST_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
def host(tmp_path: Path) -> Iterator[NodeHost]:
    require_root()
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "ssh-keyscan", "containerd"):
        require_binary(binary)
    with node_host(tmp_path, share_ssh=False) as node:
        node.start_containerd(start_config(f"http://{node.host_address}:5000"))
        yield node


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run_step(settings: Settings, host: NodeHost, role: str, step) -> str:
    node = settings.nodes[0]
    result = run_on_node(node, step, agent_socket=host.agent_socket)
    check_step(node, role, result.exit_code, result.stderr)
    return result.stdout


def test_a_node_whose_host_key_changed_is_refused_on_read_and_write(host: NodeHost) -> None:
    settings = make_settings(host)
    node = settings.nodes[0]
    assert node.ssh_host_public_key == host.host_public_key
    # The rollout with the pinned key: read, then the hosts step, over verified connections.
    [plan] = plan_fleet(settings, ssh_runner(host.agent_socket)).values()
    assert isinstance(plan, NodePlan) and plan.config is not None
    _run_step(settings, host, "hosts", plan.hosts)
    before = _sha(host.config_file)

    host.regenerate_host_key()

    # Read: the program stops before any resource, one line naming the node and the fix.
    with pytest.raises(FleetReadError) as caught:
        plan_fleet(settings, ssh_runner(host.agent_socket))
    assert caught.value.problems == [
        f"node node-1 (root@{host.node_address}:22) probe: cannot reach the node over SSH: "
        "Host key verification failed. (the node's host key is not the pinned "
        "nodes[].sshHostPublicKey: if it was reinstalled, compare its key on its console, then "
        "re-pin it: python scripts/pin_host_keys.py --stack <stack> --repin node-1)"
    ]
    # Write: the config step (which would rewrite config.toml and restart containerd) is
    # refused by the same check, one line, and nothing ran on the node.
    with pytest.raises(NodeStepError) as refused:
        _run_step(settings, host, "config", plan.config)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"node node-1 (root@{host.node_address}:22) config: cannot reach")
    assert "Host key verification failed" in message
    assert _sha(host.config_file) == before, "the refused write changed config.toml"

    # Control: the very same write with the node's new key pinned goes through.
    repinned = node.model_copy(update={"ssh_host_public_key": host.host_public_key})
    result = run_on_node(repinned, plan.config, agent_socket=host.agent_socket)
    assert result.exit_code == 0, result.stderr
    assert "changed=1" in result.stdout
    assert _sha(host.config_file) != before
    assert host.cri_status() == "ok"


def _stack_file(path: Path, host: NodeHost, pinned: str | None = None) -> Path:
    key = f", sshHostPublicKey: {pinned}" if pinned else ""
    path.write_text(
        "# A lab stack: comments, order and flow style must survive the pin.\n"
        "config:\n"
        "  registry-mirrors:proxmox:\n"
        "    endpoint: https://pve.lan:8006/   # the API\n"
        "  registry-mirrors:vm:\n"
        "    proxmoxNode: pve\n"
        "    vmId: 2010\n"
        "    templateVmId: 9000\n"
        "    address: 10.0.20.10/24\n"
        "    gateway: 10.0.20.1\n"
        "    sshPublicKeys:\n"
        f"      - {TEST_KEY}\n"
        "  registry-mirrors:nodes:\n"
        "    # the only node\n"
        f"    - {{name: node-1, address: {host.node_address}, "
        f"restartCommand: {host.restart_command}{key}}}  # flow style, as in Pulumi.prod.yaml\n"
    )
    return path


def test_pin_tool_writes_only_what_was_confirmed_and_keeps_the_file(
    host: NodeHost, tmp_path: Path
) -> None:
    stack = _stack_file(tmp_path / "Pulumi.lab.yaml", host)
    original = stack.read_text()
    shown = subprocess.run(
        ["ssh-keygen", "-lf", str(host.root / "ssh_host_ed25519_key.pub")],
        capture_output=True, text=True, check=True,
    ).stdout.split()[1]  # fmt: skip
    assert shown == fingerprint(host.host_public_key)

    declined = run("pin_host_keys", ["--stack-file", str(stack)], stdin=b"n\n")
    assert declined.code == 1
    assert shown in declined.stdout.decode(), "the fingerprint the node shows is printed"
    assert "new" in declined.stdout.decode()
    assert stack.read_text() == original, "declined: nothing written"

    accepted = run("pin_host_keys", ["--stack-file", str(stack)], stdin=b"y\n")
    assert accepted.code == 0, accepted
    text = stack.read_text()
    assert text.startswith("# A lab stack: comments, order and flow style must survive the pin.")
    assert "endpoint: https://pve.lan:8006/   # the API" in text
    assert "    # the only node\n" in text and "# flow style, as in Pulumi.prod.yaml" in text
    # Every line as it was but the node's, which gained its key (ruamel may re-space a comment).
    assert [
        line.split()
        for line in text.replace(f", sshHostPublicKey: {host.host_public_key}", "").splitlines()
    ] == [line.split() for line in original.splitlines()]
    settings = load_stack_settings(stack)
    assert settings.nodes[0].ssh_host_public_key == host.host_public_key
    # The program now reads the node over the pinned key.
    plan_fleet(settings, ssh_runner(host.agent_socket))

    again = run("pin_host_keys", ["--stack-file", str(stack), "--yes"])
    assert again.code == 0 and " ok " in again.stdout.decode(), again
    assert stack.read_text() == text, "an unchanged key is not written again"


def test_pin_tool_never_repins_a_changed_key_unless_told(host: NodeHost, tmp_path: Path) -> None:
    stack = _stack_file(tmp_path / "Pulumi.lab.yaml", host, pinned=host.host_public_key)
    original = stack.read_text()
    host.regenerate_host_key()

    checked = run("pin_host_keys", ["--stack-file", str(stack), "--yes"])
    assert checked.code == 1
    assert "MISMATCH" in checked.stdout.decode()
    assert checked.lines == [
        "node-1: presents another key than its pinned nodes[].sshHostPublicKey: if it was "
        "reinstalled, compare its key on its console, then --repin node-1"
    ]
    assert stack.read_text() == original, "--yes alone never replaces a pinned key"

    repinned = run("pin_host_keys", ["--stack-file", str(stack), "--yes", "--repin", "node-1"])
    assert repinned.code == 0, repinned
    assert load_stack_settings(stack).nodes[0].ssh_host_public_key == host.host_public_key


def test_pin_tool_pins_the_vms_current_key_for_an_upgrade(host: NodeHost, tmp_path: Path) -> None:
    """``--vm``: a VM made before the program generated its key (here the test host stands in
    for it at the VM's address) gets its current key into vm.sshHostPublicKey, for the one login
    that installs the generated key."""
    stack = tmp_path / "Pulumi.lab.yaml"
    stack.write_text(
        "config:\n"
        "  registry-mirrors:proxmox:\n"
        "    endpoint: https://pve.lan:8006/\n"
        "  registry-mirrors:vm:\n"
        "    proxmoxNode: pve\n"
        "    vmId: 2010\n"
        "    templateVmId: 9000\n"
        f"    address: {host.node_address}/30\n"
        f"    gateway: {host.host_address}\n"
        "    sshPublicKeys:\n"
        f"      - {TEST_KEY}\n"
        "  registry-mirrors:nodes: []\n"
    )
    without = run("pin_host_keys", ["--stack-file", str(stack), "--yes"])
    assert without.code == 0 and without.stdout == b"", "without --vm the VM is not contacted"
    pinned = run("pin_host_keys", ["--stack-file", str(stack), "--yes", "--vm"])
    assert pinned.code == 0, pinned
    assert load_stack_settings(stack).created_vm.ssh_host_public_key == host.host_public_key


def test_pin_tool_pins_an_existing_cache_hosts_own_key(host: NodeHost, tmp_path: Path) -> None:
    """``--vm`` on a ``host`` stack: the existing host's own key goes into host.sshHostPublicKey
    (the test host stands in for it), comments and the rest of the file kept."""
    stack = tmp_path / "Pulumi.edge.yaml"
    stack.write_text(
        "config:\n"
        "  # the caches run on a small server, not on Proxmox\n"
        "  registry-mirrors:host:\n"
        f"    address: {host.node_address}\n"
        "    sshUser: root\n"
        "    diskGb: 50\n"
        "  registry-mirrors:nodes: []\n"
    )
    without = run("pin_host_keys", ["--stack-file", str(stack), "--yes"])
    assert without.code == 0 and without.stdout == b"", "without --vm the host is not contacted"
    pinned = run("pin_host_keys", ["--stack-file", str(stack), "--yes", "--vm"])
    assert pinned.code == 0, pinned
    settings = load_stack_settings(stack)
    assert settings.host is not None and settings.vm is None
    assert settings.host.ssh_host_public_key == host.host_public_key
    assert "# the caches run on a small server" in stack.read_text()
    checked = run("pin_host_keys", ["--stack-file", str(stack), "--vm"])
    assert checked.code == 0 and " ok " in checked.stdout.decode(), checked


# --- scripts/vm/install-host-key.sh on a real sshd (the test node stands in for the VM) ---------


def _install_host_key(
    host: NodeHost, private_key: str, *, host_key_file: Path | None = None,
    sshd_config: Path | None = None,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """The VM's -host-key-install step (components/registry_vm.py), with the node's sshd files
    and its reload (SIGHUP: sshd re-executes and reads its host keys again) as parameters."""
    sshd_pid = host.processes[0].pid  # exec'd through ip netns exec, unshare and bash
    command = remote_command(
        "vm/install-host-key.sh",
        {
            "HOST_KEY_FILE": str(host_key_file or host.root / "ssh_host_ed25519_key"),
            "SSHD_CONFIG": str(sshd_config or host.root / "sshd_config"),
            "RELOAD_COMMAND": f"kill -HUP {sshd_pid}",
        },
    )
    return host.ssh(command, private_key)


def _presented(host: NodeHost) -> str:
    scanned = subprocess.run(
        ["ssh-keyscan", "-T", "2", "-t", "ed25519", host.node_address],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [line for line in scanned.stdout.splitlines() if not line.startswith("#")]
    return " ".join(lines[0].split()[1:3]) if lines else ""


def _wait_presented(host: NodeHost, public: str) -> None:
    deadline = time.monotonic() + 15
    while _presented(host) != public:
        assert time.monotonic() < deadline, f"sshd does not present {public}"
        time.sleep(0.1)


# What the VM guest's sshd has and the node's plain one lacks: an effective config (`sshd -T`)
# that goes on well past its hostkey lines (acceptenv, subsystem, ... come after them; here
# long enough to outgrow a pipe's buffer, so the race the guest lost at random is lost every
# time), and Match blocks from an Include'd sshd_config.d.
_LONG_DROPIN = "".join(f"AcceptEnv REGISTRY_MIRRORS_TEST_{i}\n" for i in range(5000)) + (
    "Match User nobody\n    PasswordAuthentication no\n"
)


def test_install_host_key_rotates_an_sshd_with_a_long_config_and_match_blocks(
    host: NodeHost,
) -> None:
    config, key_file = host.root / "sshd_config", host.root / "ssh_host_ed25519_key"
    dropins = host.root / "sshd_config.d"
    dropins.mkdir()
    (dropins / "50-long.conf").write_text(_LONG_DROPIN)
    # At the top, as Debian's sshd_config has it (the node's own config ends in a Match block).
    config.write_text(f"Include {dropins}/*.conf\n" + config.read_text())
    # Control: the check the script made before (`sshd -T | grep -q` under pipefail) says this
    # sshd does not load its own host key: grep quits at the match, sshd dies of SIGPIPE.
    wanted = shlex.quote(f"hostkey {key_file}")
    old_check = host.ssh(
        "bash -o pipefail -c "
        + shlex.quote(f"sshd -T -f {config} 2>/dev/null | grep -qixF {wanted}")
    )
    assert old_check.returncode == 141, old_check
    assert host.ssh(f"sshd -T -f {config} | grep -cxF {wanted}").stdout.strip() == "1"

    old, new = host.host_public_key, generate_host_key()
    installed = _install_host_key(host, new.private)
    assert installed.returncode == 0, installed.stderr
    assert installed.stdout.splitlines() == ["changed=1", f"public={new.public}"]
    _wait_presented(host, new.public)
    assert host.host_public_key == new.public != old
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert not list(host.root.glob("*.registry-mirrors.*")), "a leftover of the install"
    # Again, over a connection pinned to the new key: nothing to do.
    again = _install_host_key(host, new.private)
    assert again.returncode == 0 and again.stdout.splitlines()[0] == "changed=0", again


def test_install_host_key_changes_nothing_when_sshd_would_not_load_it(
    host: NodeHost, tmp_path: Path
) -> None:
    config, key_file = host.root / "sshd_config", host.root / "ssh_host_ed25519_key"
    before, presented = _sha(key_file), host.host_public_key
    new = generate_host_key()

    elsewhere = host.root / "not_a_host_key"  # no HostKey line names it
    refused = _install_host_key(host, new.private, host_key_file=elsewhere)
    assert refused.returncode == 3, refused
    assert refused.stderr.splitlines() == [
        f"install-host-key: sshd ({config}) does not load {elsewhere} as a host key "
        "(HostKey lines): nothing was changed"
    ]
    assert not elsewhere.exists()

    # sshd's own error, when it cannot even say which keys it loads, is the one line's reason.
    broken = tmp_path / "sshd_config.broken"
    broken.write_text(config.read_text() + "NoSuchOption yes\n")
    failed = _install_host_key(host, new.private, sshd_config=broken)
    assert failed.returncode == 3, failed
    assert len(failed.stderr.splitlines()) == 1, failed.stderr
    assert f"'sshd -T -f {broken}' failed" in failed.stderr
    assert "Bad configuration option: NoSuchOption" in failed.stderr
    assert failed.stderr.rstrip().endswith("nothing was changed"), failed.stderr

    assert _sha(key_file) == before and _presented(host) == presented
    assert not list(host.root.glob("*.registry-mirrors.*"))
