"""The read identity without SSH (README "The read identity"): its settings, the files that make
it, the reader's decisions (which identity answered, when to fall back), and, under Pulumi
mocks, the step that installs it: secret-free, pinned to the node's host key, first in each
node's rollout, undone on delete; a preview reads with it, ``pulumi up`` with the apply identity.

tests/integration/test_read_identity.py runs all of it over real SSH.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pulumi
import pytest
from pulumi.output import Unknown

from components import program
from components.fleet import FleetReadError, plan_fleet, read_summary, run_read
from components.plan import read_access
from components.plan.node_plan import HeldPlan
from components.plan.node_steps import NodeStepError, Step, probe_step
from components.renderers.flavours import FLAVOURS
from components.renderers.read_access import (
    FORCED_COMMAND,
    GATE,
    authorized_keys,
    conf_lines,
    sudoers,
)
from components.settings import Settings, SettingsError, load_settings
from components.ssh_client import StepRun
from tests.mocks import (
    COMMAND,
    FakeFleet,
    FakeNode,
    fake_node_outputs,
    install_mocks,
    is_secret,
    plain,
)
from tests.sample import NODE_HOST_KEYS, TEST_KEY, sample_raw

READ_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK1cVmZ2wSx4Y2oCdXh8fF0L8l0CkqT3Gm9nR7qs4HhP rd"
TOKEN = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"


def settings_with_read(**access: object) -> Settings:
    raw = sample_raw()
    raw["nodeAccess"] = {"readPublicKeys": [READ_KEY], **access}
    return load_settings(raw)


# --- settings ------------------------------------------------------------------------------------


def test_no_read_identity_by_default_and_every_read_is_the_apply_identitys() -> None:
    settings = load_settings(sample_raw())
    assert not settings.node_access.enabled
    assert settings.node_access.read_user == "registry-mirrors-read"
    fleet = FakeFleet()
    plans = plan_fleet(settings, fleet, "read-first")  # no read identity: nothing to try
    assert {user for _, user, _ in fleet.calls} == {"root"}
    assert all("read-access" not in [s.role for s in p.steps] for p in plans.values())


@pytest.mark.parametrize(
    ("access", "nodes_user", "expected"),
    [
        ({"readUser": "root"}, None, "nodeAccess.readUser: must not be root"),
        ({"readUser": "ops"}, "ops", "'ops' is nodes[1].sshUser, the apply identity"),
        ({"readPublicKeys": [TEST_KEY]}, None, "is also in vm.sshPublicKeys (the apply key)"),
        ({"readPublicKeys": [READ_KEY, READ_KEY]}, None, "the same key is listed twice"),
        ({"readPublicKeys": ["ssh-ed25519 AAAA"]}, None, "nodeAccess.readPublicKeys[0]"),
        ({"readUser": "a@b"}, None, "without '@...'"),
        ({"readUsr": "x"}, None, "nodeAccess.readUsr: unknown key (did you mean readUser?)"),
    ],
)
def test_a_bad_read_identity_is_one_line_naming_the_key(
    access: dict, nodes_user: str | None, expected: str
) -> None:
    raw = sample_raw()
    raw["nodeAccess"] = {"readPublicKeys": [READ_KEY], **access}
    if nodes_user:
        raw["nodes"][1]["sshUser"] = nodes_user
    with pytest.raises(SettingsError) as caught:
        load_settings(raw)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


# --- the files -----------------------------------------------------------------------------------


def test_authorized_keys_force_the_gate_and_restrict_everything_else() -> None:
    text = authorized_keys([READ_KEY, NODE_HOST_KEYS[0]])
    lines = text.splitlines()
    assert len(lines) == 2 and text.endswith("\n")
    options, _, key = lines[0].rpartition('" ')
    assert options + '"' == (
        'restrict,command="exec sudo -n /usr/local/lib/registry-mirrors/read-gate.sh '
        '\\"$SSH_ORIGINAL_COMMAND\\""'
    )
    # The key's own comment is dropped: the line is ours.
    assert key == f"{' '.join(READ_KEY.split()[:2])} registry-mirrors read identity"
    assert lines[1].endswith(f"{NODE_HOST_KEYS[0]} registry-mirrors read identity")
    assert f'exec sudo -n {GATE} "$SSH_ORIGINAL_COMMAND"' == FORCED_COMMAND
    with pytest.raises(ValueError, match="no read key"):
        authorized_keys([])


def test_the_sudo_rule_names_the_gate_and_nothing_else() -> None:
    rules = [
        line for line in sudoers("registry-mirrors-read").splitlines() if not line.startswith("#")
    ]
    assert rules == [f"registry-mirrors-read ALL=(root) NOPASSWD: {GATE}"]


def test_the_installed_parameters_are_the_ones_the_apply_identity_sends() -> None:
    settings = settings_with_read()
    node = settings.nodes[0]
    conf = read_access.access_conf(settings, node, FLAVOURS["k3s-agent"])
    lines = [line for line in conf.splitlines() if not line.startswith("#")]
    assert lines == [
        "probe.CONFIG_FILE=/etc/containerd/config.toml",
        "probe.CONFIG_PATH=/etc/containerd/certs.d",
        "verify.CONFIG_FILE=/var/lib/rancher/k3s/agent/etc/containerd/config.toml",
        "verify.CONFIG_PATH=/var/lib/rancher/k3s/agent/etc/containerd/certs.d",
        "verify.CONTAINERD_ADDRESS=/run/k3s/containerd/containerd.sock",
        "verify.CTR=/var/lib/rancher/k3s/data/current/bin/ctr",
        "verify.CONTAINERD=/var/lib/rancher/k3s/data/current/bin/containerd",
        "verify.REGISTRIES=docker.io ghcr.io quay.io registry.k8s.io reg.kyverno.io",
    ]
    # What the gate hashes (the op's lines) is what the reader expects.
    probe_lines = "".join(f"{line}\n" for line in lines if line.startswith("probe."))
    assert hashlib.sha256(probe_lines.encode()).hexdigest() == (
        read_access.expected_params_sha256(settings, node, "probe")
    )
    # The probe's parameters are exactly the apply identity's probe command's.
    exported = dict(re.findall(r"^export (\w+)=(\S+)$", probe_step(settings, node).command, re.M))
    assert {k: v.strip("'") for k, v in exported.items()} == {
        line.split("=", 1)[0].removeprefix("probe."): line.split("=", 1)[1]
        for line in lines
        if line.startswith("probe.")
    }
    with pytest.raises(ValueError, match="cannot be installed"):
        conf_lines("probe", {"CONFIG_FILE": "/etc/x\nverify.CTR=/tmp/evil"})
    with pytest.raises(ValueError, match="unknown read operation"):
        conf_lines("shell", {})


def test_the_install_bundle_is_every_file_once_in_the_scripts_order() -> None:
    settings = settings_with_read()
    bundle = read_access.bundle(settings, settings.nodes[0], FLAVOURS["containerd"])
    headers = re.findall(r"^# registry-mirrors-read-file: (\S+) (\d+)$", bundle, re.M)
    assert [name for name, _ in headers] == [
        "read-gate.sh", "probe.sh", "verify-node.sh", "read-access.conf", "authorized_keys",
        "sudoers",
    ]  # fmt: skip
    # The byte counts add up: install-read-access.sh reads exactly that many bytes per file.
    rest = bundle.encode()
    for name, size in headers:
        line = f"# registry-mirrors-read-file: {name} {size}\n".encode()
        assert rest.startswith(line), name
        rest = rest[len(line) + int(size) :]
    assert rest == b""


def test_the_gate_answer_is_told_from_anything_else() -> None:
    answer = read_access.parse_gate_answer(
        "read_access=1 op=probe scripts_sha256=aa params_sha256=bb\nflavour=containerd\n"
    )
    assert answer is not None
    assert (answer.operation, answer.scripts_sha256, answer.params_sha256) == ("probe", "aa", "bb")
    assert answer.output == "flavour=containerd\n"
    assert read_access.parse_gate_answer("flavour=containerd\n") is None
    assert read_access.parse_gate_answer("") is None
    with pytest.raises(ValueError):
        read_access.read_request("probe", ["docker.io/x:1"])
    assert read_access.read_request("verify", ["docker.io/x:1"]).command == "verify docker.io/x:1"


# --- who answers ---------------------------------------------------------------------------------


def _gate(settings: Settings, *, params: str | None = None, scripts: str | None = None) -> str:
    node = settings.nodes[0]
    return (
        "read_access=1 op=probe "
        f"scripts_sha256={scripts or read_access.expected_scripts_sha256('probe')} "
        f"params_sha256={params or read_access.expected_params_sha256(settings, node, 'probe')}\n"
    )


def _runner(read: StepRun, apply: StepRun) -> tuple[Callable[..., StepRun], list[str]]:
    asked: list[str] = []

    def run(node, step: Step) -> StepRun:
        asked.append(node.ssh_user)
        return read if node.ssh_user != "root" else apply

    return run, asked


PROBE = "flavour=containerd\n"
APPLIED = StepRun(0, "applied\n", "")
REFUSED_KEY = StepRun(255, "", "root@10.0.20.21: Permission denied (publickey).")


@pytest.mark.parametrize(
    ("read", "apply", "asked", "stdout", "fallback", "warning"),
    [
        # The read identity's own answer: the apply identity is never asked.
        ("ok", APPLIED, ["registry-mirrors-read"], PROBE, "", ""),
        # Not installed (or the read key not in the agent): the apply identity instead.
        ("denied", APPLIED, ["registry-mirrors-read", "root"], "applied\n", "not accepted", ""),
        # Installed for other parameters: it would read other files; the apply identity instead.
        ("params", APPLIED, ["registry-mirrors-read", "root"], "applied\n", "other parameters", ""),
        # Older scripts: the apply identity when it can, else the node's own probe, warned.
        ("scripts", APPLIED, ["registry-mirrors-read", "root"], "applied\n", "not this", ""),
        ("scripts", REFUSED_KEY, ["registry-mirrors-read", "root"], PROBE, "", "not this"),
        # An older gate refusing the request, a conf it cannot use: the apply identity.
        ("refused", APPLIED, ["registry-mirrors-read", "root"], "applied\n", "refused", ""),
        ("sudo", APPLIED, ["registry-mirrors-read", "root"], "applied\n", "does not work", ""),
    ],
)
def test_the_read_identity_answers_or_the_apply_identity_does_where_it_can_help(
    read: str, apply: StepRun, asked: list[str], stdout: str, fallback: str, warning: str
) -> None:
    settings = settings_with_read()
    answers = {
        "ok": StepRun(0, _gate(settings) + PROBE, ""),
        "denied": StepRun(255, "", "registry-mirrors-read@10.0.20.21: Permission denied (x)."),
        "params": StepRun(0, _gate(settings, params="0" * 64) + PROBE, ""),
        "scripts": StepRun(0, _gate(settings, scripts="0" * 64) + PROBE, ""),
        "refused": StepRun(64, "", "read-gate.sh: refused: unknown request 'probe'"),
        "sudo": StepRun(1, "", "sudo: a password is required"),
    }
    runner, who = _runner(answers[read], apply)
    node = settings.nodes[0]
    got = run_read(settings, node, runner, "probe", probe_step(settings, node), mode="read-first")
    assert who == asked
    assert got.run.stdout == stdout
    assert (fallback in got.fallback) and (bool(got.fallback) == bool(fallback))
    assert (warning in got.warning) and (bool(got.warning) == bool(warning))
    assert got.node.ssh_user == ("root" if got.fallback else "registry-mirrors-read")


def test_no_fallback_past_an_unreachable_node_or_a_changed_host_key() -> None:
    """The apply identity would meet the same node: the read identity's own failure stands,
    naming the node and the user that tried."""
    settings = settings_with_read()
    node = settings.nodes[0]
    for stderr in ("Host key verification failed.", "ssh: connect to host x: No route to host"):
        runner, who = _runner(StepRun(255, "", stderr), APPLIED)
        got = run_read(
            settings, node, runner, "probe", probe_step(settings, node), mode="read-first"
        )
        assert who == ["registry-mirrors-read"]
        assert got.run.exit_code == 255 and got.node.ssh_user == "registry-mirrors-read"


def test_read_only_never_asks_the_apply_identity_and_both_failing_names_both() -> None:
    settings = settings_with_read()
    node = settings.nodes[0]
    denied = StepRun(255, "", "Permission denied (publickey).")
    runner, who = _runner(denied, APPLIED)
    with pytest.raises(NodeStepError) as caught:
        run_read(settings, node, runner, "probe", probe_step(settings, node), mode="read-only")
    assert who == ["registry-mirrors-read"]
    assert str(caught.value).startswith(
        "node k8s-cp-1 (registry-mirrors-read@10.0.20.21:22) probe: the read identity cannot read"
    )
    runner, who = _runner(denied, REFUSED_KEY)
    with pytest.raises(NodeStepError) as caught:
        run_read(settings, node, runner, "probe", probe_step(settings, node), mode="read-first")
    message = str(caught.value)
    assert message.startswith("node k8s-cp-1 (root@10.0.20.21:22) probe: cannot reach the node")
    assert "(tried first as registry-mirrors-read: the read key is not accepted" in message
    assert "\n" not in message


def _without_mark(command: str) -> str:
    return "\n".join(line for line in command.splitlines() if "APPLY_MARK=" not in line)


def _sent(plans: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Each node's steps as sent, APPLY_MARK aside: a node never applied gets a new random mark
    at each planning (components/plan/node_plan.py apply_mark), whoever read it."""
    return {
        name: [
            (
                _without_mark(s.create.command),
                s.create.stdin,
            )
            for s in plan.steps
        ]
        for name, plan in plans.items()
    }


def test_a_fleet_read_says_which_nodes_the_apply_identity_read_and_why() -> None:
    settings = settings_with_read()
    # One node without the read access (new, or never deployed): the apply identity reads it.
    fleet = FakeFleet({"k8s-worker-2": FakeNode(read_installed=False)}, read_access=settings)
    reads: dict = {}
    by_read = plan_fleet(settings, fleet, "read-first", reads)
    by_apply = plan_fleet(settings, FakeFleet(), "apply")
    assert _sent(by_read) == _sent(by_apply)
    assert {name: read.node.ssh_user for name, read in reads.items()} == {
        "k8s-cp-1": "registry-mirrors-read",
        "k8s-worker-1": "registry-mirrors-read",
        "k8s-worker-2": "root",
    }
    notes, warnings = read_summary(settings, reads)
    assert notes == [
        "node k8s-worker-2 read as root (the apply identity), not registry-mirrors-read: the read "
        "key is not accepted (read access not installed on the node yet, or the read key is not "
        "in the agent)"
    ]
    assert warnings == []

    with pytest.raises(FleetReadError) as caught:
        plan_fleet(settings, FakeFleet(), "read-only")
    assert len(caught.value.problems) == 3


# --- under mocks: the install step, and who reads in a preview and in an up ----------------------


def _config(raw: dict) -> tuple[dict, list[str]]:
    config = {f"registry-mirrors:{key}": value for key, value in raw.items()}
    config["registry-mirrors:proxmoxApiToken"] = TOKEN
    return config, ["registry-mirrors:proxmoxApiToken"]


@pytest.fixture(autouse=True)
def agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/test-agent.sock")


def _raw_with_read() -> dict:
    raw = sample_raw()
    raw["nodeAccess"] = {"readPublicKeys": [READ_KEY]}
    return raw


@pulumi.runtime.test
def test_the_install_step_is_secret_free_pinned_first_and_kept_on_delete():
    raw = _raw_with_read()
    mocks = install_mocks(*_config(raw))
    mocks.outputs_for[COMMAND] = fake_node_outputs
    fleet = FakeFleet()
    exports = program.run(runner=fleet)
    pinned = {node["name"]: node["sshHostPublicKey"] for node in raw["nodes"]}

    def check(_):
        # `pulumi up` reads with the apply identity (its own probe): never the read user.
        assert {user for _, user, _ in fleet.calls} == {"root"}
        for name, host_key in pinned.items():
            install = mocks.named(f"containerd-{name}-read-access")
            inputs = install.inputs
            connection = plain(inputs["connection"])
            # The apply identity, verified: the node's pinned key, the agent (no private key).
            assert connection["hostKey"] == host_key
            assert connection["user"] == "root"
            assert connection["agentSocketPath"] == "/run/test-agent.sock"
            assert "privateKey" not in connection and "password" not in connection
            # Secret-free: no secret input of ours (pulumi-command's SDK marks every
            # `connection` secret itself), no secret output: the diff shows it as text.
            for key, value in inputs.items():
                assert key == "connection" or not is_secret(value), (install.name, key)
            assert set(install.additional_secret_outputs) <= {"connection"}
            assert inputs.get("logging") != "none"
            stdin = inputs["stdin"]
            assert "export READ_USER=registry-mirrors-read" in inputs["create"]
            assert "install-read-access.sh" in inputs["create"]
            # No delete: leaving the program runs nothing; state: restored removes it.
            assert not inputs.get("delete")
            assert install.retain_on_delete
            assert 'restrict,command="exec sudo -n ' in stdin
            assert READ_KEY.split()[1] in stdin
            assert "registry-mirrors-read ALL=(root) NOPASSWD: " in stdin
            assert "probe.CONFIG_FILE=/etc/containerd/config.toml\n" in stdin
            assert "PRIVATE KEY" not in stdin and "s3cret" not in stdin
            # First in the node's chain: its hosts step waits for it.
            assert install.name in mocks.named(f"containerd-{name}-hosts").depends_on
            assert (install.parent or "").startswith("containerd-batch-")
            assert install.replace_on_changes in ([], ["triggers[*]"])

    return pulumi.Output.all(*exports.values()).apply(check)


def _known(value: Any) -> Any:
    """A value unknown in a preview as one comparable marker: with TLS on, a hosts step's stdin
    carries the CA the cache host's trust step prints, which a preview of a new stack does not
    know yet (each unknown is its own object, equal to no other)."""
    return "<unknown in the preview>" if isinstance(value, Unknown) else value


def test_a_preview_reads_with_the_read_identity_and_plans_the_same():
    """What a pull request's preview does: every node asked as the read user first, nothing of
    the apply identity when the read access answers, and the same step inputs as a read by the
    apply identity."""
    raw = _raw_with_read()
    settings = load_settings(raw)

    def run(fleet: FakeFleet) -> dict[str, dict]:
        mocks = install_mocks(*_config(raw), preview=True)

        @pulumi.runtime.test
        def preview():
            return pulumi.Output.all(*program.run(runner=fleet).values())

        preview()
        loop = asyncio.get_event_loop()
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0.01))
        return {
            r.name: {
                "create": _without_mark(plain(r.inputs.get("create")) or ""),
                "stdin": _known(plain(r.inputs.get("stdin"))),
            }
            for r in mocks.resources
            if r.type == COMMAND and r.name.startswith("containerd-")
        }

    by_read_fleet = FakeFleet(read_access=settings)
    by_read = run(by_read_fleet)
    assert {user for _, user, _ in by_read_fleet.calls} == {"registry-mirrors-read"}
    assert {command for _, _, command in by_read_fleet.calls} == {"probe"}
    # The same preview where no read access is installed: the apply identity reads, the same.
    by_apply_fleet = FakeFleet()
    assert run(by_apply_fleet) == by_read
    assert [user for _, user, _ in by_apply_fleet.calls].count("root") == 3
    assert len(by_read) == 9  # read-access, hosts, config per node


def test_a_held_node_keeps_its_read_access_step_and_a_restored_one_removes_it() -> None:
    """With the fleet steps of issue 27: a held node keeps every step it has, the read access's
    first (else its install would leave the state); ``restored`` removes the read access after
    the restore steps (no step has a delete that would). Control: without the read identity,
    neither step is there."""
    raw = _raw_with_read()
    first, second = raw["nodes"][0]["name"], raw["nodes"][1]["name"]
    raw["nodes"][0]["state"] = "held"
    raw["nodes"][1]["state"] = "restored"
    settings = load_settings(raw)
    plans = plan_fleet(settings, FakeFleet())
    held = plans[first]
    assert isinstance(held, HeldPlan) and held.roles == ("read-access", "hosts", "config")
    restored = plans[second]
    assert [s.role for s in restored.steps] == [
        "restore-config", "restore-hosts", "remove-read-access",
    ]  # fmt: skip
    assert "export REMOVE=1" in restored.steps[-1].create.command

    del raw["nodeAccess"]
    plain_plans = plan_fleet(load_settings(raw), FakeFleet())
    unheld = plain_plans[first]
    assert isinstance(unheld, HeldPlan) and unheld.roles == ("hosts", "config")
    assert [s.role for s in plain_plans[second].steps] == ["restore-config", "restore-hosts"]
