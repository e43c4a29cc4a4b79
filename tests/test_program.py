"""The whole program under mocks: config is validated before ANY resource is registered."""

from __future__ import annotations

import asyncio
import base64

import pulumi
import pytest
import yaml

from components import program, registry_vm
from tests.mocks import (
    COMMAND,
    TEST_CA_PEM,
    FakeFleet,
    FakeNode,
    Registered,
    fake_node_outputs,
    install_mocks,
    is_secret,
    plain,
)
from tests.sample import sample_raw

TOKEN = "pulumi@pve!registry=00000000-1111-2222-3333-444444444444"


def _registered(mocks) -> list:
    """Resources the mocks saw, after letting pending registrations run (they are async)."""
    loop = asyncio.get_event_loop()
    for _ in range(20):
        loop.run_until_complete(asyncio.sleep(0.01))
    return mocks.resources


def _config(raw: dict, token: str | None = TOKEN) -> tuple[dict, list[str]]:
    config = {f"registry-mirrors:{key}": value for key, value in raw.items()}
    secret_keys = []
    if token is not None:
        config["registry-mirrors:proxmoxApiToken"] = token
        secret_keys.append("registry-mirrors:proxmoxApiToken")
    return config, secret_keys


@pytest.fixture(autouse=True)
def agent(monkeypatch):
    monkeypatch.setenv("SSH_AUTH_SOCK", "/run/test-agent.sock")


@pulumi.runtime.test
def test_good_config_builds_every_part_and_exports_the_contract():
    raw = sample_raw()
    config, secret_keys = _config(raw)
    config["registry-mirrors:upstreamCredentials"] = {
        "docker.io": {"username": "me", "password": "hub-token-123"}
    }
    secret_keys.append("registry-mirrors:upstreamCredentials")
    mocks = install_mocks(config, secret_keys)
    mocks.outputs_for[COMMAND] = fake_node_outputs
    exports = program.run(runner=FakeFleet())

    def check(values):
        vm, mirrors, containerd, nodes, rollout, talos = values
        registries = yaml.safe_load(talos)["machine"]["registries"]
        assert registries["mirrors"]["ghcr.io"] == {"endpoints": ["https://10.0.20.10:5012"]}
        # Talos trusts exactly the CA the VM made (base64 of the PEM the trust step printed).
        ca = registries["config"]["10.0.20.10:5012"]["tls"]["ca"]
        assert base64.b64decode(ca).decode() == TEST_CA_PEM
        assert vm == {
            "vmId": 210,
            "address": "10.0.20.10",
            "sshUser": "debian",
            "proxmoxNode": "pve",
            "diskUsageThresholdPercent": 80,
            # 70 % of the 100 GiB disk shared by the five caches (components/settings/budget.py).
            # 100 GiB: 70 % of it less the front's 8 GiB store, in five (12.4 GiB each).
            "cacheBudgets": {u["container"]: 13314398617 for u in _default_upstreams()},
            "sshHostPublicKey": _generated_public_key(mocks),
        }
        assert mirrors["docker.io"]["endpoint"] == "https://10.0.20.10:5002"
        assert containerd["caFile"] == {
            "path": "/etc/containerd/certs.d/registry-mirrors-ca.pem",
            "pem": TEST_CA_PEM,
        }
        hosts = containerd["hostsToml"]["docker.io"]
        assert '[host."https://10.0.20.10:5002"]' in hosts and "registry-mirrors-ca.pem" in hosts
        assert mirrors["docker.io"]["server"] == "https://registry-1.docker.io"
        assert containerd["configPath"] == "/etc/containerd/certs.d"
        assert set(containerd["hostsToml"]) == {u["host"] for u in _default_upstreams()}
        assert set(nodes) == {"k8s-cp-1", "k8s-worker-1", "k8s-worker-2"}
        assert nodes["k8s-cp-1"]["containerdVersion"] == "1.6.20"
        assert rollout[0] == ["k8s-cp-1"]
        types = {r.type for r in mocks.resources}
        for expected in (
            "proxmoxve:index/vmLegacy:VmLegacy",
            "proxmoxve:firewall/rulesLegacy:RulesLegacy",
            "docker:index/container:Container",
            "command:remote:Command",
        ):
            assert expected in types, expected
        # Docker Hub credentials: in the Docker Hub config only, and secret there.
        config_cmd = mocks.named("registry-mirrors-registry-config")
        assert is_secret(config_cmd.inputs["stdin"])
        for resource in mocks.resources:
            for key, value in resource.inputs.items():
                if not is_secret(value):
                    assert "hub-token-123" not in repr(value), (resource.name, key)

    return pulumi.Output.all(
        exports["registryVm"],
        exports["mirrors"],
        exports["containerd"],
        exports["nodes"],
        exports["rollout"],
        exports["talosPatch"],
    ).apply(check)


def _generated_public_key(mocks) -> str:
    from components.ssh_host_key import public_key_of

    return public_key_of(plain(mocks.named("registry-vm-host-key").inputs["input"]))


def test_unpinned_nodes_stop_the_program_before_any_resource():
    """Fail closed: a node with no sshHostPublicKey is named, with the command that pins it,
    before any node is read or any resource registered (the fake fleet would answer any read)."""
    raw = sample_raw()
    del raw["nodes"][0]["sshHostPublicKey"]
    del raw["nodes"][2]["sshHostPublicKey"]
    mocks = install_mocks(*_config(raw))
    fleet = FakeFleet()
    with pytest.raises(pulumi.RunError) as caught:
        program.run(runner=fleet)
    lines = str(caught.value).splitlines()
    assert lines == [
        "2 of 3 node(s) have no pinned host key (nothing was changed):",
        "  node k8s-cp-1 (root@10.0.20.21:22): no pinned host key (nodes[].sshHostPublicKey), so "
        "nothing is sent to it; compare and pin its key: python scripts/pin_host_keys.py "
        "--stack test",
        "  node k8s-worker-2 (root@10.0.20.32:22): no pinned host key (nodes[].sshHostPublicKey), "
        "so nothing is sent to it; compare and pin its key: python scripts/pin_host_keys.py "
        "--stack test",
    ]
    assert fleet.nodes == {}, "no node was read"
    assert _registered(mocks) == []


@pulumi.runtime.test
def test_no_provider_gets_an_unverified_connection():
    """Every remote.Command of the whole program has ``hostKey`` (pulumi-command ignores the
    host key without it): the VM's steps the generated key, each node's steps its pinned key;
    pulumi-docker's ssh:// transport pins the generated key with strict checking and reads no
    known_hosts file; the private key is in no output and in no plain input."""
    mocks = install_mocks(*_config(sample_raw()))
    mocks.outputs_for[COMMAND] = fake_node_outputs
    exports = program.run(runner=FakeFleet())
    pinned = {node["name"]: node["sshHostPublicKey"] for node in sample_raw()["nodes"]}

    def check(values):
        private = plain(mocks.named("registry-vm-host-key").inputs["input"])
        public = _generated_public_key(mocks)
        commands = mocks.of_type(COMMAND)
        assert len(commands) > 10
        for command in commands:
            host_key = plain(command.inputs["connection"]).get("hostKey")
            node = command.name.split("-", 1)[1].rsplit("-", 1)[0]
            expected = pinned[node] if command.name.startswith("containerd-") else public
            assert host_key == expected, command.name
        [provider] = [r for r in mocks.resources if r.type == "pulumi:providers:docker"]
        opts = yaml.safe_load(provider.inputs["sshOpts"])
        assert "StrictHostKeyChecking=yes" in opts
        assert f"KnownHostsCommand=/bin/echo '10.0.20.10 {public}'" in opts
        assert {"UserKnownHostsFile=/dev/null", "GlobalKnownHostsFile=/dev/null"} <= set(opts)
        assert not any("accept-new" in o or "StrictHostKeyChecking=no" in o for o in opts)
        body = private.split("\n")[1]
        assert body not in repr(values), "key material in a stack output"
        for resource in mocks.resources:
            for key, value in resource.inputs.items():
                if not is_secret(value):
                    assert body not in repr(value), (resource.name, key)

    return pulumi.Output.all(*exports.values()).apply(check)


def _default_upstreams():
    from components.settings import DEFAULT_UPSTREAMS

    return [u.model_dump() for u in DEFAULT_UPSTREAMS]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda raw: raw["vm"].update(gateway="10.9.9.9"), "vm.gateway"),
        (lambda raw: raw.update(upstreamz=[]), "upstreamz: unknown key"),
        (
            lambda raw: raw["nodes"].append({"name": "dup", "address": "10.0.20.21"}),
            "nodes[3].address",
        ),
    ],
)
def test_bad_settings_register_zero_resources(mutate, expected):
    raw = sample_raw()
    mutate(raw)
    mocks = install_mocks(*_config(raw))
    with pytest.raises(pulumi.RunError) as caught:
        program.run()
    assert expected in str(caught.value)
    assert "nothing was changed" in str(caught.value)
    assert _registered(mocks) == []


def test_missing_token_is_reported_with_the_command_to_set_it():
    mocks = install_mocks(*_config(sample_raw(), token=None))
    with pytest.raises(pulumi.RunError) as caught:
        program.run()
    assert "proxmoxApiToken: required secret is missing" in str(caught.value)
    assert _registered(mocks) == []


def test_token_set_in_plain_text_is_refused():
    config, _ = _config(sample_raw())
    mocks = install_mocks(config, [])
    with pytest.raises(pulumi.RunError) as caught:
        program.run()
    assert "proxmoxApiToken: must be set as a secret" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert _registered(mocks) == []


def test_no_ssh_agent_is_a_clear_error_before_any_resource(monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK")
    mocks = install_mocks(*_config(sample_raw()))
    with pytest.raises(pulumi.RunError) as caught:
        program.run()
    assert "SSH_AUTH_SOCK is not set" in str(caught.value)
    assert _registered(mocks) == []


def test_preview_shows_every_node_step_with_its_real_inputs():
    """What `pulumi preview` does in pull-request checks: the nodes are read while the program
    runs, so every node step is registered with known inputs (the diff a reviewer reads). The
    CA the hosts steps carry comes from the VM's trust step: in a stack that exists, from its
    state (here the mocks' answer); a brand-new stack's preview shows it as unknown."""
    mocks = install_mocks(*_config(sample_raw()), preview=True)
    mocks.outputs_for[COMMAND] = fake_node_outputs

    @pulumi.runtime.test
    def preview():
        return pulumi.Output.all(*program.run(runner=FakeFleet()).values())

    preview()
    steps = {r.name: r for r in _registered(mocks) if r.type == COMMAND}
    for node in ("k8s-cp-1", "k8s-worker-1", "k8s-worker-2"):
        for role in ("hosts", "config"):
            stdin = plain(steps[f"containerd-{node}-{role}"].inputs["stdin"])
            assert isinstance(stdin, str) and stdin, (node, role)
    names = {r.name for r in _registered(mocks)}
    assert {"registry-vm-vm", "registry-mirrors-registry", "registry-vm-wait-cloud-init"} <= names


def test_a_node_that_does_not_answer_stops_the_program_before_any_resource():
    mocks = install_mocks(*_config(sample_raw()))
    fleet = FakeFleet({"k8s-worker-1": FakeNode(reachable=False)})
    with pytest.raises(pulumi.RunError) as caught:
        program.run(runner=fleet)
    assert "cannot read 1 of 3 node(s) (nothing was changed)" in str(caught.value)
    assert "node k8s-worker-1 (root@10.0.20.31:22) probe: cannot reach" in str(caught.value)
    assert _registered(mocks) == []


def test_a_held_node_that_is_down_lets_the_vm_and_the_rest_of_the_fleet_deploy():
    """The same unreachable node as above, held out (nodes[].state: held): it is not read, and
    the VM, the caches and the other nodes are registered as usual. The registrations are
    checked after the whole run (they are async): checked inside the `nodes` export's apply, the
    held step was sometimes not registered yet (seen once in CI)."""
    raw = sample_raw()
    raw["nodes"][1]["state"] = "held"
    mocks = install_mocks(*_config(raw))
    mocks.outputs_for[COMMAND] = fake_node_outputs
    fleet = FakeFleet({"k8s-worker-1": FakeNode(reachable=False)})
    seen: dict = {}

    @pulumi.runtime.test
    def run():
        exports = program.run(runner=fleet)
        return exports["nodes"].apply(seen.update)

    run()
    assert fleet.reads["k8s-worker-1"] == 0
    assert fleet.reads["k8s-cp-1"] == fleet.reads["k8s-worker-2"] == 1
    assert seen["k8s-worker-1"]["state"] == "held"
    assert seen["k8s-worker-2"]["state"] == "managed"
    names = {r.name for r in _registered(mocks)}
    assert {
        "registry-vm-vm",
        "registry-mirrors-registry",
        "containerd-k8s-worker-2-config",
        "containerd-k8s-worker-1-config",
    } <= names
    held = mocks.named("containerd-k8s-worker-1-config")
    assert "create" not in held.inputs and "createdAt" not in held.inputs
    assert "create" in held.ignore_changes and held.retain_on_delete


def test_with_tls_the_vm_switches_only_after_the_last_node_step():
    """FrontSwitch (the certificate from the CA the nodes now trust, plain HTTP refused) waits for
    the last step of every node of the last batch: the gates make those wait for every earlier
    batch, and the engine creates nothing after a step that failed."""
    raw = sample_raw()
    raw["tls"] = {"enabled": True}
    mocks = install_mocks(*_config(raw))
    mocks.outputs_for[COMMAND] = fake_node_outputs
    program.run(runner=FakeFleet())
    names = {r.name for r in _registered(mocks)}
    assert {"registry-front-switch-tls-issue", "registry-front-switch-front"} <= names
    issue = mocks.named("registry-front-switch-tls-issue")
    # (and the VM, through its id: a new VM gets both steps again)
    assert issue.depends_on == [
        "containerd-k8s-worker-1-config",
        "containerd-k8s-worker-2-config",
        "registry-vm-host-key",  # the VM's key, pinned on every SSH step
        "registry-vm-vm",
    ]
    front = mocks.named("registry-front-switch-front")
    assert front.depends_on == [
        "registry-front-switch-tls-issue",
        "registry-vm-host-key",
        "registry-vm-vm",
    ]
    inputs = plain(front.inputs)
    assert "export RESTART=0" in inputs["create"]
    assert "registry-mirrors-plain-off.config" in inputs["stdin"]


def _without_mark(command: str) -> str:
    return "\n".join(line for line in command.splitlines() if "APPLY_MARK=" not in line)


def _registrations(raw: dict) -> dict[str, Registered]:
    mocks = install_mocks(*_config(raw))
    mocks.outputs_for[COMMAND] = fake_node_outputs
    program.run(runner=FakeFleet())
    return {r.name: r for r in _registered(mocks)}


def test_turning_tls_on_replaces_no_vm_keeps_every_cache_volume_and_adds_only_the_tls_steps(
    monkeypatch: pytest.MonkeyPatch,
):
    """The upgrade of an existing stack to TLS (the default) as the engine will diff it: the VM,
    its vendor-data and firewall options have the same inputs (nothing replaced, the cache disk
    kept); each cache container keeps its volumes (the same host paths: the cached data stays);
    what is new is the trust step, the installed renewal script and FrontSwitch; the node steps
    keep their names (an update, never a replacement that would restore a node)."""
    # The VM's host key: the engine's Stash keeps the one the stack made (its input is ignored
    # after the create); under mocks each run would generate another, so both runs get one.
    key = registry_vm.generate_host_key()
    monkeypatch.setattr(registry_vm, "generate_host_key", lambda: key)
    raw = sample_raw()
    raw["tls"] = {"enabled": False}
    before = _registrations(raw)
    after = _registrations(sample_raw())

    for name in ("registry-vm-vm", "registry-vm-vendor-data", "registry-firewall-options"):
        assert plain(before[name].inputs) == plain(after[name].inputs), name
    containers = [n for n, r in after.items() if r.type == "docker:index/container:Container"]
    assert containers
    for name in containers:
        old, new = plain(before[name].inputs), plain(after[name].inputs)
        assert old["volumes"] == new["volumes"], name
        assert old["ports"] == new["ports"], name  # the registry's ports do not depend on TLS
    added = set(after) - set(before)
    assert added == {
        "registry-mirrors-tls-trust",
        "registry-mirrors-tls-script",
        "registry-front-switch",
        "registry-front-switch-tls-issue",
        "registry-front-switch-front",
    }, added
    assert not set(before) - set(after)
    # Every node step is still there under its name: updated in place (no trigger to replace).
    for node in ("k8s-cp-1", "k8s-worker-1", "k8s-worker-2"):
        hosts = f"containerd-{node}-hosts"
        assert plain(before[hosts].inputs)["stdin"] != plain(after[hosts].inputs)["stdin"]
        assert "triggers" not in plain(after[hosts].inputs)
        config = f"containerd-{node}-config"
        # (APPLY_MARK aside: a node never applied gets a new mark at each planning)
        assert _without_mark(before[config].inputs["create"]) == _without_mark(
            after[config].inputs["create"]
        )
