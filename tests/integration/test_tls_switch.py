"""The HTTP -> HTTPS switch of an existing stack, driven on test hosts in the program's order while
two nodes pull without a pause: no pull fails (issue 20, "Switching an existing stack from HTTP
to HTTPS loses no pull").

The stack before: TLS off, the front serving plain HTTP, two nodes (containerd 1.6.20 and 2.1.9)
whose hosts.toml name ``http://VM:5000``. The upgrade, step by step as ``pulumi up`` runs it
(components/program.py), each with the program's own scripts and parameters:

1. the VM's trust step (scripts/vm/registry-tls.sh trust: the CA, a first certificate), then
   the front step (scripts/vm/front.sh with the new files: the HTTPS ports are new listeners, so a
   drained restart; the plain ports keep serving);
2. the nodes, one batch after the other: the hosts step with the CA in front (https://VM:5002,
   ``ca = [...]``), read and planned as the program does;
3. after the last node step (FrontSwitch): the certificate from the CA every node now trusts, and
   the plain ports refuse (a reload).

Every pull is recorded (when, which node, ok or the error). Afterwards each node's pull goes
through the cache over TLS, and the plain port refuses. The real front, Distribution, containerd,
sshd; only systemctl is a stand-in (no systemd here). Traffic stays on the test's addresses: the
second node reaches the VM's address (the first node's veth) through a host route of its own.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from components.fleet import read_node, ssh_runner
from components.plan.node_plan import plan_node, role_to_send
from components.plan.node_steps import check_step
from components.renderers.front_proxy import Front, FrontCache
from components.renderers.tls import tls_params
from components.settings import Node, Settings, load_settings
from tests.integration import cri_client
from tests.integration.blob_client import request
from tests.integration.containerd_versions import V1_6, V2_1
from tests.integration.front_proc import ManagedFront, managed_front
from tests.integration.registry_proc import RegistryProcess, free_port, running_registry
from tests.integration.test_node_e2e import (
    proxy_config,
    start_config,
    upstream_registry_config,
)
from tests.integration.testhost import NodeHost, node_host
from tests.prereq import require_binary, require_root
from tests.sample import sample_raw

pytestmark = pytest.mark.integration

UPSTREAM_PORT = 6000


def _settings(vm: NodeHost, nodes: list[NodeHost], *, tls: bool) -> Settings:
    raw = sample_raw()
    raw["vm"]["address"] = f"{vm.host_address}/30"
    raw["vm"]["gateway"] = vm.node_address
    raw["upstreams"] = [{"host": "docker.io", "port": 5000, "container": "registry",
                         "server": f"http://{vm.host_address}:{UPSTREAM_PORT}"}]  # fmt: skip
    raw["nodes"] = [
        {"name": f"node-{i}", "address": host.node_address, "restartCommand": host.restart_command,
         "sshHostPublicKey": host.host_public_key}
        for i, host in enumerate(nodes, start=1)
    ]  # fmt: skip
    raw["containerd"] = {"restartTimeoutSeconds": 20, "batchSize": 1}
    raw["tls"] = {"enabled": tls}
    return load_settings(raw)


def _front(settings: Settings, backend: int, *, plain: bool) -> Front:
    [upstream] = settings.upstreams
    tls_port = upstream.resolved_tls_port if settings.tls.enabled else None
    return Front(
        (FrontCache(upstream.container, upstream.port, backend, tls_port),),
        plain_http=plain,
        managed_certificate=settings.tls.enabled,
        storage_mb=128,
    )


@dataclass
class Pulls:
    """Pulls without a pause on each node until stopped: (node, monotonic time, error or "")."""

    nodes: dict[str, NodeHost]
    image: str = "docker.io/library/x:1"
    results: list[tuple[str, float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, name: str, host: NodeHost) -> None:
        while not self.stop.is_set():
            error = ""
            try:
                cri_client.pull_image(host.containerd_socket, self.image, timeout=60)
                # Removed again: the next pull fetches its blobs again, not only the manifest.
                cri_client.remove_image(host.containerd_socket, self.image)
            except Exception as failure:
                error = f"{type(failure).__name__}: {failure}"
            self.results.append((name, time.monotonic(), error))

    @contextlib.contextmanager
    def running(self) -> Iterator[Pulls]:
        threads = [threading.Thread(target=self.run, args=item) for item in self.nodes.items()]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=120)

    def since(self, moment: float) -> list[tuple[str, float, str]]:
        return [result for result in self.results if result[1] >= moment]


def _apply_node(settings: Settings, node: Node, host: NodeHost, ca_pem: str | None) -> None:
    """Read, plan and apply one node as the program and the component do (hosts, config)."""
    plan = plan_node(settings, node, read_node(settings, node, ssh_runner(host.agent_socket)))
    for step in plan.steps:
        result = host.run_step(role_to_send(plan, step.role, ca_pem))
        check_step(node, step.role, result.returncode, result.stderr)


def _route_to(vm: NodeHost, other: NodeHost) -> None:
    """``other``'s node reaches the VM's address (``vm``'s host end) through its own veth."""
    subprocess.run(
        ["ip", "netns", "exec", other.netns, "ip", "route", "add", f"{vm.host_address}/32",
         "via", other.host_address],
        check=True, capture_output=True,
    )  # fmt: skip


def test_switching_an_existing_stack_to_https_loses_no_pull(tmp_path: Path) -> None:
    require_root()
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "skopeo", "traffic_manager"):
        require_binary(binary)
    with (
        node_host(tmp_path / "a", V1_6) as first,
        node_host(tmp_path / "b", V2_1) as second,
        contextlib.ExitStack() as running,
    ):
        _route_to(first, second)
        hosts = {"node-1": first, "node-2": second}
        plain_settings = _settings(first, list(hosts.values()), tls=False)
        tls_settings = _settings(first, list(hosts.values()), tls=True)
        address = first.host_address
        upstream: RegistryProcess = running.enter_context(
            running_registry(upstream_registry_config(tmp_path / "upstream"),
                             tmp_path / "upstream", host=address, port=UPSTREAM_PORT)
        )  # fmt: skip
        _push_image(upstream, tmp_path)
        backend = free_port()
        [docker_io] = plain_settings.upstreams
        proxy = running.enter_context(
            running_registry(proxy_config(plain_settings, docker_io, tmp_path / "proxy"),
                             tmp_path / "proxy", port=backend)
        )  # fmt: skip
        managed: ManagedFront = running.enter_context(
            managed_front(tmp_path / "front", listen=address)
        )

        # The stack before: TLS off, the front serving plain HTTP, every node on http://.
        started = managed.apply(_front(plain_settings, backend, plain=True))
        assert started.returncode == 0, started.stderr + managed.log()[-2000:]
        for host in hosts.values():
            host.start_containerd(start_config(f"http://{address}:5000"))
        for node in plain_settings.nodes:
            _apply_node(plain_settings, node, hosts[node.name], None)

        pulls = Pulls(hosts)
        with pulls.running():
            time.sleep(3)
            switch_started = time.monotonic()
            # 1. The VM: the CA and a first certificate, then the front with its HTTPS ports.
            trust = managed.tls(tls_params(tls_settings, "trust"))
            assert trust.returncode == 0, trust.stderr
            ca_pem = trust.stdout
            front = managed.apply(_front(tls_settings, backend, plain=True))
            assert front.returncode == 0, front.stderr + managed.log()[-2000:]
            assert "restart" in front.stdout  # new listeners: drained, then restarted
            time.sleep(2)
            # 2. The nodes, one batch after the other, each with the CA in front of its stdin.
            for node in tls_settings.nodes:
                _apply_node(tls_settings, node, hosts[node.name], ca_pem)
                time.sleep(2)
            # 3. After the last node step: the certificate from the CA the nodes trust (already
            # it here: a new stack's first), and plain HTTP refused.
            issue = managed.tls(tls_params(tls_settings, "issue"))
            assert issue.returncode == 0, issue.stderr
            final = managed.apply(_front(tls_settings, backend, plain=False), restart=False)
            assert final.returncode == 0, final.stderr
            assert "action=reload" in final.stdout
            time.sleep(3)
        during = pulls.since(switch_started)
        failed = [result for result in during if result[2]]
        assert not failed, failed[:5]
        for name in hosts:
            assert sum(1 for result in during if result[0] == name) >= 5, during

        # After: each node pulls through the cache, over TLS; the plain port refuses.
        for name, host in hosts.items():
            before = proxy.log().count("/v2/library/x/manifests/1?ns=docker.io")
            cri_client.pull_image(host.containerd_socket, "docker.io/library/x:1")
            assert proxy.log().count("/v2/library/x/manifests/1?ns=docker.io") > before, name
            text = (host.etc_containerd / "certs.d" / "docker.io" / "hosts.toml").read_text()
            assert f'[host."https://{address}:5002"]' in text and '[host."http://' not in text
        assert request(f"http://{address}:5000", "GET", "/v2/")[0] == 403

        # Control: the order matters and a failed pull is seen. A hosts.toml naming a CA file
        # that is not (yet) there fails the pull outright, with no fallback: hence the hosts step
        # writes the CA first. The pulls above would have shown such failures.
        ca_file = second.etc_containerd / "certs.d" / "registry-mirrors-ca.pem"
        ca_text = ca_file.read_text()
        ca_file.unlink()
        with pytest.raises(grpc.RpcError, match="unable to read CA cert"):
            cri_client.pull_image(second.containerd_socket, "docker.io/library/x:1")
        ca_file.write_text(ca_text)


def _push_image(upstream: RegistryProcess, workdir: Path) -> None:
    from tests.integration.oci_image import build_multiarch_image
    from tests.integration.test_node_e2e import push

    push(build_multiarch_image(workdir / "image", "1"), upstream, "library/x")
