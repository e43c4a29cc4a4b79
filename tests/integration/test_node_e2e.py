"""End to end on a real node: the project's own scripts over real SSH, a real containerd, CRI pulls
through real Distribution proxies. Commands and stdin come from node_steps, the functions the
Pulumi component uses, so this runs exactly what ``pulumi up`` sends.

Every test runs on every containerd version of tests/integration/containerd_versions.py (1.6.20,
1.7.24, 2.1.9, 2.2.9, 2.3.7): the ``node_start`` fixture gives each ``world`` a version and the
config.toml version the node starts from (2 by default: every containerd reads it). The pull test
runs from every config version each containerd can load (v1 and v2; v3 too on 2.x). A new test
that takes ``world`` runs on all of them without touching the parametrisation; version
differences are columns of that table, never copies of a test.

Traffic stays on addresses this test created: the registries listen on the host end of the test
node's veth, the node's netns has no default route.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import tomlkit
import yaml

from components.fleet import FleetReadError, plan_fleet, read_node, ssh_runner
from components.plan.node_plan import NodePlan, plan_node, role_to_send
from components.plan.node_probe import parse_step_result
from components.plan.node_steps import (
    NodeStepError,
    Step,
    check_step,
    restore_config_step,
    restore_hosts_step,
)
from components.renderers.bundle import mirrors_export, tls_export
from components.renderers.containerd_config import DEFAULT_CONFIG_PATH, REGISTRY_PATHS
from components.renderers.front_proxy import Front, FrontCache
from components.renderers.registry_config import registry_config
from components.renderers.shell import remote_command
from components.settings import Node, Settings, Upstream, load_settings
from tests.integration import cri_client
from tests.integration.containerd_versions import V1_6, VERSIONS, ContainerdVersion
from tests.integration.fleet_up import fleet_up
from tests.integration.front_proc import FrontProcess, TestCa, make_test_ca, running_front
from tests.integration.oci_image import MultiArchImage, build_multiarch_image
from tests.integration.registry_proc import (
    RegistryProcess,
    free_port,
    plain_registry_config,
    running_registry,
)
from tests.integration.testhost import OTHER_SSH_PORT, NodeHost, node_host
from tests.mocks import plain
from tests.prereq import require_binary, require_root
from tests.sample import sample_raw

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

MIRRORS_DEPRECATION = "io.containerd.deprecation/cri-registry-mirrors"
PAUSE = "registry.k8s.io/pause:3.9-site"

# containerd 2.x reads CNI settings from the v3 runtime plugin only; in a version 1 file the
# v1 `plugins.cri.cni` is ignored there (its CRI settings are dropped) and the CRI plugin would
# create its default /etc/cni/net.d on the host. Test isolation, not part of the node's state:
# 1.x takes a dotted plugin name in a v1 file as an unknown plugin and ignores it.
_CNI_V3_ISOLATION = """
[plugins."io.containerd.cri.v1.runtime".cni]
  conf_dir = "/etc/containerd/cni"
"""

_START_CONFIGS = {
    1: """# no version key: version 1 (short plugin names)
[plugins.cri]
  # Pinned pause image: must survive the migration.
  sandbox_image = "{pause}"

  [plugins.cri.containerd]
    snapshotter = "native"

  [plugins.cri.cni]
    conf_dir = "/etc/containerd/cni"

  [plugins.cri.registry]
    [plugins.cri.registry.mirrors."*"]
      endpoint = ["{mirror}"]
"""
    + _CNI_V3_ISOLATION,
    2: """version = 2

[plugins."io.containerd.grpc.v1.cri"]
  # Pinned pause image: must survive the migration.
  sandbox_image = "{pause}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"

  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "/etc/containerd/cni"

  [plugins."io.containerd.grpc.v1.cri".registry]
    [plugins."io.containerd.grpc.v1.cri".registry.mirrors."*"]
      endpoint = ["{mirror}"]
""",
    # No snapshotter here: a v3 images.snapshotter must also be in the transfer service's
    # unpack_config, or 2.x fails every pull ("no unpack platforms defined").
    3: """version = 3

[plugins."io.containerd.cri.v1.images"]
  [plugins."io.containerd.cri.v1.images".pinned_images]
    # Pinned pause image: must survive the migration.
    sandbox = "{pause}"

  [plugins."io.containerd.cri.v1.images".registry]
    [plugins."io.containerd.cri.v1.images".registry.mirrors."*"]
      endpoint = ["{mirror}"]

[plugins."io.containerd.cri.v1.runtime".cni]
  conf_dir = "/etc/containerd/cni"
""",
}

# Settings of each layout that are none of our business and must survive the migration.
SURVIVORS: dict[int, dict[tuple[str, ...], str]] = {
    1: {
        ("plugins", "cri", "sandbox_image"): PAUSE,
        ("plugins", "cri", "containerd", "snapshotter"): "native",
    },
    2: {
        ("plugins", "io.containerd.grpc.v1.cri", "sandbox_image"): PAUSE,
        ("plugins", "io.containerd.grpc.v1.cri", "containerd", "snapshotter"): "native",
    },
    3: {
        ("plugins", "io.containerd.cri.v1.images", "pinned_images", "sandbox"): PAUSE,
        ("plugins", "io.containerd.cri.v1.runtime", "cni", "conf_dir"): "/etc/containerd/cni",
    },
}


def start_config(mirror: str, config_version: int = 2) -> str:
    """The state issue 4 starts from, in the layout of ``config_version``: a wildcard mirror in
    the deprecated registry.mirrors, next to settings that are none of our business."""
    return _START_CONFIGS[config_version].format(mirror=mirror, pause=PAUSE)


def dig(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


# --- registries ---------------------------------------------------------------------------------
# They listen on the host end of the node's veth (the node's netns cannot reach the host's
# loopback), on the fixed ports the node's settings name.

UPSTREAM_PORTS = {"docker.io": 6000, "ghcr.io": 6010}


def upstream_registry_config(workdir: Path) -> dict[str, Any]:
    return {**plain_registry_config(workdir / "data"), "log": {"level": "info"}}


def proxy_config(settings: Settings, upstream: Upstream, workdir: Path) -> dict[str, Any]:
    # The project's own renderer, with the storage root moved under the test's directory; the
    # listen addresses are moved by registry_proc.
    config = registry_config(upstream, settings.registry)
    config["storage"]["filesystem"]["rootdirectory"] = str(workdir / "data")
    config.pop("health", None)
    return config


# --- images ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Distribution storage dir holding library/x and org/y, tags 1..4 (multi-arch, built
    offline): pushed once per module through a loopback registry; each world's upstreams serve
    a copy (pushing per world cost seconds, times every test and containerd version)."""
    require_root()
    require_binary("docker-registry")
    require_binary("skopeo")
    root = tmp_path_factory.mktemp("upstream-seed")
    images = [build_multiarch_image(root / f"image-{tag}", tag) for tag in ("1", "2", "3", "4")]
    workdir = root / "registry"
    with running_registry(upstream_registry_config(workdir), workdir) as registry:
        for image in images:
            push(image, registry, "library/x")
            push(image, registry, "org/y")
    return workdir / "data"


def push(image: MultiArchImage, registry: RegistryProcess, repository: str) -> None:
    subprocess.run(
        [
            "skopeo", "copy", "--all", "--quiet", "--dest-tls-verify=false",
            image.oci_ref,
            f"docker://{registry.address}/{repository}:{image.tag}",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


# --- the world of one test ---------------------------------------------------------------------


@dataclass(frozen=True)
class NodeStart:
    """What a test node runs: a containerd version and the config.toml version it starts from."""

    containerd: ContainerdVersion
    config_version: int = 2

    def __str__(self) -> str:
        return f"{self.containerd.series}-v{self.config_version}"


# Every test: each containerd, from a version 2 file (every version reads it).
EVERY_CONTAINERD = [NodeStart(version) for version in VERSIONS]
# The pull proof: each containerd from each config version it can load.
EVERY_START = [NodeStart(v, config) for v in VERSIONS for config in v.config_versions]
# What no containerd takes part in (the probe's parse, ssh): one node is enough.
ANY_NODE = [NodeStart(V1_6)]


@pytest.fixture(params=EVERY_CONTAINERD, ids=str)
def node_start(request: pytest.FixtureRequest) -> NodeStart:
    """Override per test with ``@pytest.mark.parametrize("node_start", EVERY_START, ids=str)``."""
    return request.param


@dataclass
class World:
    host: NodeHost
    settings: Settings
    node: Node
    registries: dict[str, RegistryProcess]
    workdir: Path
    start: NodeStart
    # The caches' front (the real traffic_server, rendered, on the host end of the veth) and the
    # test CA its certificate comes from (IP SAN: that address), as the VM's trust step prints it.
    front: FrontProcess
    ca: TestCa

    @property
    def ca_pem(self) -> str:
        return self.ca.ca_cert.read_text()

    def send(self, plan: NodePlan, role: str) -> subprocess.CompletedProcess[str]:
        """One step of ``plan`` as the component sends it (TLS on: the CA in front of stdin)."""
        return self.host.run_step(role_to_send(plan, role, self.ca_pem))

    @property
    def containerd(self) -> ContainerdVersion:
        return self.start.containerd

    def plan(self, settings: Settings | None = None) -> NodePlan:
        """Read and plan the node exactly as the program does while it runs (preview included):
        the system ssh client, the agent, the pinned host key."""
        settings = settings or self.settings
        stdout = read_node(settings, self.node, ssh_runner(self.host.agent_socket))
        return plan_node(settings, self.node, stdout)

    def apply(self, plan: NodePlan) -> tuple[str, str]:
        """hosts first, then config (the component's order); stdout of both."""
        hosts = self.send(plan, "hosts")
        check_step(self.node, "hosts", hosts.returncode, hosts.stderr)
        config = self.send(plan, "config")
        check_step(self.node, "config", config.returncode, config.stderr)
        return hosts.stdout, config.stdout

    def pull(self, image: str) -> str:
        return cri_client.pull_image(self.host.containerd_socket, image)

    def effective_config_path(self) -> Any:
        """config_path as the node's containerd reads its config.toml (its own config dump)."""
        dump = self.host.ssh("containerd config dump")
        assert dump.returncode == 0, dump.stderr
        return dig(tomllib.loads(dump.stdout), (*self.containerd.effective_registry, "config_path"))


def make_settings(host: NodeHost, ghcr_mirror_port: int = 5010, *, tls: bool = True) -> Settings:
    """The test node's settings. ``tls=False``: the caches on plain HTTP (benchmarks that serve
    Distribution itself on the cache ports, without the front)."""
    raw = sample_raw()
    raw["tls"] = {"enabled": tls}
    # The "registry VM" is the host end of the veth; upstream servers are local registries.
    raw["vm"]["address"] = f"{host.host_address}/30"
    raw["vm"]["gateway"] = host.node_address
    raw["upstreams"] = [
        {
            "host": "docker.io",
            "port": 5000,
            "container": "registry",
            "server": f"http://{host.host_address}:{UPSTREAM_PORTS['docker.io']}",
        },
        {
            "host": "ghcr.io",
            "port": ghcr_mirror_port,
            "container": "registry-ghcr",
            "server": f"http://{host.host_address}:{UPSTREAM_PORTS['ghcr.io']}",
        },
    ]
    raw["nodes"] = [
        {
            "name": "node-1",
            "address": host.node_address,
            "restartCommand": host.restart_command,
            "sshHostPublicKey": host.host_public_key,
        }
    ]
    raw["containerd"] = {"restartTimeoutSeconds": 20}
    return load_settings(raw)


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    upstream_storage: Path,
    node_start: NodeStart,
    private_system: bool,
) -> Iterator[World]:
    """``@pytest.mark.etc_overlay``: the node's /etc is an overlay (``host.etc_upper``), for tests
    that put files in /etc outside /etc/containerd (never in the host's)."""
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen"):
        require_binary(binary)
    node_start.containerd.require()
    overlay = request.node.get_closest_marker("etc_overlay") is not None
    # Registries stop (ExitStack) before node_host removes the veth they listen on.
    with (
        node_host(
            tmp_path, node_start.containerd, etc_overlay=overlay, private_system=private_system
        ) as host,
        contextlib.ExitStack() as running,
    ):
        settings = make_settings(host)
        addr = host.host_address

        def serve(workdir: Path, config: dict[str, Any], port: int) -> RegistryProcess:
            return running.enter_context(running_registry(config, workdir, host=addr, port=port))

        registries: dict[str, RegistryProcess] = {}
        for name, registry_host in (("docker", "docker.io"), ("ghcr", "ghcr.io")):
            workdir = tmp_path / f"{name}-upstream"
            shutil.copytree(upstream_storage, workdir / "data")
            registries[workdir.name] = serve(
                workdir, upstream_registry_config(workdir), UPSTREAM_PORTS[registry_host]
            )
        docker_io = settings.upstreams[0]
        ca = make_test_ca(tmp_path / "ca", ip=addr, days=90)
        front = running.enter_context(
            serve_caches(settings, tmp_path, ca, addr, settings.upstreams, registries)
        )
        host.start_containerd(
            start_config(f"http://{addr}:{docker_io.port}", node_start.config_version)
        )
        assert host.cri_status() == "ok", host.containerd_log.read_text()[-2000:]
        yield World(host, settings, settings.nodes[0], registries, tmp_path, node_start, front, ca)


@contextlib.contextmanager
def serve_caches(
    settings: Settings,
    workdir: Path,
    ca: TestCa,
    address: str,
    upstreams: Sequence[Upstream],
    registries: dict[str, RegistryProcess],
) -> Iterator[FrontProcess]:
    """What the registry VM serves for ``upstreams``: each rendered Distribution proxy on
    loopback (``<name>-proxy`` in ``registries``) behind the rendered front (the real
    traffic_server) on ``address``: each cache's plain port (serving, as during the switch)
    and its HTTPS port with a certificate from ``ca``."""
    with contextlib.ExitStack() as running:
        caches = []
        for upstream in upstreams:
            # docker.io -> docker-proxy, ghcr.io -> ghcr-proxy (as the upstreams are named)
            proxy_dir = workdir / f"{upstream.host.split('.')[0]}-proxy"
            backend = free_port()
            # As on the VM: the registry on loopback behind the front, its metrics public.
            registries[proxy_dir.name] = running.enter_context(
                running_registry(
                    proxy_config(settings, upstream, proxy_dir),
                    proxy_dir,
                    port=backend,
                    metrics_port=upstream.resolved_metrics_port,
                    metrics_host=address,
                )
            )
            caches.append(
                FrontCache(upstream.container, upstream.port, backend, upstream.resolved_tls_port)
            )
        front = Front(tuple(caches), pem_file=str(ca.pem), storage_mb=128)
        yield running.enter_context(
            running_front(front, workdir / f"front-{upstreams[0].port}", listen=address)
        )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def requests_in(registry: RegistryProcess, needle: str) -> int:
    return registry.log().count(needle)


# --- happy path --------------------------------------------------------------------------------


@pytest.mark.parametrize("node_start", EVERY_START, ids=str)
def test_apply_switches_to_config_path_and_pulls_go_through_each_upstreams_proxy(
    world: World,
) -> None:
    host, containerd = world.host, world.containerd
    plan = world.plan()
    # The probe saw the node's own containerd (the version's bin dir is first on its PATH).
    assert plan.probe.containerd_version.lstrip("v").startswith(containerd.version)
    assert plan.config_changed
    pid_before = host.containerd_pid

    hosts_out, config_out = world.apply(plan)

    assert set(parse_step_result(hosts_out).written) == {"docker.io", "ghcr.io"}
    result = parse_step_result(config_out)
    assert (result.changed, result.restarted, result.rolled_back) == (True, True, False)
    assert host.containerd_pid != pid_before
    assert host.cri_status() == "ok"
    written = containerd.written_config_version(world.start.config_version)
    config = tomllib.loads(host.config_file.read_text())
    assert config.get("version", 1) == written
    registry = dig(config, REGISTRY_PATHS[written])
    assert registry["config_path"] == DEFAULT_CONFIG_PATH
    assert "mirrors" not in registry
    for path, value in SURVIVORS[written].items():
        assert dig(config, path) == value, path
    assert (host.etc_containerd / "config.toml.registry-mirrors.orig").read_text() == start_config(
        f"http://{host.host_address}:5000", world.start.config_version
    )
    # In effect as the daemon reads the file (2.x: not in CRI Status, only in its config dump) ...
    assert world.effective_config_path() == DEFAULT_CONFIG_PATH
    status = cri_client.status_config(host.containerd_socket)
    if containerd.cri_status_has_registry:
        assert status["registry"]["configPath"] == DEFAULT_CONFIG_PATH
    else:
        assert "registry" not in status and "configPath" not in json.dumps(status)
    # ... and in the running daemon: 1.7+ would name a `mirrors` entry it loaded.
    if containerd.has_deprecations:
        assert result.deprecations is not None and MIRRORS_DEPRECATION not in result.deprecations
    else:
        assert result.deprecations is None  # 1.6: no `ctr deprecations`

    world.pull("docker.io/library/x:1")
    world.pull("ghcr.io/org/y:1")
    assert requests_in(world.registries["docker-proxy"], "ns=docker.io") > 0
    assert requests_in(world.registries["ghcr-proxy"], "ns=ghcr.io") > 0
    assert requests_in(world.registries["docker-proxy"], "ns=ghcr.io") == 0

    # A stopped mirror: containerd falls back to `server` (here: the local upstream).
    world.registries["ghcr-proxy"].stop()
    upstream_hits = requests_in(world.registries["ghcr-upstream"], "/v2/org/y/manifests/2")
    world.pull("ghcr.io/org/y:2")
    assert requests_in(world.registries["ghcr-upstream"], "/v2/org/y/manifests/2") > upstream_hits


# A node whose file names no single hosts directory: no registry option at all (2.2+ then use
# /etc/containerd/certs.d:/etc/docker/certs.d), or that list written out.
COLON_LIST = "/etc/containerd/certs.d:/etc/docker/certs.d"
_NO_SINGLE_DIR = {"unset": None, "colon-list": COLON_LIST}


@pytest.mark.parametrize("registry_setting", list(_NO_SINGLE_DIR))
def test_a_node_without_one_config_path_uses_the_cache_only_after_the_config_step(
    world: World, registry_setting: str
) -> None:
    """Our hosts.toml in /etc/containerd/certs.d is not enough: unset, no version reads it (2.2+'s
    colon default included), and a colon list is one literal directory to a 2.x CRI pull. The
    config step writes one directory and the same pull then goes through the cache."""
    host, containerd = world.host, world.containerd
    text = (
        'version = 2\n\n[plugins."io.containerd.grpc.v1.cri"]\n'
        f'  sandbox_image = "{PAUSE}"\n'
        '  [plugins."io.containerd.grpc.v1.cri".containerd]\n    snapshotter = "native"\n'
        '  [plugins."io.containerd.grpc.v1.cri".cni]\n    conf_dir = "/etc/containerd/cni"\n'
    )
    if (setting := _NO_SINGLE_DIR[registry_setting]) is not None:
        text += f'  [plugins."io.containerd.grpc.v1.cri".registry]\n    config_path = "{setting}"\n'
    host.start_containerd(text)
    plan = world.plan()
    assert plan.config_changed
    hosts = world.send(plan, "hosts")
    check_step(world.node, "hosts", hosts.returncode, hosts.stderr)
    assert (host.etc_containerd / "certs.d" / "docker.io" / "hosts.toml").is_file()
    proxy = world.registries["docker-proxy"]

    reads_our_hosts_toml = setting is not None and containerd.cri_pull_splits_config_path
    before = requests_in(proxy, "ns=docker.io")
    if reads_our_hosts_toml:
        world.pull("docker.io/library/x:1")
        assert requests_in(proxy, "ns=docker.io") > before
    else:
        # Straight to registry-1.docker.io, which the node's netns cannot reach: the pull fails
        # at once and the cache never hears of it.
        with pytest.raises(grpc.RpcError):
            world.pull("docker.io/library/x:1")
        assert requests_in(proxy, "ns=docker.io") == before

    config = host.run_step(plan.config)
    check_step(world.node, "config", config.returncode, config.stderr)
    assert parse_step_result(config.stdout).restarted
    assert world.effective_config_path() == DEFAULT_CONFIG_PATH
    before = requests_in(proxy, "ns=docker.io")
    world.pull("docker.io/library/x:2")
    assert requests_in(proxy, "ns=docker.io") > before


def _inputs(plan: NodePlan) -> list[tuple[str, str, str]]:
    """What the engine diffs for each of the node's steps: role, command, stdin."""
    return [(step.role, step.create.command, step.create.stdin) for step in plan.steps]


def test_an_unchanged_node_plans_the_same_steps_and_restarts_nothing(world: World) -> None:
    """After an apply, the next run's probe yields exactly the inputs the applied steps had, so
    `pulumi preview` shows no change and `pulumi up` runs nothing; a mirror of the node's own
    (for a registry we do not cache) stays in its hosts.toml though config.toml lost it."""
    host = world.host
    own = (
        '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."harbor.corp.example"]\n'
        f'  endpoint = ["http://{host.host_address}:6099"]\n'
    )
    host.start_containerd(start_config(f"http://{host.host_address}:5000", 2) + own)
    first = world.plan()
    assert "harbor.corp.example" in first.hosts_files
    world.apply(first)
    pid = host.containerd_pid

    for _ in range(2):
        plan = world.plan()
        assert _inputs(plan) == _inputs(first)
        hosts_out, config_out = world.apply(plan)
        assert not plan.config_changed
        assert parse_step_result(hosts_out).written == ()
        assert parse_step_result(config_out).restarted is False
    assert host.containerd_pid == pid
    harbor = host.etc_containerd / "certs.d" / "harbor.corp.example" / "hosts.toml"
    assert f"http://{host.host_address}:6099" in harbor.read_text()


def test_a_hand_edit_changes_only_the_config_step(world: World) -> None:
    host = world.host
    first = world.plan()
    world.apply(first)
    applied = world.plan()
    host.config_file.write_text(host.config_file.read_text() + "# tuned by hand\n")

    edited = world.plan()

    changed = [a[0] for a, b in zip(_inputs(applied), _inputs(edited), strict=True) if a != b]
    assert changed == ["config"]
    # Its text is the node's own (nothing to migrate): it runs, changes nothing, restarts nothing.
    pid = host.containerd_pid
    _, config_out = world.apply(edited)
    assert parse_step_result(config_out).changed is False
    assert host.containerd_pid == pid


def _without_mark(command: str) -> str:
    return "\n".join(line for line in command.splitlines() if "APPLY_MARK=" not in line)


def test_a_node_back_on_its_original_config_is_planned_again_and_brought_back(
    world: World,
) -> None:
    """Issue 27 item 1. A config manager puts the node's original config.toml back and restarts
    containerd: the node is on `mirrors` again. The plan is the same migration of the same file
    as the first apply's, yet the config step shows a change (a new mark: the file is not what
    the last apply left) and `pulumi up` brings the node back; then no change, twice."""
    host = world.host
    original = host.config_file.read_text()
    first = fleet_up(world.settings, {"node-1": host}, host.agent_socket, ca_pem=world.ca_pem)
    assert sorted(first.plan.creates) == ["containerd-node-1-config", "containerd-node-1-hosts"]
    migrated = host.config_file.read_text()
    assert world.effective_config_path() == DEFAULT_CONFIG_PATH
    up = fleet_up(
        world.settings, {"node-1": host}, host.agent_socket, first.state, ca_pem=world.ca_pem
    )
    assert up.plan.updates == [] and up.ran == {}

    for _ in range(2):  # a second revert after the fix too: each apply records its own mark
        host.start_containerd(original)
        assert host.cri_status() == "ok"
        assert world.effective_config_path() != DEFAULT_CONFIG_PATH
        reverted = fleet_up(
            world.settings, {"node-1": host}, host.agent_socket, up.state, ca_pem=world.ca_pem
        )
        assert reverted.plan.updates == ["containerd-node-1-config"]
        result = parse_step_result(reverted.ran["containerd-node-1-config"])
        assert (result.changed, result.restarted, result.rolled_back) == (True, True, False)
        assert host.config_file.read_text() == migrated
        assert world.effective_config_path() == DEFAULT_CONFIG_PATH
        assert host.cri_status() == "ok"
        pid = host.containerd_pid
        up = reverted
        for _ in range(2):
            up = fleet_up(
                world.settings, {"node-1": host}, host.agent_socket, up.state, ca_pem=world.ca_pem
            )
            assert up.plan.updates == [] and up.plan.creates == [] and up.ran == {}
        assert host.containerd_pid == pid

    # Control: what made the difference is the mark alone. Reverted again, the config step's
    # inputs differ from the first apply's only in its APPLY_MARK line: without it the preview
    # would show nothing and nothing would run.
    host.start_containerd(original)
    again = world.plan()
    applied = {r.name: plain(r.inputs) for r in first.state}["containerd-node-1-config"]
    assert again.config.stdin == applied["stdin"]
    assert _without_mark(again.config.command) == _without_mark(applied["create"])
    assert again.config.command != applied["create"]


def test_a_ca_file_removed_or_changed_on_the_node_shows_the_hosts_step_and_up_writes_it_back(
    world: World,
) -> None:
    """TLS on: the CA file the hosts.toml files name is in hosts.sh's record with them. Removed
    (every pull through the cache would fail the handshake) or changed on the node, the hosts step
    shows a change and `pulumi up` writes it back, no restart; then no change (control: the run
    before the drift shows none)."""
    host = world.host
    ca_file = host.etc_containerd / "certs.d" / "registry-mirrors-ca.pem"
    up = fleet_up(world.settings, {"node-1": host}, host.agent_socket, ca_pem=world.ca_pem)
    assert ca_file.read_text() == world.ca_pem
    up = fleet_up(
        world.settings, {"node-1": host}, host.agent_socket, up.state, ca_pem=world.ca_pem
    )
    assert up.plan.updates == [] and up.ran == {}
    pid = host.containerd_pid
    for drift in ("remove", "change"):
        if drift == "remove":
            ca_file.unlink()
        else:
            ca_file.write_text(world.ca_pem.replace("A", "B", 1))
        fixed = fleet_up(
            world.settings, {"node-1": host}, host.agent_socket, up.state, ca_pem=world.ca_pem
        )
        assert fixed.plan.updates == ["containerd-node-1-hosts"], drift
        assert "trust=written" in fixed.ran["containerd-node-1-hosts"]
        assert ca_file.read_text() == world.ca_pem
        up = fleet_up(
            world.settings, {"node-1": host}, host.agent_socket, fixed.state, ca_pem=world.ca_pem
        )
        assert up.plan.updates == [] and up.ran == {}
    assert host.containerd_pid == pid


def test_renaming_the_node_or_setting_skip_config_path_restores_nothing(world: World) -> None:
    """Issue 27 item 2, over real SSH: the old-named steps leave the state and nothing runs on the
    node (no delete command, retainOnDelete); the new-named ones find nothing to change. Then
    skipConfigPath on the migrated node: its config step leaves, config.toml stays migrated."""
    host = world.host
    first = fleet_up(world.settings, {"node-1": host}, host.agent_socket, ca_pem=world.ca_pem)
    migrated = host.config_file.read_text()
    hosts_dir = host.etc_containerd / "certs.d"
    hosts_files = {p: p.read_text() for p in hosts_dir.glob("*/hosts.toml")}
    pid = host.containerd_pid

    raw = world.settings.model_dump(by_alias=True, exclude_none=True)
    raw["nodes"][0]["name"] = "node-1b"
    renamed = load_settings(raw)
    up = fleet_up(
        renamed,
        {"node-1b": host, "node-1": host},
        host.agent_socket,
        first.state,
        ca_pem=world.ca_pem,
    )

    assert sorted(up.plan.creates) == ["containerd-node-1b-config", "containerd-node-1b-hosts"]
    assert sorted(r.name for r in up.plan.deletes) == [
        "containerd-node-1-config",
        "containerd-node-1-hosts",
    ]
    assert up.plan.deletes_that_run() == [] and "delete" not in up.ran.values()
    assert parse_step_result(up.ran["containerd-node-1b-config"]).changed is False
    _assert_nothing_restored(world, migrated, hosts_files, pid)

    raw["nodes"][0]["skipConfigPath"] = True
    skipped = fleet_up(
        load_settings(raw), {"node-1b": host}, host.agent_socket, up.state, ca_pem=world.ca_pem
    )
    assert [r.name for r in skipped.plan.deletes] == ["containerd-node-1b-config"]
    assert skipped.plan.deletes_that_run() == [] and skipped.ran == {}
    _assert_nothing_restored(world, migrated, hosts_files, pid)


def _assert_nothing_restored(
    world: World, migrated: str, hosts_files: dict[Path, str], pid: int | None
) -> None:
    host = world.host
    assert host.config_file.read_text() == migrated
    assert {p: p.read_text() for p in (host.etc_containerd / "certs.d").glob("*/hosts.toml")} == (
        hosts_files
    )
    assert not list(host.etc_containerd.glob("*.before-restore"))
    assert (host.etc_containerd / "config.toml.registry-mirrors.orig").exists()
    assert host.containerd_pid == pid  # not even a restart
    assert world.effective_config_path() == DEFAULT_CONFIG_PATH


def test_a_held_node_whose_sshd_is_stopped_lets_the_rest_of_the_fleet_plan_and_apply(
    world: World, tmp_path: Path
) -> None:
    """Issue 27 item 3: a second node, applied, then down (its sshd stopped). Not held, it stops
    every run naming it; held, it is not read, its steps stay as they are, and the rest of the
    fleet plans and applies (here: the canary, put back on its original by a config manager).
    Gone for good: removed from `nodes`, its steps leave the state and nothing runs."""
    canary = world.host
    with node_host(tmp_path / "second", world.containerd) as second:
        # One agent for the program, holding both nodes' keys (as the operator's would).
        added = subprocess.run(
            ["ssh-add", "-q", str(second.key)],
            env={**os.environ, "SSH_AUTH_SOCK": canary.agent_socket},
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        second.start_containerd(start_config(f"http://{canary.host_address}:5000"))
        raw = world.settings.model_dump(by_alias=True, exclude_none=True)
        raw["nodes"].append(
            {
                "name": "node-2",
                "address": second.node_address,
                "restartCommand": second.restart_command,
                "sshHostPublicKey": second.host_public_key,
            }
        )
        settings = load_settings(raw)
        hosts = {"node-1": canary, "node-2": second}
        up = fleet_up(settings, hosts, canary.agent_socket, ca_pem=world.ca_pem)
        assert len(up.ran) == 4
        left = second.config_file.read_text()
        assert "config_path" in left and "mirrors" not in left

        second.stop_sshd()
        with pytest.raises(FleetReadError, match=r"node node-2 .*cannot reach[\s\S]*state: held"):
            plan_fleet(settings, ssh_runner(canary.agent_socket))

        raw["nodes"][1]["state"] = "held"
        original = canary.config_file.read_text()
        canary.start_containerd(start_config(f"http://{canary.host_address}:5000"))
        held = fleet_up(
            load_settings(raw),
            {"node-1": canary},
            canary.agent_socket,
            up.state,
            ca_pem=world.ca_pem,
        )

        assert held.plan.updates == ["containerd-node-1-config"]
        assert held.plan.creates == [] and held.plan.deletes == []
        assert {"containerd-node-2-hosts", "containerd-node-2-config"} <= set(held.plan.sames)
        assert list(held.ran) == ["containerd-node-1-config"]
        assert canary.config_file.read_text() == original
        assert world.effective_config_path() == DEFAULT_CONFIG_PATH
        assert second.config_file.read_text() == left

        del raw["nodes"][1]
        gone = fleet_up(
            load_settings(raw),
            {"node-1": canary},
            canary.agent_socket,
            held.state,
            ca_pem=world.ca_pem,
        )
        assert sorted(r.name for r in gone.plan.deletes) == [
            "containerd-node-2-config",
            "containerd-node-2-hosts",
        ]
        assert gone.plan.deletes_that_run() == [] and gone.ran == {}
        assert second.config_file.read_text() == left


def test_hosts_toml_change_needs_no_restart_and_applies_on_next_pull(world: World) -> None:
    world.apply(world.plan())
    pid = world.host.containerd_pid
    settings = make_settings(world.host, ghcr_mirror_port=5030)
    moved: dict[str, RegistryProcess] = {}
    workdir = world.workdir / "moved"
    with serve_caches(
        settings, workdir, world.ca, world.host.host_address, settings.upstreams[1:], moved
    ):
        second = moved["ghcr-proxy"]
        plan = world.plan(settings)
        hosts_out, config_out = world.apply(plan)
        assert parse_step_result(hosts_out).written == ("ghcr.io",)
        assert parse_step_result(config_out).restarted is False
        assert world.host.containerd_pid == pid

        world.pull("ghcr.io/org/y:3")
        assert requests_in(second, "ns=ghcr.io") > 0


def test_state_restored_puts_the_original_config_back_and_removes_our_hosts_toml(
    world: World,
) -> None:
    """nodes[].state: restored: its two steps (restore-config, then restore-hosts)."""
    host = world.host
    original = host.config_file.read_text()
    (host.etc_containerd / "certs.d" / "example.org").mkdir(parents=True)
    # A hand-made hosts.toml for one of our upstreams: replaced by ours, kept, put back on restore.
    handmade = host.etc_containerd / "certs.d" / "ghcr.io" / "hosts.toml"
    handmade.parent.mkdir(parents=True)
    handmade.write_text('server = "https://ghcr.io"\n[host."https://ghcr-mirror.example"]\n')
    handmade_text = handmade.read_text()
    plan = world.plan()
    hosts_out, _ = world.apply(plan)
    assert "backed_up=ghcr.io" in hosts_out
    assert "https://" in handmade.read_text() and handmade.read_text() != handmade_text
    ca_file = host.etc_containerd / "certs.d" / "registry-mirrors-ca.pem"
    assert ca_file.read_text() == world.ca_pem

    config = host.run_step(restore_config_step(world.settings, world.node))
    check_step(world.node, "restore-config", config.returncode, config.stderr)
    # Whatever follows the script on stdin (here the bundle), REMOVE_ALL reads none of it.
    restore = restore_hosts_step(world.settings, world.node)
    hosts = host.ssh(restore.command, restore.stdin + plan.hosts.content)
    check_step(world.node, "restore-hosts", hosts.returncode, hosts.stderr)

    assert host.config_file.read_text() == original
    assert host.cri_status() == "ok"
    assert sorted(p.name for p in (host.etc_containerd / "certs.d").iterdir()) == [
        "example.org",
        "ghcr.io",
    ]
    assert handmade.read_text() == handmade_text
    assert sorted(p.name for p in handmade.parent.iterdir()) == ["hosts.toml"]


# --- faults ------------------------------------------------------------------------------------


def _go_quoted(text: str) -> str:
    """Go's %q of ``text`` (ASCII: what JSON gives, escapes and all on one line)."""
    return json.dumps(text)


def as_pulumi_command_shows_it(host: NodeHost, step: Step) -> str:
    """What `pulumi up` prints for this step when it fails: pulumi-command's
    ``fmt.Errorf("%w: running %q:\\n%s", err, cmd, stdouterrbuf)`` (provider/pkg/provider/remote/
    commandOutputs.go), with stdout and stderr in one buffer in the order they arrived."""
    result = host.ssh(step.command, step.stdin, merge_stderr=True)
    assert result.returncode != 0, result.stdout
    return (
        f"Process exited with status {result.returncode}: running {_go_quoted(step.command)}:\n"
        f"{result.stdout}"
    )


def test_config_that_breaks_the_cri_plugin_is_rolled_back_with_containerds_error(
    world: World,
) -> None:
    from components.plan.node_steps import config_step

    host = world.host
    world.apply(world.plan())
    good = host.config_file.read_text()
    probe = world.plan().probe
    bad = good + (
        '\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
        f'  endpoint = ["http://{host.host_address}:5000"]\n'
    )

    step = config_step(world.settings, world.node, probe.config_sha256, bad)
    shown = as_pulumi_command_shows_it(host, step)

    lines = shown.splitlines()
    # pulumi-command: `<exit status>: running "<command>":`, then the output as it arrived.
    # The command is the parameters and the loader (the script came on stdin): one short line,
    # and the next three are what failed, what was rolled back, what to do.
    assert lines[0].startswith("Process exited with status 5: running ") and len(lines[0]) < 1000
    assert (
        lines[1].startswith("apply-config.sh FAILED on ") and "(exit 5): with the new " in lines[1]
    )
    assert "containerd runs with its CRI plugin in error" in lines[1]
    assert lines[2] == (
        "rolled back: the previous /etc/containerd/config.toml is back in place and the CRI "
        "plugin on /run/containerd/containerd.sock is ok again"
    )
    assert lines[3].startswith("to do: fix what containerd says below")
    # This version's own words, from the plugin that refused (2.x: the images plugin; the cri
    # plugin then fails as its dependent), after the summary.
    conflict = world.containerd
    assert f"cri plugin {conflict.conflict_plugin}: {conflict.conflict_error}" in shown
    assert "hint: containerd refuses registry.mirrors" in shown
    assert parse_step_result(shown).rolled_back
    assert host.config_file.read_text() == good
    assert host.cri_status() == "ok"
    # Control: with the script in the command, as before, the first line was the whole script
    # and its library (what buried the message).
    inlined = remote_command("node/apply-config.sh", {"CONFIG_FILE": "/etc/containerd/config.toml"})
    assert len(_go_quoted(inlined)) > 10 * len(lines[0])


def test_edit_between_probe_and_apply_aborts_with_nothing_changed(world: World) -> None:
    host = world.host
    plan = world.plan()
    edited = host.config_file.read_text() + "# edited by hand\n"
    host.config_file.write_text(edited)
    pid = host.containerd_pid

    hosts = world.send(plan, "hosts")
    assert hosts.returncode == 0
    result = host.run_step(plan.config)

    assert result.returncode == 3
    assert "/etc/containerd/config.toml changed since it was probed" in result.stderr
    assert plan.probe.config_sha256 in result.stderr
    assert sha256(host.config_file) in result.stderr
    assert host.config_file.read_text() == edited
    assert host.containerd_pid == pid
    assert not (host.etc_containerd / "config.toml.registry-mirrors.orig").exists()


@pytest.mark.parametrize("node_start", ANY_NODE, ids=str)
def test_unparsable_config_is_refused_with_nothing_changed(world: World) -> None:
    host = world.host
    host.config_file.write_text("version = 2\n[plugins\n")
    pid = host.containerd_pid

    with pytest.raises(
        NodeStepError,
        match=r"node node-1 \(10\.231\.[0-9.]+\) /etc/containerd/config.toml: config.toml line 2: "
        r".*nothing was changed",
    ):
        world.plan()

    assert host.config_file.read_text() == "version = 2\n[plugins\n"
    assert host.containerd_pid == pid
    assert not (host.etc_containerd / "certs.d").exists()


@pytest.mark.parametrize("node_start", ANY_NODE, ids=str)
def test_unreachable_node_fails_naming_the_node(world: World) -> None:
    # The test node's own address, on a port where nothing listens.
    node = world.node.model_copy(update={"ssh_port": 2222})
    with pytest.raises(
        NodeStepError, match=r"node node-1 \(root@10\.231\.[0-9.]+:2222\) probe: cannot reach"
    ):
        read_node(world.settings, node, ssh_runner(world.host.agent_socket))


@pytest.mark.parametrize("node_start", ANY_NODE, ids=str)
def test_a_node_on_another_ssh_port_is_read_with_its_pinned_host_key(world: World) -> None:
    """On a port other than 22 ssh looks the key up as [address]:port: the pinned key must be
    offered under that name, or every read fails host key verification."""
    node = world.node.model_copy(update={"ssh_port": OTHER_SSH_PORT})
    on_22 = read_node(world.settings, world.node, ssh_runner(world.host.agent_socket))
    assert read_node(world.settings, node, ssh_runner(world.host.agent_socket)) == on_22


@pytest.mark.parametrize("node_start", ANY_NODE, ids=str)
def test_a_node_with_another_host_key_is_refused(world: World) -> None:
    """The pinned host key is checked by the program's read, not only by pulumi-command."""
    other = world.host.root / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    pinned = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    node = world.node.model_copy(update={"ssh_host_public_key": pinned})
    with pytest.raises(
        NodeStepError,
        match=r"node node-1 \S+ probe: cannot reach the node over SSH: Host key verification "
        r"failed\. \(the node's host key is not the pinned nodes\[\]\.sshHostPublicKey",
    ):
        read_node(world.settings, node, ssh_runner(world.host.agent_socket))


def test_tls_settings_of_an_http_mirror_are_dropped_so_containerd_does_not_try_https_first(
    world: World,
) -> None:
    """A node mirror on plain http with `configs.<host>.tls` (skip_verify, as people set "to be
    safe"): carried into hosts.toml it makes 1.7+ try HTTPS first on every connection."""
    host, containerd = world.host, world.containerd
    own_mirror = f"{host.host_address}:{UPSTREAM_PORTS['docker.io']}"  # plain http
    registry = REGISTRY_PATHS[world.start.config_version]
    table = ".".join(tomlkit.key(part).as_string() for part in registry)
    host.start_containerd(
        start_config(f"http://{host.host_address}:5000", world.start.config_version)
        + f'\n[{table}.mirrors."docker.io"]\n  endpoint = ["http://{own_mirror}"]\n'
        + f'\n[{table}.configs."{own_mirror}".tls]\n  insecure_skip_verify = true\n'
    )
    plan = world.plan()
    assert any(
        line.startswith(f'dropped configs."{own_mirror}".tls for http://{own_mirror}')
        for line in plan.summary
    ), plan.summary
    world.apply(plan)
    hosts_toml = tomllib.loads(plan.hosts_files["docker.io"])
    ours = world.settings.endpoint(world.settings.upstreams[0])
    assert list(hosts_toml["host"]) == [ours, f"http://{own_mirror}"]
    assert "skip_verify" not in hosts_toml["host"][f"http://{own_mirror}"]

    https_first = "will try HTTPS first"
    log_start = len(host.containerd_log.read_text())
    world.pull("docker.io/library/x:1")
    assert https_first not in host.containerd_log.read_text()[log_start:]

    # Control: the file the old migration wrote (skip_verify kept) does trip the versions the
    # table says it trips, so the check above can fail where the bug shows.
    with_tls = plan.hosts_files["docker.io"].replace(
        f'[host."http://{own_mirror}"]\n', f'[host."http://{own_mirror}"]\nskip_verify = true\n'
    )
    assert with_tls != plan.hosts_files["docker.io"]
    (host.etc_containerd / "certs.d" / "docker.io" / "hosts.toml").write_text(with_tls)
    log_start = len(host.containerd_log.read_text())
    world.pull("docker.io/library/x:2")
    tried = https_first in host.containerd_log.read_text()[log_start:]
    assert tried == containerd.tls_on_http_tries_https


# --- scripts/verify.py --nodes: the operator's check of the same node --------------------------


# `docker logs [--since S] NAME` on the stand-in VM: the cache's real access log (the whole file:
# --since only narrows what docker prints, and requests-seen.sh looks for digests).
_DOCKER_LOGS = """#!/bin/bash
[[ ${1:-} == logs ]] || { echo "docker stand-in: only logs" >&2; exit 1; }
log=LOGS/${!#}.log
[[ -e $log ]] || { echo "Error response from daemon: No such container: ${!#}" >&2; exit 1; }
cat "$log"
"""


@contextlib.contextmanager
def registry_vm(
    tmp_path: Path, settings: Settings, registries: dict[str, RegistryProcess]
) -> Iterator[NodeHost]:
    """The registry VM as verify reaches it (a test host: netns, sshd, root's key, its host key
    pinned from the outputs), whose `docker logs CONTAINER` prints the access log of the
    Distribution process standing in for that container (``<first label of the host>-proxy``)."""
    logs = tmp_path / "vm-logs"
    logs.mkdir()
    for upstream, mirror in mirrors_export(settings).items():
        registry = registries.get(f"{upstream.split('.')[0]}-proxy")
        if registry is not None:
            (logs / f"{mirror['container']}.log").symlink_to(registry.log_path)
    (tmp_path / "vm").mkdir()
    with node_host(tmp_path / "vm", private_system=True) as vm:
        docker = _DOCKER_LOGS.replace("LOGS", shlex.quote(str(logs)))
        # Each cache's data directory, for verify's disk check (empty: nothing is stored there).
        data = " ".join(
            shlex.quote(f"/var/lib/registry/{m['container']}")
            for m in mirrors_export(settings).values()
        )
        put = (
            f"mkdir -p /usr/local/bin {data} && cat >/usr/local/bin/docker"
            " && chmod 0755 /usr/local/bin/docker"
        )
        result = vm.ssh(put, docker)
        assert result.returncode == 0, result.stderr
        yield vm


def run_verify_nodes(
    settings: Settings,
    host: NodeHost,
    workdir: Path,
    *images: str,
    mirror_images: Any = (),
    ca_pem: str | None = None,
    ssh_key: Path | None = None,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    vm: NodeHost | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run scripts/verify.py --nodes against a test node, as an operator would (with the node's
    root key, or ``ssh_key``; the caches' logs on ``vm``, else none: --no-vm)."""
    stack_file = workdir / "Pulumi.test.yaml"
    raw = settings.model_dump(by_alias=True, exclude_none=True)
    stack_file.write_text(
        yaml.safe_dump({"config": {f"registry-mirrors:{k}": v for k, v in raw.items()}})
    )
    outputs = workdir / "outputs.json"
    exported: dict[str, Any] = {
        "mirrors": mirrors_export(settings),
        "tls": tls_export(settings, ca_pem),
    }
    if vm is not None:
        exported["registryVm"] = {
            "address": vm.node_address,
            "sshUser": "root",
            "sshHostPublicKey": vm.host_public_key,
        }
        extra_args = (*extra_args, f"--ssh-option=-i{vm.key}")
    else:
        extra_args = (*extra_args, "--no-vm")
    outputs.write_text(json.dumps(exported))
    image_args = [arg for image in images for arg in ("--node-image", image)]
    # The mirrors have no probe image of their own in these tests: only the API check.
    mirror_args = [arg for image in mirror_images for arg in ("--image", image)]
    return subprocess.run(
        [
            sys.executable, str(ROOT / "scripts" / "verify.py"),
            "--outputs", str(outputs), "--stack-file", str(stack_file), "--nodes",
            "--timeout", "20", *image_args, *mirror_args,
            f"--ssh-option=-i{ssh_key or host.key}", *extra_args,
        ],
        capture_output=True, text=True, timeout=300, check=False, env=env,
    )  # fmt: skip


def _verify_nodes(world: World, vm: NodeHost, *images: str) -> subprocess.CompletedProcess[str]:
    return run_verify_nodes(
        world.settings,
        world.host,
        world.workdir,
        *images,
        mirror_images=("docker.io=library/x:1", "ghcr.io=org/y:1"),
        ca_pem=world.ca_pem,
        vm=vm,
    )


def _row(stdout: str, check: str) -> str:
    [row] = [line for line in stdout.splitlines() if f"  {check}  " in line]
    return row


def _bypass_rows(stdout: str) -> dict[str, str]:
    """The node's bypass rows by container."""
    return {line.split()[1]: line for line in stdout.splitlines() if "  bypass  " in line}


def test_verify_nodes_fails_the_broken_node_and_passes_it_after_apply(
    world: World, tmp_path: Path
) -> None:
    with registry_vm(tmp_path, world.settings, world.registries) as vm:
        before = _verify_nodes(world, vm)
        world.apply(world.plan())
        # Different tags: test images of one tag share digests, and a blob the node already has
        # is not fetched again (so it would never reach the second cache).
        after = _verify_nodes(world, vm, "docker.io/library/x:2", "ghcr.io/org/y:3")
    assert before.returncode == 1, before.stdout + before.stderr
    assert "config_path" in before.stderr and "mirrors" in before.stderr
    assert "run pulumi up" in before.stderr
    # 1.7+: the running daemon itself names the mirrors it loaded.
    running = "deprecations: running containerd still has a `mirrors` entry"
    assert (running in before.stderr) == world.containerd.has_deprecations, before.stderr
    # Before the apply containerd uses `mirrors` (docker.io's mirror only, and no config_path):
    # the ghcr.io cache never heard from the node.
    rows = _bypass_rows(before.stdout)
    assert "FAIL" in rows["registry-ghcr"] and "never reached the cache" in rows["registry-ghcr"]

    assert after.returncode == 0, after.stdout + after.stderr
    # 2.x dumps `config_path = '...'` in single quotes: verify-node.sh must read both quotings.
    quote = world.containerd.dump_quote
    dump = world.host.ssh("containerd config dump").stdout
    assert f"config_path = {quote}{DEFAULT_CONFIG_PATH}{quote}" in dump
    assert f"config_path={DEFAULT_CONFIG_PATH!r}" in after.stdout
    assert "docker.io/library/x:2 cached in" in after.stdout
    assert "ghcr.io/org/y:3 cached in" in after.stdout
    # The node's pull really went through the ghcr proxy, asked on behalf of ghcr.io.
    assert requests_in(world.registries["ghcr-proxy"], "/v2/org/y/manifests/3?ns=ghcr.io") > 0
    rows = _bypass_rows(after.stdout)
    assert sorted(rows) == ["registry", "registry-ghcr"], after.stdout
    assert all(" ok " in row and "reached the cache" in row for row in rows.values()), rows
    # The node's hosts.toml files: none before the apply, then exactly the program's.
    assert "missing: docker.io, ghcr.io" in _row(before.stdout, "hosts.toml"), before.stdout
    assert "2 as applied (docker.io, ghcr.io)" in _row(after.stdout, "hosts.toml"), after.stdout


def test_verify_nodes_flags_a_node_that_bypasses_its_mirror_while_the_cache_is_busy(
    world: World, tmp_path: Path
) -> None:
    """A node whose hosts.toml skips the mirror pulls fine, and the catalog check is fooled (the
    mirror holds library/x already: verify's own probe resolved x:1 through it). Another client
    pulls through the same mirror the whole time, so its request counter moves during the
    node's pulls (the control: that is what the counter verdict passed on). The node's own
    request never reached the mirror: that is what flags the bypass."""
    world.apply(world.plan())
    upstream = f"http://{world.host.host_address}:{UPSTREAM_PORTS['docker.io']}"
    (world.host.etc_containerd / "certs.d" / "docker.io" / "hosts.toml").write_text(
        f'server = "{upstream}"\n\n[host."{upstream}"]\n  capabilities = ["pull", "resolve"]\n'
    )
    mirror = world.registries["docker-proxy"]
    other_client = f"http://{world.host.host_address}:{world.settings.upstreams[0].port}"
    other_path = "/v2/library/x/manifests/1?ns=docker.io"
    manifest = f"{other_client}{other_path}"
    busy = threading.Event()

    def pull_meanwhile() -> None:
        while not busy.is_set():
            request = urllib.request.Request(manifest, method="HEAD")  # noqa: S310
            request.add_header("Accept", "application/vnd.oci.image.index.v1+json")
            with contextlib.suppress(OSError), urllib.request.urlopen(request, timeout=5):  # noqa: S310
                pass
            busy.wait(0.2)

    with registry_vm(tmp_path, world.settings, world.registries) as vm:
        other = threading.Thread(target=pull_meanwhile, daemon=True)
        served_before = requests_in(mirror, other_path)
        other.start()
        try:
            bypassed = _verify_nodes(world, vm, "docker.io/library/x:2")
        finally:
            busy.set()
            other.join()
        served_during = (
            requests_in(mirror, "/v2/library/x/manifests/1?ns=docker.io") - served_before
        )
        world.apply(world.plan())  # puts our hosts.toml back
        through = _verify_nodes(world, vm, "docker.io/library/x:4")

    assert served_during > 2, "the other client kept the mirror busy"
    assert bypassed.returncode == 1, bypassed.stdout + bypassed.stderr
    assert "docker.io/library/x:2 cached in" in bypassed.stdout
    row = _bypass_rows(bypassed.stdout)["registry"]
    assert "FAIL" in row and "docker.io: this node's request" in row, row
    assert "never reached the cache" in row
    assert "this node's pull never reached the cache" in bypassed.stderr
    # The ghcr.io mirror is still listed first in its hosts.toml: its row passes.
    assert " ok " in _bypass_rows(bypassed.stdout)["registry-ghcr"]
    # The edited file is not the one the program wrote; the other one is.
    hosts = _row(bypassed.stdout, "hosts.toml")
    assert "FAIL" in hosts and "changed: docker.io" in hosts and "ghcr.io" not in hosts, hosts
    assert " ok " in _row(through.stdout, "hosts.toml")

    assert through.returncode == 0, through.stdout + through.stderr
    row = _bypass_rows(through.stdout)["registry"]
    assert " ok " in row and "reached the cache" in row, row


# --- TLS: the node trusts exactly the caches' CA ------------------------------------------------


def test_a_node_trusting_another_ca_bypasses_the_cache_and_verify_flags_it(world: World) -> None:
    """The control of the TLS proof: the same node, its CA file holding another CA (a VM
    recreated, the node not yet updated; or someone answering for the VM's address). containerd
    refuses the handshake and takes the next host (here `server`, the upstream): the pull still
    works, the cache never hears of it, containerd's log says why, and verify --nodes fails the
    node's bypass row. With our CA back, the next pull goes through the cache again."""
    host = world.host
    world.apply(world.plan())
    ca_file = host.etc_containerd / "certs.d" / "registry-mirrors-ca.pem"
    assert ca_file.read_text() == world.ca_pem
    proxy, upstream = world.registries["docker-proxy"], world.registries["docker-upstream"]

    other = make_test_ca(world.workdir / "other-ca", ip=host.host_address, name="other", days=90)
    ca_file.write_text(other.ca_cert.read_text())
    log_start = len(host.containerd_log.read_text())
    before, upstream_before = requests_in(proxy, "ns=docker.io"), requests_in(upstream, "/x/")
    world.pull("docker.io/library/x:2")
    assert requests_in(proxy, "ns=docker.io") == before
    assert requests_in(upstream, "/x/") > upstream_before
    logged = host.containerd_log.read_text()[log_start:]
    assert "certificate signed by unknown authority" in logged, logged[-3000:]

    with registry_vm(world.workdir, world.settings, world.registries) as vm:
        bypassed = _verify_nodes(world, vm, "docker.io/library/x:3")
    assert bypassed.returncode == 1, bypassed.stdout + bypassed.stderr
    row = _bypass_rows(bypassed.stdout)["registry"]
    assert "FAIL" in row and "never reached the cache" in row, row

    # The hosts step run again writes the CA back. (A CA file changed by hand is drift the
    # preview does not show, as for a hosts.toml edited by hand: issue 27, item 1.)
    hosts_out, _ = world.apply(world.plan())
    assert "trust=written" in hosts_out
    before = requests_in(proxy, "ns=docker.io")
    world.pull("docker.io/library/x:4")
    assert requests_in(proxy, "ns=docker.io") > before
