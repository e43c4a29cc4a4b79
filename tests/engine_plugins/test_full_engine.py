"""The program's components through the real engine AND real provider plugins (run by hand).

What runs, and what does not (docs/engine-proof.md has the results of the run):
- Nodes (pulumi-command): the program's ``ContainerdMirrors`` with its real ``remote.Command``
  steps, on test hosts (tests/integration/testhost.py: sshd + containerd 1.6, 1.7 and 2.1 in
  network namespaces), read by the program's own ``plan_fleet`` over the system ssh client. The
  caches for these nodes are Distribution proxies rendered by the program's renderer, run as
  local processes on an address every node is routed to (an address on this host's loopback
  device).
- Caches (pulumi-docker, pulumi-command): the program's ``RegistryMirrors`` over ``ssh://`` to
  the VM tier's QEMU guest (tests/vm: booted from the program's own cloud-init), the guest
  standing in for the VM pulumi-proxmoxve would create; then what a preview of a change to those
  existing caches needs from the VM (with and without a key, with and without ``--refresh``),
  read from the guest's sshd and dockerd logs (issue 21 item 2).
- Proxmox: ``pulumi preview`` of the program (RegistryVm, RegistryFirewall, RegistryMirrors) for
  stacks/Pulumi.dev.yaml with the real pulumi-proxmoxve, pulumi-docker and pulumi-command
  plugins, its endpoint moved to a loopback port nothing answers, in a network namespace with
  nothing but loopback (whatever a plugin tried to reach, it could reach nothing else).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pytest

from components import stack_config
from components.containerd_mirrors import ContainerdMirrors
from components.firewall import RegistryFirewall
from components.fleet import plan_fleet, ssh_runner
from components.registry_mirrors import RegistryMirrors
from components.registry_vm import RegistryVm, RegistryVmArgs
from components.settings import Settings, load_settings
from tests.engine.inline import EngineFailed, EngineStack, EventLog
from tests.engine.project import PROJECT, copy_project, edit_stack_file, project_stack
from tests.engine.rollout import NAME, assert_created_in_rollout_order
from tests.engine_plugins.conftest import PluginEngine
from tests.integration import cri_client
from tests.integration.containerd_versions import V1_6, V1_7, V2_1, ContainerdVersion
from tests.integration.registry_proc import RegistryProcess, running_registry
from tests.integration.test_node_e2e import (
    proxy_config,
    requests_in,
    start_config,
    upstream_registry_config,
)
from tests.integration.testhost import NodeHost, node_host
from tests.prereq import require_binary, require_root
from tests.sample import sample_raw

pytestmark = [pytest.mark.engine_plugins, pytest.mark.integration]

IMAGE = "docker.io/library/x:1"


@contextlib.contextmanager
def cache_address(hosts: list[NodeHost]) -> Iterator[str]:
    """One address for "the registry VM" that every node reaches: a /32 on this host's loopback
    device (no dummy interfaces in this kernel), routed from each node's namespace through its
    veth. Removed afterwards."""
    token = secrets.token_hex(2)
    address = f"10.232.{int(token[:2], 16)}.{int(token[2:], 16) % 200 + 10}"
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    try:
        for host in hosts:
            subprocess.run(
                ["ip", "netns", "exec", host.netns, "ip", "route", "add", f"{address}/32",
                 "via", host.host_address],
                check=True,
            )  # fmt: skip
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "lo"], check=False)


def fleet_settings(address: str, hosts: list[NodeHost], restart: dict[str, str]) -> Settings:
    raw = sample_raw()
    raw["vm"]["address"] = f"{address}/24"
    raw["vm"]["gateway"] = address.rsplit(".", 1)[0] + ".1"
    raw["upstreams"] = [
        {
            "host": "docker.io",
            "port": 5000,
            "container": "registry",
            "server": f"http://{address}:6000",
        }
    ]
    raw["nodes"] = [
        {
            "name": f"node-{index}",
            "address": host.node_address,
            "restartCommand": restart.get(f"node-{index}", host.restart_command),
            "sshHostPublicKey": host.host_public_key,
        }
        for index, host in enumerate(hosts, start=1)
    ]
    raw["containerd"] = {"batchSize": 1, "restartTimeoutSeconds": 20}
    return load_settings(raw)


def one_agent(hosts: list[NodeHost]) -> str:
    """The program's SSH story: ONE agent for every node. The first host's agent takes the
    others' keys."""
    socket = hosts[0].agent_socket
    for host in hosts[1:]:
        subprocess.run(
            ["ssh-add", "-q", str(host.key)],
            env={**os.environ, "SSH_AUTH_SOCK": socket},
            check=True,
            capture_output=True,
        )
    return socket


def nodes_program(settings: Settings, agent: str, seen: list[Any]) -> Any:
    """components/program.py for the nodes: read and plan every node over SSH, then the caches
    (a Stash stands in: the caches here are local processes), then the rollout after them."""

    def run() -> None:
        plans = plan_fleet(settings, ssh_runner(agent))
        seen.append(plans)
        caches = pulumi.Stash("registry-mirrors", input={"stand-in": "local Distribution"})
        mirrors = ContainerdMirrors(NAME, settings, plans, agent, depends_on=[caches])
        pulumi.export("rollout", mirrors.batches)
        pulumi.export("nodes", mirrors.nodes)

    return run


@contextlib.contextmanager
def fleet(
    tmp_path: Path, versions: list[ContainerdVersion], sabotage: frozenset[int] = frozenset()
) -> Iterator[tuple[list[NodeHost], Settings, str, RegistryProcess, RegistryProcess]]:
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "ssh-add", "docker-registry"):
        require_binary(binary)
    require_root()
    with contextlib.ExitStack() as stack:
        hosts = [
            stack.enter_context(node_host(tmp_path / f"node-{i}", version))
            for i, version in enumerate(versions, start=1)
        ]
        address = stack.enter_context(cache_address(hosts))
        upstream_dir = tmp_path / "upstream"
        shutil.copytree(seed_storage(tmp_path), upstream_dir / "data")
        upstream = stack.enter_context(
            running_registry(
                upstream_registry_config(upstream_dir), upstream_dir, host=address, port=6000
            )
        )
        restart: dict[str, str] = {}
        for index in sabotage:
            restart[f"node-{index}"] = sabotaging_restart(tmp_path, hosts[index - 1])
        settings = fleet_settings(address, hosts, restart)
        proxy_dir = tmp_path / "proxy"
        proxy = stack.enter_context(
            running_registry(
                proxy_config(settings, settings.upstreams[0], proxy_dir), proxy_dir,
                host=address, port=5000,
            )
        )  # fmt: skip
        for host in hosts:
            # The state the program fixes: a wildcard mirror in the deprecated registry.mirrors.
            host.start_containerd(start_config(f"http://{address}:5000"))
            assert host.cri_status() == "ok"
        yield hosts, settings, one_agent(hosts), upstream, proxy


def seed_storage(tmp_path: Path) -> Path:
    """library/x:1 (multi-arch, built offline) in a Distribution storage dir."""
    from tests.integration.oci_image import build_multiarch_image
    from tests.integration.registry_proc import plain_registry_config
    from tests.integration.test_node_e2e import push

    root = tmp_path / "seed"
    image = build_multiarch_image(root / "image", "1")
    with running_registry(plain_registry_config(root / "data"), root) as registry:
        push(image, registry, "library/x")
    return root / "data"


def sabotaging_restart(tmp_path: Path, host: NodeHost) -> str:
    """A restart command that breaks containerd's CRI plugin whenever the config it restarts
    with has config_path (the migrated one): containerd refuses registry.mirrors next to it.
    So the node fails its CRI check after the change, and its rollback (the original config,
    no config_path) comes up fine."""
    script = tmp_path / f"sabotage-{host.netns}.sh"
    script.write_text(
        "set -e\n"
        "if grep -q config_path /etc/containerd/config.toml; then\n"
        '  printf \'\\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."quay.io"]\\n'
        '  endpoint = ["http://127.0.0.1:1"]\\n\' >> /etc/containerd/config.toml\n'
        "fi\n"
        f"exec {host.restart_command}\n"
    )
    return f"bash {script}"


def command_ops(log: EventLog) -> dict[str, str]:
    return {
        s.name: s.op
        for s in log.steps()
        if s.phase == "start" and s.type == "command:remote:Command"
    }


def plugin_warnings(log: EventLog) -> list[str]:
    return sorted(
        {m.strip() for m in log.text.splitlines() if "resource plugin" in m and "version" in m}
    )


def test_nodes_rollout_no_change_hand_edit_and_destroy(
    plugin_engine: PluginEngine, tmp_path: Path, record_property: Any
) -> None:
    with fleet(tmp_path, [V1_6, V1_7, V2_1]) as (hosts, settings, agent, _upstream, proxy):
        originals = {h.netns: h.config_file.read_bytes() for h in hosts}
        seen: list[Any] = []
        stack = EngineStack.create(
            plugin_engine.engine, tmp_path, "nodes", nodes_program(settings, agent, seen),
            env=plugin_engine.env,
        )  # fmt: skip

        log = stack.up()
        record_property("plugin warnings (up)", plugin_warnings(log))
        batches = [["node-1"], ["node-2"], ["node-3"]]
        assert_created_in_rollout_order(log, batches, seen[-1])
        assert set(command_ops(log).values()) == {"create"}
        report = stack.stack.outputs()["nodes"].value
        for index, host in enumerate(hosts, start=1):
            assert host.cri_status() == "ok"
            assert report[f"node-{index}"]["configChanged"] is True
            assert report[f"node-{index}"]["restarted"] is True
            before = requests_in(proxy, "ns=docker.io")
            cri_client.pull_image(host.containerd_socket, IMAGE)
            assert requests_in(proxy, "ns=docker.io") > before, f"node-{index} bypassed the cache"

        pids = [h.containerd_pid for h in hosts]
        log = stack.preview(expect_no_changes=True)
        assert log.changed() == {}
        log = stack.up(expect_no_changes=True)
        assert [h.containerd_pid for h in hosts] == pids, "an unchanged fleet restarted containerd"

        edited = hosts[1]
        edited.config_file.write_text(
            edited.config_file.read_text()
            + '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
            # Our own cache, as someone re-adding the old wildcard-era entry would write it:
            # the hosts.toml bundle stays the same, only config.toml differs.
            + f'  endpoint = ["http://{settings.cache_host.address}:5000"]\n'
        )
        log = stack.preview()
        assert log.changed() == {f"{NAME}-node-2-config": "update"}
        stack.up()
        assert edited.cri_status() == "ok"
        assert stack.preview(expect_no_changes=True).changed() == {}

        log = stack.destroy()
        assert stack.our_resources() == []
        for host in hosts:
            assert host.config_file.read_bytes() == originals[host.netns], host.containerd
            assert not (host.etc_containerd / "certs.d" / "docker.io").exists()
            assert host.cri_status() == "ok"


def test_a_node_failing_its_cri_check_stops_the_rollout(
    plugin_engine: PluginEngine, tmp_path: Path
) -> None:
    with fleet(tmp_path, [V1_6, V1_6, V1_6], sabotage=frozenset({2})) as (
        hosts,
        settings,
        agent,
        _u,
        _p,
    ):
        originals = [h.config_file.read_bytes() for h in hosts]
        third_pid = hosts[2].containerd_pid
        stack = EngineStack.create(
            plugin_engine.engine, tmp_path, "failing", nodes_program(settings, agent, []),
            env=plugin_engine.env,
        )  # fmt: skip
        failure = stack.fails("up")
        assert f"{NAME}-node-2-config" in failure.text
        assert "rolled back" in failure.text or "CRI" in failure.text, failure.text[-3000:]
        # Canary migrated; the failing node back to its original, CRI ok; the later batch
        # never touched: same file, same daemon, no hosts.toml, no resource.
        assert hosts[0].config_file.read_bytes() != originals[0]
        assert hosts[1].config_file.read_bytes() == originals[1]
        assert hosts[1].cri_status() == "ok"
        assert hosts[2].config_file.read_bytes() == originals[2]
        assert hosts[2].containerd_pid == third_pid
        assert not (hosts[2].etc_containerd / "certs.d").exists()
        names = {r["urn"].rsplit("::", 1)[-1] for r in stack.our_resources()}
        assert not {n for n in names if n.startswith(f"{NAME}-node-3")}
        assert f"{NAME}-batch-2" not in names
        stack.destroy()
        assert hosts[0].config_file.read_bytes() == originals[0]


# --- Proxmox: a preview with the real plugins, nothing reachable but loopback ------------------


def proxmox_program() -> None:
    """components/program.py without the nodes (none in this stack): the VM, its firewall and
    the caches, exactly as program.run builds them."""
    config = stack_config.load()
    settings, secrets_ = config.settings, config.secrets
    vm = RegistryVm(
        "registry-vm",
        RegistryVmArgs(
            settings=settings,
            api_token=pulumi.Output.secret(
                secrets_.proxmox_api_token.get_secret_value() if secrets_.proxmox_api_token else ""
            ),
            agent_socket=os.environ["SSH_AUTH_SOCK"],
        ),
    )
    RegistryFirewall(
        "registry-firewall", provider=vm.provider, node_name=settings.created_vm.proxmox_node,
        vm_id=vm.vm_id, settings=settings,
    )  # fmt: skip
    RegistryMirrors("registry-mirrors", settings=settings, ssh=vm.ssh, ready=vm.ready)


INNER = "REGISTRY_MIRRORS_PROXMOX_PREVIEW_REPORT"


def test_proxmox_preview_with_the_real_plugins(
    plugin_engine: PluginEngine, tmp_path: Path, record_property: Any
) -> None:
    """Runs its inner half again inside a new network namespace holding only loopback, which
    writes what the engine did to a report file."""
    require_root()
    require_binary("unshare")
    report = tmp_path / "report.json"
    result = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c",
         'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -m engine_plugins '
         '"$1" --basetemp "$2"',
         sys.executable, f"{__file__}::test_proxmox_preview_inner", str(tmp_path / "inner")],
        env={**os.environ, INNER: str(report)},
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    found = json.loads(report.read_text())
    record_property("proxmox preview", found)
    by_type = found["types"]
    # Every resource of the VM, its firewall and the caches, checked by its plugin: all creates.
    for expected in (
        # (the engine's events name each type by its full token)
        "proxmoxve:index/vmLegacy:VmLegacy",
        "proxmoxve:index/fileLegacy:FileLegacy",
        "proxmoxve:firewall/optionsLegacy:OptionsLegacy",
        "proxmoxve:firewall/rulesLegacy:RulesLegacy",
        "docker:index/remoteImage:RemoteImage",
        "docker:index/container:Container",
        "command:remote:Command",
    ):
        assert by_type.get(expected) == ["create"], (expected, by_type)
    assert set(found["ops"].values()) == {"create"}, found["ops"]


def test_proxmox_preview_inner(
    plugin_engine: PluginEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    report = os.environ.get(INNER)
    if not report:
        pytest.skip("run by test_proxmox_preview_with_the_real_plugins inside its namespace")
    monkeypatch.setenv("SSH_AUTH_SOCK", str(tmp_path / "agent.sock"))
    work = copy_project(tmp_path)

    def loopback(config: dict[str, Any]) -> None:
        config[f"{PROJECT}:proxmox"]["endpoint"] = "https://127.0.0.1:1/"
        config.pop(f"{PROJECT}:nodes")

    edit_stack_file(work, "dev", loopback)
    stack = project_stack(
        plugin_engine.engine, tmp_path, "dev", proxmox_program, work=work, env=plugin_engine.env
    )
    log = stack.preview()
    types: dict[str, list[str]] = {}
    for step in log.steps():
        if step.phase == "start" and step.ours:
            types.setdefault(step.type, [])
            if step.op not in types[step.type]:
                types[step.type].append(step.op)
    Path(report).write_text(
        json.dumps(
            {
                "ops": log.ops(),
                "types": types,
                "warnings": plugin_warnings(log),
                "output": log.text[-8000:],
            },
            indent=1,
        )
    )


# --- the caches: pulumi-docker over ssh:// to the VM tier's QEMU guest -------------------------


def _guest_host_key(port: int) -> str:
    """The guest's ed25519 host key, to pin (so nothing is written to a known_hosts file)."""
    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    line = next(line for line in scanned.stdout.splitlines() if "ssh-ed25519" in line)
    return " ".join(line.split()[1:3])


@contextlib.contextmanager
def agent_holding(key: Path, directory: Path) -> Iterator[str]:
    socket = str(directory / "agent.sock")
    agent = subprocess.Popen(
        ["ssh-agent", "-D", "-a", socket], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(250):
            added = subprocess.run(
                ["ssh-add", "-q", str(key)], env={**os.environ, "SSH_AUTH_SOCK": socket},
                capture_output=True, check=False,
            )  # fmt: skip
            if added.returncode == 0:
                break
            time.sleep(0.02)
        yield socket
    finally:
        agent.terminate()
        agent.wait(timeout=10)


@dataclass(frozen=True)
class Contacts:
    """What reached the guest between two marks: sshd's connections (by client port) and the
    Docker daemon's API calls (its debug log) and events."""

    accepted: dict[str, str]  # client port -> the key's fingerprint, for accepted logins
    refused: list[str]  # client ports that never logged in (no key the user accepts)
    api_calls: list[str]  # "GET /v1.41/containers/{id}/json", ids replaced
    events: list[str]

    def of(self, fingerprint: str) -> list[str]:
        return [port for port, seen in self.accepted.items() if seen == fingerprint]

    def summary(self) -> dict[str, Any]:
        return {
            "ssh logins": sorted(self.accepted.values()),
            "ssh refused": len(self.refused),
            "docker api": sorted(set(self.api_calls)),
            "docker events": self.events,
        }


_PORT = re.compile(r" port (\d+)")
_ACCEPTED = re.compile(r"^Accepted publickey for \S+ from \S+ port (\d+) ssh2: \S+ (\S+)")
_CALLING = re.compile(r'msg="Calling (\S+) (\S+?)(?:\?\S*)?"')
_ID = re.compile(r"/[0-9a-f]{64}|/sha256:[0-9a-f]{64}")


class GuestWatch:
    """sshd's and dockerd's logs in the guest, read from a mark on. The tier's own logins (its
    key) are left out; everything else that reached sshd is someone else's."""

    def __init__(self, guest: Any, tier_key: Path) -> None:
        self.guest = guest
        self.tier = fingerprint(Path(f"{tier_key}.pub"))
        # dockerd logs each API call only at debug level; debug is reloadable (SIGHUP).
        guest.check(
            'sudo python3 -c \'import json, pathlib; p = pathlib.Path("/etc/docker/daemon.json"); '
            'd = json.loads(p.read_text()) if p.exists() else {}; d["debug"] = True; '
            "p.write_text(json.dumps(d))' && sudo systemctl reload docker"
        )
        deadline = time.monotonic() + 60
        while guest.check("docker info --format '{{.Debug}}'").strip() != "true":
            assert time.monotonic() < deadline, "dockerd did not turn debug on"
            time.sleep(1)

    def mark(self) -> int:
        """A guest second after which only what follows happened (the tier's own docker calls
        are all earlier)."""
        return int(self.guest.check("sleep 1.2; date +%s").strip())

    def _journal(self, selection: str) -> list[str]:
        """journalctl's lines (none found is not a failure: some versions exit 1 for it)."""
        done = self.guest.ssh(f"sudo journalctl --no-pager -q -o cat {selection}")
        assert done.returncode in (0, 1), done
        return done.stdout.splitlines()

    def since(self, mark: int) -> Contacts:
        sshd = self._journal(f"-t sshd -t sshd-session --since @{mark}")
        accepted: dict[str, str] = {}
        refused: set[str] = set()
        for line in sshd:
            found = _ACCEPTED.match(line)
            if found:
                accepted[found[1]] = found[2]
            elif "[preauth]" in line or "authenticating user" in line:
                # (a login's later lines, e.g. its disconnect, name no key and are not these)
                refused.update(_PORT.findall(line))
        tier = {port for port, seen in accepted.items() if seen == self.tier}
        docker = self._journal(f"-u docker.service --since @{mark}")
        calls = [_ID.sub("/{id}", f"{m[1]} {m[2]}") for m in map(_CALLING.search, docker) if m]
        # sudo: probe (d) takes the ssh user out of the docker group
        events = self.guest.check(
            f"sudo docker events --since {mark} --until $(date +%s) "
            "--format '{{.Type}} {{.Action}} {{.Actor.Attributes.name}}'"
        ).splitlines()
        return Contacts(
            {p: f for p, f in accepted.items() if p not in tier},
            sorted(refused - set(accepted)),
            # The tier's own reads of the logs call nothing in docker before `docker events`.
            [call for call in calls if "/events" not in call],
            # Health checks run as execs, every 30 s per cache: the daemon's own doing.
            [e for e in events if e.strip() and " exec_" not in e and "health_status" not in e],
        )


def fingerprint(public_key: Path) -> str:
    done = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public_key)], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[1]


def test_caches_through_pulumi_docker_in_the_vm_guest(
    plugin_engine: PluginEngine, ready: Any, tmp_path: Path, record_property: Any
) -> None:
    """The program's RegistryMirrors (docker.Provider over ssh://, RemoteImage, one Container per
    upstream, the config and maintenance Commands) created by the real docker and command plugins
    in the VM tier's guest (booted from the program's own cloud-init, cloud-init done). The VM
    itself stands in for what pulumi-proxmoxve would have made; its readiness is a Stash.

    Then what a preview of a change to the existing caches needs from the VM (issue 21 item 2),
    read from the guest's sshd and dockerd logs: see ``_preview_needs``."""
    from components.ssh import SshTarget
    from tests.vm import registry_image
    from tests.vm.conftest import wait_healthy

    guest_tier = ready
    settings = guest_tier.stack.settings
    # The image the caches run: loaded under its configured name (the guest reaches no registry
    # to pull it from); RemoteImage then finds it locally.
    major = registry_image.major_of(guest_tier.stack.image)
    guest_tier.guest.upload(
        registry_image.build_registry_archive(major, guest_tier.stack.image, guest_tier.workdir),
        "docker load",
    )
    # The program logs in with a key of its own (in the agent), so the guest's sshd log tells
    # its logins from the tier's (which read the logs).
    program_key = tmp_path / "program_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "program", "-f",
                    str(program_key)], check=True, capture_output=True)  # fmt: skip
    guest_tier.guest.check("cat >> ~/.ssh/authorized_keys", Path(f"{program_key}.pub").read_text())
    with agent_holding(program_key, tmp_path) as agent:
        ssh = SshTarget(
            host="127.0.0.1",
            user=settings.cache_host.ssh_user,
            agent_socket=agent,
            port=guest_tier.guest.ssh_port,
            host_key=_guest_host_key(guest_tier.guest.ssh_port),
        )
        current = {"settings": settings}

        def caches() -> None:
            vm_ready = pulumi.Stash("registry-vm-ready", input={"stand-in": "the VM tier's guest"})
            mirrors = RegistryMirrors(
                "registry-mirrors", settings=current["settings"], ssh=ssh, ready=vm_ready
            )
            pulumi.export("mirrors", mirrors.mirrors)

        # pulumi-docker's ssh:// transport is the system ssh client: it finds the agent in the
        # plugin's environment (pulumi-command gets the socket path as an input).
        stack = EngineStack.create(
            plugin_engine.engine, tmp_path, "caches", caches,
            env={**plugin_engine.env, "SSH_AUTH_SOCK": agent},
        )  # fmt: skip
        try:
            log = stack.up()
            types = {s.type for s in log.steps() if s.phase == "done" and s.op == "create"}
            assert "docker:index/container:Container" in types, types
            names = [u.container for u in settings.upstreams]
            states = wait_healthy(guest_tier.guest, names)
            assert all(state == "healthy" for state in states.values()), states
            assert set(stack.stack.outputs()["mirrors"].value) == {
                u.host for u in settings.upstreams
            }

            before = guest_tier.upstream.log().count("/v2/library/x/manifests/1")
            port = settings.upstreams[0].port
            pulled = guest_tier.guest.ssh(
                f"docker pull -q 127.0.0.1:{port}/library/x:1", timeout=300
            )
            assert pulled.returncode == 0, pulled.stderr
            assert guest_tier.upstream.log().count("/v2/library/x/manifests/1") > before

            assert stack.preview(expect_no_changes=True).changed() == {}

            found, problems = _preview_needs(stack, guest_tier, program_key, agent, current)
            record_property("preview needs", found)
            (tmp_path / "preview-needs.json").write_text(json.dumps(found, indent=1))
            print(json.dumps(found, indent=1))
            assert not problems, "\n".join(problems)
        finally:
            current["settings"] = settings
            stack.destroy()
        left = guest_tier.guest.check("docker ps -aq --filter label=registry-mirrors.config-sha256")
        assert left.strip() == "", left


def _preview_needs(
    stack: EngineStack, guest_tier: Any, program_key: Path, agent: str, current: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """A change to the existing caches' Container inputs (every cache's memory limit), previewed
    (a) as the operator does, apply key in the agent; (b) with the agent holding no key;
    (c) ``--refresh`` with no key; (d) ``--refresh`` with the key, the ssh user out of the
    docker group; (e) ``--refresh`` as (a). Each one's contacts with the guest are read from its
    sshd log (logins by key fingerprint, refused connections) and dockerd's debug log (API calls).
    (c)-(e) are the controls: they show the watch sees a contact when there is one.

    Returns what each did, and the checks that failed (every probe runs, whatever an earlier one
    found: one guest boot answers all of them)."""
    guest = guest_tier.guest
    settings = current["settings"]
    user = shlex.quote(settings.cache_host.ssh_user)
    watch = GuestWatch(guest, guest_tier.key)
    program = fingerprint(Path(f"{program_key}.pub"))
    agent_env = {**os.environ, "SSH_AUTH_SOCK": agent}
    changed = settings.registry.model_copy(update={"memory_mb": settings.registry.memory_mb + 256})
    current["settings"] = settings.model_copy(update={"registry": changed})
    containers = {f"registry-mirrors-{u.container}" for u in settings.upstreams}
    found: dict[str, Any] = {}
    problems: list[str] = []

    def expect(ok: object, what: str, seen: object = None) -> None:
        if not ok:
            problems.append(f"{what}: {seen!r}"[:3000])

    def preview(name: str, refresh: bool = False) -> tuple[EventLog | None, str, Contacts]:
        """One preview; its log (None if it failed), the failure's text, what reached the guest."""
        mark = watch.mark()
        try:
            log, text = stack.preview(refresh=refresh), ""
        except EngineFailed as failure:
            log, text = None, failure.text
        try:
            seen = watch.since(mark)
        except AssertionError as error:  # the logs unreadable: say so, run the other probes
            problems.append(f"{name}: could not read the guest's logs: {error}"[:3000])
            seen = Contacts({}, [], [], [])
        found[name] = {
            "plan": _plan(log) if log else None,
            "failed": _first_error(text) if log is None else None,
            **seen.summary(),
        }
        expect(not set(seen.accepted.values()) - {program}, f"{name}: someone else logged in", seen)
        return log, text, seen

    # (a) as the operator previews: the apply key in the agent.
    log, text, seen = preview("a: preview, apply key")
    plan = _plan(log) if log else {}
    expect(log, "a: the preview failed", text[-3000:])
    # only the Containers, each an update or a replacement
    expect(set(plan) == containers, "a: plan", plan)
    expect(set(plan.values()) <= {"update", "replace"}, "a: ops", plan)
    expect(
        (seen.accepted, seen.refused, seen.api_calls, seen.events) == ({}, [], [], []),
        "a: the guest was contacted",
        seen,
    )

    # (b) the agent holds no key: nothing can log in to the VM.
    subprocess.run(["ssh-add", "-D"], env=agent_env, check=True, capture_output=True)
    try:
        log, text, seen = preview("b: preview, no key")
        expect(log and _plan(log) == plan, "b: plan differs from a", text[-3000:] or found)
        expect(
            (seen.accepted, seen.refused, seen.api_calls) == ({}, [], []),
            "b: the guest was contacted",
            seen,
        )
        # (b2) the image too: the RemoteImage replaced, so every Container (its image id unknown).
        memory_only = current["settings"]
        image = memory_only.registry.model_copy(update={"image": "registry:3.1.2"})
        current["settings"] = memory_only.model_copy(update={"registry": image})
        try:
            log, text, seen = preview("b2: preview of a new image, no key")
        finally:
            current["settings"] = memory_only
        image_plan = _plan(log) if log else {}
        replaced = {**dict.fromkeys(containers, "replace"), "registry-mirrors-image": "replace"}
        expect(
            image_plan == replaced,
            "b2: plan",
            text[-3000:] or image_plan,
        )
        expect(
            (seen.accepted, seen.refused, seen.api_calls) == ({}, [], []),
            "b2: the guest was contacted",
            seen,
        )
        # (c) the control: a refresh reads every Container and the RemoteImage from the daemon.
        log, text, seen = preview("c: preview --refresh, no key", refresh=True)
        expect(log is None and "Error pinging Docker server" in text, "c: failure", text[-3000:])
        expect(seen.refused and not seen.accepted, "c: no refused login seen", seen)
    finally:
        subprocess.run(["ssh-add", "-q", str(program_key)], env=agent_env, check=True)

    # (d) the key, but the ssh user out of the docker group: the daemon's socket refuses it.
    guest.check(f"sudo gpasswd -d {user} docker")
    try:
        log, text, seen = preview("d: preview --refresh, key, not in docker group", refresh=True)
        # (run 2: the provider reported only "Cannot connect to the Docker daemon", not the
        # socket's "permission denied")
        expect(log is None and "Error pinging Docker server" in text, "d: failure", text[-3000:])
        expect(seen.of(program) and not seen.api_calls, "d: contacts", seen)
    finally:
        guest.check(f"sudo usermod -aG docker {user}")

    # (e) as (a), with --refresh: what the daemon is asked.
    log, text, seen = preview("e: preview --refresh, apply key", refresh=True)
    expect(log and _plan(log) == plan, "e: plan differs from a", text[-3000:] or found)
    if log:
        found["e: preview --refresh, apply key"]["refreshed"] = _refresh_ops(log)
    expect(seen.of(program) and seen.api_calls, "e: no login or API call seen", seen)
    methods = {call.split()[0] for call in seen.api_calls}
    expect(methods <= {"GET", "HEAD"}, "e: a refresh wrote", seen.api_calls)
    expect(seen.events == [], "e: docker events", seen.events)
    return found, problems


def _plan(log: EventLog) -> dict[str, str]:
    """What the preview would change: the non-``same`` op of each resource of ours, a refresh's
    own ``refresh`` steps left out."""
    ops: dict[str, list[str]] = {}
    for step in log.steps():
        if step.phase == "start" and step.ours and step.op != "refresh":
            ops.setdefault(step.name, []).append(step.op)
    plan = {name: "replace" if "replace" in seen else "+".join(seen) for name, seen in ops.items()}
    return {name: op for name, op in plan.items() if op != "same"}


def _first_error(text: str) -> str:
    errors = [line.strip() for line in text.splitlines() if "error" in line.lower()]
    return errors[0][:600] if errors else text[-600:]


def _refresh_ops(log: EventLog) -> dict[str, str]:
    return {
        s.name: s.op for s in log.steps() if s.phase == "start" and s.ours and s.op == "refresh"
    }
