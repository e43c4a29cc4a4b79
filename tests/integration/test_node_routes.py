"""Routes that are not ours are carried, never dropped (issue 27, item 5): the real daemons
(every version), the project's scripts over real SSH, CRI pulls.

- A wildcard mirror pointing at a proxy of the node's own (a corporate Nexus: here a Distribution
  pull-through proxy on the test host, the "nexus") becomes ``_default/hosts.toml``: a registry
  with no hosts.toml of its own (``quay.io``) is pulled through it; our upstreams still go to our
  caches first (containerd looks for ``<host>/`` before ``_default/``).
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from components.plan.node_steps import restore_config_step, restore_hosts_step
from tests.integration import test_node_e2e as e2e
from tests.integration.registry_proc import plain_registry_config, running_registry
from tests.integration.test_node_e2e import UPSTREAM_PORTS, World, requests_in, start_config
from tests.prereq import require_binary

pytestmark = pytest.mark.integration

upstream_storage = e2e.upstream_storage
node_start = e2e.node_start
world = e2e.world

NEXUS_PORT = 5800


def other_address(world: World) -> str:
    """A second address on the host end of the node's veth, routed from the node: a proxy that is
    not on the registry VM's address (the program takes anything there for one of its caches).
    Goes away with the veth when the node is torn down."""
    host = world.host
    token = host.netns.removeprefix("rmt-")
    third, fourth = host.host_address.split(".")[2:]
    address = f"10.232.{third}.{fourth}"
    for command in (
        ["ip", "addr", "add", f"{address}/32", "dev", f"rmh{token}"],
        ["ip", "-n", host.netns, "route", "add", f"{address}/32", "dev", f"rmn{token}"],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=10)
    return address


def test_a_foreign_wildcard_mirror_becomes_default_hosts_toml(world: World) -> None:
    host = world.host
    addr = other_address(world)
    nexus_dir = world.workdir / "nexus"
    nexus_dir.mkdir()
    nexus_config = {
        **plain_registry_config(nexus_dir / "data"),
        "log": {"level": "info"},
        "proxy": {"remoteurl": f"http://{host.host_address}:{UPSTREAM_PORTS['docker.io']}"},
    }
    with running_registry(nexus_config, nexus_dir, host=addr, port=NEXUS_PORT) as nexus:
        host.start_containerd(start_config(f"http://{addr}:{NEXUS_PORT}", 2))
        plan = world.plan()
        assert any(line.startswith("wildcard mirror carried to _default") for line in plan.summary)
        default = tomllib.loads(plan.hosts_files["_default"])
        assert "server" not in default and list(default["host"]) == [f"http://{addr}:{NEXUS_PORT}"]
        # Our upstreams: our cache, then the node's own route, then the upstream.
        docker = tomllib.loads(plan.hosts_files["docker.io"])
        ours = world.settings.endpoint(world.settings.upstreams[0])  # https://IP:5002, TLS on
        assert list(docker["host"]) == [ours, f"http://{addr}:{NEXUS_PORT}"]
        world.apply(plan)
        assert host.cri_status() == "ok"

        # A registry we do not cache, through the node's own route (the netns has no route
        # anywhere else: without _default the pull would fail at once).
        world.pull("quay.io/library/x:1")
        assert requests_in(nexus, "ns=quay.io") > 0
        # Ours still come to our cache first, never the nexus.
        world.pull("docker.io/library/x:2")
        assert requests_in(world.registries["docker-proxy"], "ns=docker.io") > 0
        assert requests_in(nexus, "ns=docker.io") == 0

        # Control: without _default/hosts.toml the same kind of pull does not get through.
        shutil.rmtree(host.etc_containerd / "certs.d" / "_default")
        with pytest.raises(Exception, match=r"(?i)unreachable|failed to resolve|failed to pull"):
            world.pull("quay.io/library/x:3")


def test_a_wildcard_mirror_pointing_at_our_cache_is_dropped(world: World) -> None:
    """The issue 4 node: its wildcard mirror is our docker.io cache. No _default: it would send
    every registry to one upstream's cache."""
    plan = world.plan()
    assert "_default" not in plan.hosts_files
    assert any(line.startswith('dropped wildcard mirror "*"') for line in plan.summary)


# --- a previous config_path: /etc/docker/certs.d with a private CA (issue 27, item 5) ------------

PRIVATE_PORT = 5443
LIST_CONFIG = """version = 2

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"

  [plugins."io.containerd.grpc.v1.cri".cni]
    conf_dir = "/etc/containerd/cni"

  [plugins."io.containerd.grpc.v1.cri".registry]
    # containerd 2.2's default, written out (1.x reads the list; 2.x's CRI pull path takes it for
    # one directory named with a colon)
    config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"
"""


def _private_ca(workdir: Path, address: str) -> tuple[Path, Path, Path]:
    """A CA of the test's own and a server certificate for ``address`` signed by it."""
    workdir.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    curve = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *curve, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=registry-mirrors test CA")  # fmt: skip
    openssl("req", *curve, "-keyout", "server.key", "-out", "server.csr", "-subj", f"/CN={address}")
    (workdir / "san.ext").write_text(f"subjectAltName=IP:{address}\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2",
            "-extfile", "san.ext")  # fmt: skip
    return workdir / "ca.crt", workdir / "server.crt", workdir / "server.key"


@pytest.mark.etc_overlay
def test_a_private_ca_in_etc_docker_certs_d_is_carried_and_pulled_through(
    world: World, upstream_storage: Path
) -> None:
    """A node whose config_path is containerd 2.2's default list: /etc/docker/certs.d holds the
    CA and the hosts.toml of a private registry (a Distribution serving TLS with a certificate of
    the test's own CA, on a second address). The directory is carried into certs.d (copied on the
    node, its relative `ca` resolving in the copy); a CRI pull of the private registry works after
    the migration on every version. Control: without the carried copy the same pull fails
    (unknown authority). The carried CA deleted on the node: the hosts step shows a change and
    copies it back. Restored: config.toml back, the copy gone, /etc/docker untouched."""
    require_binary("openssl")
    host = world.host
    addr = other_address(world)
    private = f"{addr}:{PRIVATE_PORT}"
    ca, cert, key = _private_ca(world.workdir / "pki", addr)
    storage = world.workdir / "private"
    shutil.copytree(upstream_storage, storage / "data")
    config = {
        **plain_registry_config(storage / "data"),
        "log": {"level": "info"},
        "http": {"addr": "127.0.0.1:0", "tls": {"certificate": str(cert), "key": str(key)}},
    }
    docker_dir = host.etc_upper / "docker" / "certs.d" / private
    docker_dir.mkdir(parents=True)
    shutil.copy(ca, docker_dir / "ca.crt")
    hosts_toml = (
        f'server = "https://{private}"\n\n[host."https://{private}"]\n'
        '  capabilities = ["pull", "resolve"]\n  ca = "ca.crt"\n'
    )
    (docker_dir / "hosts.toml").write_text(hosts_toml)
    original = LIST_CONFIG.format(pause=e2e.PAUSE)
    with running_registry(config, storage, host=addr, port=PRIVATE_PORT) as registry:
        host.start_containerd(original)
        plan = world.plan()
        assert any(
            line.startswith(f"carried /etc/docker/certs.d/{private} (ca.crt, hosts.toml) into")
            for line in plan.summary
        ), plan.summary
        assert "export CARRY=" in plan.hosts.command
        world.apply(plan)
        assert host.cri_status() == "ok"
        carried = host.etc_containerd / "certs.d" / private
        assert (carried / "ca.crt").read_bytes() == ca.read_bytes()
        assert (carried / "hosts.toml").read_text() == hosts_toml
        assert world.effective_config_path() == "/etc/containerd/certs.d"

        world.pull(f"{private}/library/x:1")
        assert requests_in(registry, "/v2/library/x/manifests/1") > 0
        # The next read plans the very same steps: no diff in a preview.
        again = world.plan()
        assert (again.hosts, again.config) == (plan.hosts, plan.config)

        # Control: the route not carried, the same kind of pull fails on the private CA.
        shutil.move(carried, world.workdir / "carried-aside")
        with pytest.raises(Exception, match=r"(?i)x509|certificate|unknown authority"):
            world.pull(f"{private}/library/x:2")
        shutil.move(world.workdir / "carried-aside", carried)

        # A carried file is part of what the hosts step left (issue 27, item 1): deleted on the
        # node (a config manager wiping certs.d), the hosts step plans a change (a new mark)
        # that copies it back; as left again, the same steps as before the deletion.
        assert world.plan().hosts == plan.hosts  # control: moved back whole, nothing to do
        (carried / "ca.crt").unlink()
        drifted = world.plan()
        assert drifted.hosts.command != plan.hosts.command and drifted.config == plan.config
        assert "export APPLY_MARK=drift-" in drifted.hosts.command
        world.apply(drifted)
        assert (carried / "ca.crt").read_bytes() == ca.read_bytes()
        assert world.plan().hosts == drifted.hosts

        for step in (
            restore_hosts_step(world.settings, world.node),
            restore_config_step(world.settings, world.node),
        ):
            result = host.run_step(step)
            assert result.returncode == 0, result.stderr
        assert host.config_file.read_text() == original
        assert not carried.exists()
        assert sorted(p.name for p in docker_dir.iterdir()) == ["ca.crt", "hosts.toml"]
        assert (docker_dir / "hosts.toml").read_text() == hosts_toml
