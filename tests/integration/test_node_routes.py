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

import pytest

from tests.integration import test_node_e2e as e2e
from tests.integration.registry_proc import plain_registry_config, running_registry
from tests.integration.test_node_e2e import UPSTREAM_PORTS, World, requests_in, start_config

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
        ours = f"http://{host.host_address}:5000"
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
