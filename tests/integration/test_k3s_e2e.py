"""k3s / RKE2 nodes end to end: the project's probe and registries.sh over real SSH against a test
node laid out like a k3s/RKE2 node, with a real containerd serving CRI on
/run/k3s/containerd/containerd.sock and a TEST STAND-IN for the k3s service
(tests/integration/k3s_standin.py) that regenerates config.toml and certs.d from registries.yaml on
restart. k3s itself is NOT run here (it cannot be installed on these machines).

Commands and stdin come from node_plan and node_steps (plan_registries, restore_registries_step),
the functions the Pulumi component uses. Traffic stays on addresses this test created.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.fleet import read_node, ssh_runner
from components.plan.node_plan import RegistriesPlan, plan_registries, role_to_send
from components.plan.node_probe import parse_probe, parse_step_result
from components.plan.node_steps import (
    NodeStepError,
    Step,
    check_step,
    probe_step,
    restore_registries_step,
)
from components.renderers.flavours import FLAVOURS
from components.settings import Node, Settings
from tests.integration import cri_client
from tests.integration.containerd_versions import V2_1
from tests.integration.front_proc import TestCa, make_test_ca
from tests.integration.oci_image import MultiArchImage, build_multiarch_image
from tests.integration.registry_proc import RegistryProcess, running_registry
from tests.integration.test_node_e2e import (
    UPSTREAM_PORTS,
    make_settings,
    push,
    registry_vm,
    run_verify_nodes,
    serve_caches,
    upstream_registry_config,
)
from tests.integration.testhost import NodeHost, node_host
from tests.prereq import require_binary, require_root

pytestmark = pytest.mark.integration

# The containerd the stand-in runs: k3s and RKE2 embed containerd 2.x today.
CONTAINERD = V2_1


# The person's own file: their mirror for docker.io with a rewrite, a private registry with
# auth and TLS, and the wildcard to the Docker Hub cache this project exists to remove.
def users_registries_yaml(cache: str) -> str:
    return f"""\
# Written by hand on the node: keep this comment.
mirrors:
  "*":
    endpoint:
      - "{cache}"
  registry.example.com:
    endpoint:
      - "https://registry.example.com:8443"
configs:
  "registry.example.com:8443":
    auth:
      username: node-user
      password: node-secret-password
    tls:
      insecure_skip_verify: true
"""


@dataclass
class K3sWorld:
    host: NodeHost
    settings: Settings
    node: Node
    registries: dict[str, RegistryProcess]
    # The CA the caches' certificate comes from, as the VM's trust step prints it.
    ca: TestCa

    @property
    def ca_file(self) -> Path:
        """The node's /etc/rancher/registry-mirrors-ca.pem, seen from the host."""
        return self.host.etc_upper / "rancher" / "registry-mirrors-ca.pem"

    def probe(self) -> str:
        """Read the node exactly as the program does while it runs (preview included)."""
        return read_node(self.settings, self.node, ssh_runner(self.host.agent_socket))

    def plan(self) -> RegistriesPlan:
        return plan_registries(self.settings, self.node, self.probe())

    def send(self, plan: RegistriesPlan) -> Any:
        """The registries step as the component sends it (TLS on: the CA in front of stdin)."""
        return self.host.run_step(role_to_send(plan, "registries", self.ca.ca_cert.read_text()))

    def apply(self, plan: RegistriesPlan) -> Any:
        result = self.send(plan)
        check_step(self.node, "registries", result.returncode, result.stderr)
        return parse_step_result(result.stdout)

    def pull(self, image: str) -> str:
        return cri_client.pull_image(self.host.cri_socket, image)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MultiArchImage]:
    root = tmp_path_factory.mktemp("oci")
    return {tag: build_multiarch_image(root / f"image-{tag}", tag) for tag in ("1", "2")}


def _prerequisites() -> None:
    require_root()
    for binary in ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "containerd", "ctr"):
        require_binary(binary)


@contextlib.contextmanager
def k3s_world(
    tmp_path: Path,
    images: dict[str, MultiArchImage] | None,
    flavour: str = "k3s-server",
    private_system: bool = False,
) -> Iterator[K3sWorld]:
    with node_host(tmp_path, CONTAINERD, flavour=flavour, private_system=private_system) as host:
        settings = make_settings(host)
        node = settings.nodes[0]
        with contextlib.ExitStack() as running:
            registries: dict[str, RegistryProcess] = {}
            addr = host.host_address
            ca = make_test_ca(tmp_path / "ca", ip=addr, days=90)
            if images is not None:
                require_binary("docker-registry")
                require_binary("skopeo")
                upstream_dir = tmp_path / "docker-upstream"
                registries["docker-upstream"] = running.enter_context(
                    running_registry(
                        upstream_registry_config(upstream_dir),
                        upstream_dir,
                        host=addr,
                        port=UPSTREAM_PORTS["docker.io"],
                    )
                )
                for image in images.values():
                    push(image, registries["docker-upstream"], "library/x")
                # The Docker Hub cache behind the rendered front, as the VM serves it.
                running.enter_context(
                    serve_caches(settings, tmp_path, ca, addr, settings.upstreams[:1], registries)
                )
            # The broken state: the person's file with the wildcard, k3s running with it.
            # (made while the caches spoke plain HTTP: the wildcard names the plain port)
            host.registries_file.write_text(
                users_registries_yaml(settings.plain_endpoint(settings.upstreams[0]))
            )
            start = host.ssh(host.restart_command)
            assert start.returncode == 0, start.stderr + host.service_log.read_text()
            _wait_cri_ok(host)
            yield K3sWorld(host, settings, node, registries, ca)


def _wait_cri_ok(host: NodeHost, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.cri_status() == "ok" and _readyz(host) in (None, True):
            return
        time.sleep(0.1)
    raise AssertionError(f"CRI not ok (or /readyz failing): {host.service_log.read_text()}")


def _readyz(host: NodeHost) -> bool | None:
    """A server's /readyz as the registries step asks it (None on an agent: no API server)."""
    flavour = FLAVOURS[host.flavour]
    if flavour.role != "control-plane":
        return None
    return host.ssh(flavour.health_command).returncode == 0


# --- detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["k3s-server", "k3s-agent", "rke2-server", "rke2-agent"])
def test_probe_detects_the_flavour_and_agrees_with_the_table(tmp_path: Path, flavour: str) -> None:
    _prerequisites()
    with k3s_world(tmp_path, None, flavour) as world:
        probe = parse_probe(world.probe())
        row = FLAVOURS[flavour]
        assert probe.flavour == flavour
        assert (probe.unit, probe.cri_socket, probe.registries_file, probe.hosts_dir) == (
            row.unit,
            row.cri_socket,
            row.registries_file,
            row.hosts_dir,
        )
        assert probe.ctr == f"{row.bin_dir}/ctr"
        assert probe.containerd_log == row.containerd_log
        # The embedded containerd's version, read from the distribution's own binary.
        assert (probe.containerd_version and probe.containerd_version[0].isdigit()) or (
            probe.containerd_version.startswith("v")
        )
        assert "TEST STAND-IN" in probe.distribution_version
        assert probe.registries_exists
        assert probe.registries_text == world.host.registries_file.read_text()


def test_plain_containerd_node_is_detected_as_before(tmp_path: Path) -> None:
    _prerequisites()
    with node_host(tmp_path) as host:
        settings = make_settings(host)
        result = host.run_step(probe_step(settings, settings.nodes[0]))
        assert result.returncode == 0, result.stderr
        probe = parse_probe(result.stdout)
        assert (probe.flavour, probe.unit) == ("containerd", "containerd")
        assert probe.cri_socket == "/run/containerd/containerd.sock"
        assert probe.registries_file == ""
        with pytest.raises(NodeStepError, match="is plain containerd: use plan_node"):
            plan_registries(settings, settings.nodes[0], result.stdout)


def test_forced_flavour_that_does_not_match_is_an_error_naming_both(tmp_path: Path) -> None:
    _prerequisites()
    with k3s_world(tmp_path, None, "k3s-agent") as world:
        node = world.node.model_copy(update={"flavour": "rke2-agent"})
        stdout = world.host.run_step(probe_step(world.settings, node)).stdout
        with pytest.raises(
            NodeStepError,
            match=r"node node-1 \(10\.231\.[0-9.]+\): nodes\[\]\.flavour is 'rke2-agent' but "
            r"the node is 'k3s-agent'.*nothing was changed",
        ):
            plan_registries(world.settings, node, stdout)


def test_two_enabled_rke2_units_need_the_setting(tmp_path: Path) -> None:
    _prerequisites()
    with k3s_world(tmp_path, None, "rke2-server") as world:
        wants = world.host.etc_upper / "systemd" / "system" / "multi-user.target.wants"
        (wants / "rke2-agent.service").symlink_to("../rke2-agent.service")
        with pytest.raises(NodeStepError, match=r"rke2-server, rke2-agent.*set nodes\[\]\.flavour"):
            world.plan()
        forced = world.node.model_copy(update={"flavour": "rke2-server"})
        stdout = world.host.run_step(probe_step(world.settings, forced)).stdout
        assert plan_registries(world.settings, forced, stdout).flavour.name == "rke2-server"


# --- apply -------------------------------------------------------------------------------------


def test_merge_restart_generated_hosts_and_a_cri_pull_through_the_cache(
    tmp_path: Path, images: dict[str, MultiArchImage]
) -> None:
    _prerequisites()
    with k3s_world(tmp_path, images) as world:
        host = world.host
        cache = world.settings.endpoint(world.settings.upstreams[0])
        before = host.registries_file.read_text()
        # Before: a _default hosts.toml sends every registry to the Docker Hub cache.
        assert (host.generated_hosts_dir / "_default" / "hosts.toml").exists()
        pid = host.containerd_pid

        plan = world.plan()
        assert plan.changed and plan.replaced_wildcard
        assert any('removed mirrors."*"' in line for line in plan.summary)
        assert "node-secret-password" not in "\n".join(plan.summary)
        result = world.apply(plan)

        assert (result.changed, result.restarted, result.rolled_back) == (True, True, False)
        assert host.containerd_pid != pid
        assert host.cri_status() == "ok"
        written = host.registries_file.read_text()
        data = yaml.safe_load(written)
        assert "*" not in data["mirrors"]
        assert (
            data["mirrors"]["registry.example.com"]
            == yaml.safe_load(before)["mirrors"]["registry.example.com"]
        )
        ours = {k for k in data["configs"] if k.startswith(f"{host.host_address}:")}
        assert {k: v for k, v in data["configs"].items() if k not in ours} == yaml.safe_load(
            before
        )["configs"]
        assert "# Written by hand on the node: keep this comment." in written
        assert (
            host.registries_file.parent / "registries.yaml.registry-mirrors.orig"
        ).read_text() == (before)
        # What the distribution generated from it: our cache first for every upstream, the
        # wildcard's _default gone (k3s deletes the directories it generated before).
        for upstream in world.settings.upstreams:
            generated = (host.generated_hosts_dir / upstream.host / "hosts.toml").read_text()
            first = next(line for line in generated.splitlines() if line.startswith("[host."))
            assert first == f'[host."{world.settings.endpoint(upstream)}/v2"]'
        assert not (host.generated_hosts_dir / "_default").exists()

        # Over TLS, trusting exactly our CA: the file the step wrote before the restart, named
        # by registries.yaml and by the hosts.toml k3s generated from it.
        assert (
            cache == f"https://{host.host_address}:{world.settings.upstreams[0].resolved_tls_port}"
        )
        assert world.ca_file.read_text() == world.ca.ca_cert.read_text()
        assert data["configs"][cache.removeprefix("https://")] == {
            "tls": {"ca_file": "/etc/rancher/registry-mirrors-ca.pem"}
        }
        generated = (host.generated_hosts_dir / "docker.io" / "hosts.toml").read_text()
        assert 'ca = ["/etc/rancher/registry-mirrors-ca.pem"]' in generated
        assert "skip_verify" not in generated
        world.pull("docker.io/library/x:1")
        assert world.registries["docker-proxy"].log().count("ns=docker.io") > 0


def test_reapply_is_a_no_op_without_restart(tmp_path: Path) -> None:
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        first = world.plan()
        assert first.changed
        world.apply(first)
        pid = world.host.containerd_pid
        text = world.host.registries_file.read_text()

        plan = first
        for _ in range(2):
            plan = world.plan()
            result = world.apply(plan)
            # The same inputs as the step that was applied: a preview shows no change.
            assert plan.registries == first.registries
            assert not plan.changed
            assert (result.changed, result.restarted) == (False, False)
        assert world.host.containerd_pid == pid
        assert world.host.registries_file.read_text() == text


def test_edit_between_probe_and_apply_aborts(tmp_path: Path) -> None:
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        plan = world.plan()
        edited = world.host.registries_file.read_text() + "# edited\n"
        world.host.registries_file.write_text(edited)
        result = world.send(plan)  # TLS on: the CA section in front of stdin
        assert result.returncode == 3
        assert "changed since it was probed" in result.stderr
        assert "nothing was changed" in result.stdout + result.stderr
        assert world.host.registries_file.read_text() == edited
        # Nothing means nothing: the CA file comes after the check (it was written before it).
        assert not world.ca_file.exists()


def test_a_file_the_distribution_refuses_is_rolled_back_with_its_own_error(tmp_path: Path) -> None:
    from components.plan.node_steps import registries_step

    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        world.apply(world.plan())
        good = host.registries_file.read_text()
        probe = parse_probe(world.probe())
        # k3s parses with go-yaml and refuses to start: no containerd, no CRI.
        broken = good + "mirrors: [\n"
        step = registries_step(
            world.settings,
            world.node,
            FLAVOURS["k3s-server"],
            probe.registries_sha256,
            broken,
        )
        # The stand-in logs to a file (k3s: the journal), named like CONTAINERD_LOG.
        step = Step(
            step.command.replace(
                "export UNIT=", f"export SERVICE_LOG={host.service_log}\nexport UNIT=", 1
            ),
            step.content,
            step.script,
        )

        result = host.run_step(step)

        assert result.returncode == 5, result.stderr
        # What failed, what was rolled back, what to do; then the distribution's own words.
        what, undone, todo = result.stderr.splitlines()[:3]
        assert what.startswith("registries.sh FAILED on ") and "(exit 5): with the new " in what
        assert undone.startswith("rolled back: the previous /etc/rancher/k3s/registries.yaml is")
        assert todo.startswith("to do: fix what k3s says below")
        assert "level=fatal" in result.stderr
        assert "failed to load private registry configuration" in result.stderr
        assert parse_step_result(result.stderr).rolled_back
        assert host.registries_file.read_text() == good
        assert host.cri_status() == "ok"


def test_a_generated_hosts_toml_without_our_cache_is_rolled_back(tmp_path: Path) -> None:
    """The distribution started fine but did not put our cache first (e.g. a config.toml.tmpl or a
    mirror entry it ignored): the check of the generated files catches it."""
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        before = host.registries_file.read_text()
        # Another port in the expectation than the one written: the generated file names 5000.
        settings = make_settings(host)
        plan = plan_registries(settings, world.node, world.probe())
        sent = role_to_send(plan, "registries", world.ca.ca_cert.read_text())
        cache = settings.endpoint(settings.upstreams[0])
        wrong = sent.command.replace(f"docker.io={cache}", f"docker.io={cache}9")
        assert wrong != sent.command
        result = host.ssh(wrong, sent.stdin)
        assert result.returncode == 5, result.stderr
        assert "does not try our cache" in result.stderr
        assert host.registries_file.read_text() == before
        assert host.cri_status() == "ok"


def test_a_node_back_on_its_original_registries_yaml_is_planned_again_and_brought_back(
    tmp_path: Path,
) -> None:
    """Issue 27 item 1 for k3s/RKE2: someone puts the original registries.yaml back and restarts
    k3s (the wildcard is back). The merge of that file is the first apply's, but the file is not
    what the last apply left: the step shows a change (a new mark) and brings the node back."""
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        original = host.registries_file.read_text()
        first = world.plan()
        world.apply(first)
        merged = host.registries_file.read_text()
        assert world.plan().registries == first.registries  # unchanged: no diff

        host.registries_file.write_text(original)
        assert host.ssh(host.restart_command).returncode == 0
        _wait_cri_ok(host)
        assert (host.generated_hosts_dir / "_default" / "hosts.toml").exists()

        reverted = world.plan()
        assert reverted.registries != first.registries
        # Only the mark tells it apart: the same merge of the same file as the first apply.
        assert reverted.registries.stdin == first.registries.stdin
        assert any("is not what the last apply left" in line for line in reverted.summary)
        result = world.apply(reverted)
        assert (result.changed, result.restarted, result.rolled_back) == (True, True, False)
        assert host.registries_file.read_text() == merged
        assert not (host.generated_hosts_dir / "_default").exists()
        for _ in range(2):
            assert world.plan().registries == reverted.registries


def test_a_ca_file_removed_or_changed_on_the_node_is_planned_again_and_written_back(
    tmp_path: Path,
) -> None:
    """TLS on: the CA file registries.yaml names is recorded with it (lib.sh record_applied,
    applied_also). Removed or changed on the node, the step shows a change (a new mark) and
    writes it back with no restart (registries.yaml is as it was); as left, the very same step
    (control)."""
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        first = world.plan()
        world.apply(first)
        pem = world.ca_file.read_text()
        pid = host.containerd_pid
        steady = world.plan()
        assert world.plan().registries == steady.registries  # as left: no diff (control)

        # On the node (its /etc is an overlay: a change made in the upper directory from outside
        # is not seen through the mounted overlay).
        node_ca = "/etc/rancher/registry-mirrors-ca.pem"
        for drift, command in (
            ("remove", f"rm {node_ca}"),
            ("change", f"sed -i 's/A/B/' {node_ca}"),
        ):
            done = host.ssh(command)
            assert done.returncode == 0, done.stderr
            drifted = world.plan()
            assert drifted.registries != steady.registries, drift
            assert drifted.registries.content == steady.registries.content, drift
            assert any("is not what the last apply left" in line for line in drifted.summary)
            result = world.apply(drifted)
            assert (result.changed, result.restarted) == (False, False), drift
            assert world.ca_file.read_text() == pem
            steady = world.plan()
            assert world.plan().registries == steady.registries
        assert host.containerd_pid == pid


def test_state_restored_puts_the_original_file_back(tmp_path: Path) -> None:
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        original = host.registries_file.read_text()
        world.apply(world.plan())
        assert host.registries_file.read_text() != original
        assert world.ca_file.exists()

        delete = host.run_step(
            restore_registries_step(world.settings, world.node, FLAVOURS["k3s-server"])
        )
        check_step(world.node, "restore-registries", delete.returncode, delete.stderr)

        assert "restored=1" in delete.stdout and "restarted=1" in delete.stdout
        assert host.registries_file.read_text() == original
        assert not world.ca_file.exists()  # ours, named only by what was just restored away
        assert not (host.registries_file.parent / "registries.yaml.registry-mirrors.orig").exists()
        assert host.cri_status() == "ok"
        # The distribution regenerated its certs.d from the original: the wildcard is back.
        assert (host.generated_hosts_dir / "_default" / "hosts.toml").exists()
        again = host.run_step(
            restore_registries_step(world.settings, world.node, FLAVOURS["k3s-server"])
        )
        assert "restored=0" in again.stdout and "restarted=0" in again.stdout


def test_verify_nodes_knows_the_flavour_and_proves_a_pull_went_through_the_cache(
    tmp_path: Path, images: dict[str, MultiArchImage]
) -> None:
    """scripts/verify.py --nodes on a k3s node: its own ctr and socket, the config_path k3s
    generated, and a pull through k3s's hosts.toml that lands in our cache."""
    _prerequisites()
    with k3s_world(tmp_path, images) as world:
        docker_io = world.settings.model_copy(update={"upstreams": world.settings.upstreams[:1]})
        world.apply(world.plan())

        with registry_vm(tmp_path, docker_io, world.registries) as vm:
            after = run_verify_nodes(
                docker_io, world.host, tmp_path, "docker.io/library/x:2",
                mirror_images=("docker.io=library/x:1",), vm=vm,
                ca_pem=world.ca.ca_cert.read_text(),
            )  # fmt: skip

        assert after.returncode == 0, after.stdout + after.stderr
        assert "k3s-server: cri plugin ok" in after.stdout
        assert "/var/lib/rancher/k3s/agent/etc/containerd/certs.d" in after.stdout
        assert "docker.io/library/x:2 cached in" in after.stdout
        proxy_log = world.registries["docker-proxy"].log()
        assert "/v2/library/x/manifests/2?ns=docker.io" in proxy_log
        # k3s's own hosts.toml sent the node's bypass probe to our cache.
        [bypass] = [line for line in after.stdout.splitlines() if "  bypass  " in line]
        assert " ok " in bypass and "reached the cache" in bypass, bypass


# --- restarts: a time limit, servers one at a time (issue 27, item 4) -----------------------------


def _stand_in_flag(host: NodeHost, name: str) -> None:
    """hang-next-restart / unready-next-restart, read by the stand-in (k3s_standin.py)."""
    (host.root / name).touch()


def test_a_restart_that_never_returns_is_stopped_at_the_time_limit_and_rolled_back(
    tmp_path: Path,
) -> None:
    """k3s units are Type=notify, often without a start timeout: a k3s that never reports ready
    keeps `systemctl restart` waiting forever. The stand-in's next restart stops its containerd
    and never returns; the step stops it after RESTART_TIMEOUT, puts the previous file back and
    restarts again (that restart works): a failed step that says why, the node as it was."""
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        before = host.registries_file.read_text()
        settings = world.settings.model_copy(
            update={
                "containerd": world.settings.containerd.model_copy(
                    update={"restart_timeout_seconds": 5}
                )
            }
        )
        plan = plan_registries(settings, world.node, world.probe())
        _stand_in_flag(host, "hang-next-restart")

        result = host.run_step(plan.registries)

        assert result.returncode == 5, result.stdout + result.stderr
        # A failed step prints everything on stderr, its summary first (scripts/node/step.sh).
        what, undone, _ = result.stderr.splitlines()[:3]
        assert "(exit 5): with the new /etc/rancher/k3s/registries.yaml the CRI plugin" in what
        assert undone.startswith("rolled back: the previous /etc/rancher/k3s/registries.yaml is")
        assert "the restart command did not return within 5s and was stopped" in result.stderr
        assert parse_step_result(result.stderr).rolled_back
        assert "never reporting ready" in host.service_log.read_text()
        assert host.registries_file.read_text() == before
        assert host.cri_status() == "ok" and _readyz(host)
        # Control: the same step without the flag goes through.
        assert host.run_step(plan.registries).returncode == 0


def test_a_server_that_does_not_rejoin_the_cluster_is_rolled_back(tmp_path: Path) -> None:
    """Its CRI plugin is ok, but its /readyz keeps failing ([-]etcd): the step waits up to
    healthTimeoutSeconds, then rolls back; the rollback's restart rejoins."""
    _prerequisites()
    with k3s_world(tmp_path, None) as world:
        host = world.host
        before = host.registries_file.read_text()
        settings = world.settings.model_copy(
            update={
                "containerd": world.settings.containerd.model_copy(
                    update={"health_timeout_seconds": 10}
                )
            }
        )
        plan = plan_registries(settings, world.node, world.probe())
        _stand_in_flag(host, "unready-next-restart")

        result = host.run_step(plan.registries)

        assert result.returncode == 5, result.stdout + result.stderr
        what, undone, todo = result.stderr.splitlines()[:3]
        assert what.endswith(
            "(exit 5): with the new /etc/rancher/k3s/registries.yaml the node did not become "
            "healthy as a cluster member within 10s"
        )
        assert undone.startswith("rolled back: the previous /etc/rancher/k3s/registries.yaml is")
        assert "cluster health" in todo
        assert "did not become healthy as a cluster member within 10s" in result.stderr
        assert "[-]etcd failed" in result.stderr
        assert parse_step_result(result.stderr).rolled_back
        assert host.registries_file.read_text() == before
        assert host.cri_status() == "ok" and _readyz(host)


@dataclass
class Restart:
    member: str
    begin: float
    end: float  # a server: its first passing /readyz; an agent: its restart done


def _restarts(events: Path, since: float) -> list[Restart]:
    begun: dict[str, float] = {}
    done: list[Restart] = []
    for line in events.read_text().splitlines():
        stamp, member, what = line.split()
        if float(stamp) < since:
            continue
        if what == "restart-begin":
            begun[member] = float(stamp)
        elif (what == "ready" or (what == "restart-end" and member.startswith("agent"))) and (
            member in begun
        ):
            done.append(Restart(member, begun.pop(member), float(stamp)))
    assert not begun, f"restarts that never finished: {begun}"
    return sorted(done, key=lambda r: r.begin)


def _overlapping(restarts: list[Restart]) -> list[tuple[str, str]]:
    return [
        (a.member, b.member)
        for i, a in enumerate(restarts)
        for b in restarts[i + 1 :]
        if a.begin < b.end and b.begin < a.end
    ]


def _run_batches(
    batches: list[list[Node]], hosts: dict[str, NodeHost], steps: dict[str, Any]
) -> None:
    """As the engine runs the gates: the nodes of a batch at once, a batch after the one before."""
    for batch in batches:
        with ThreadPoolExecutor(max_workers=len(batch)) as pool:
            results = {
                node.name: pool.submit(hosts[node.name].run_step, steps[node.name])
                for node in batch
            }
        for name, future in results.items():
            result = future.result()
            assert result.returncode == 0, f"{name}: {result.stdout}{result.stderr}"


def _k3s_cluster(
    stack: contextlib.ExitStack, tmp_path: Path, names: list[str]
) -> tuple[dict[str, NodeHost], Settings, str, Path]:
    """k3s stand-ins sharing one etcd cluster (servers) or joining it (agents, by name), each on
    the user's registries.yaml with its CRI ok; settings listing them in ``names`` order, batch
    size 5. Returns the hosts, the settings, the cache endpoint and the stand-ins' restart log."""
    cluster, events = tmp_path / "etcd-cluster", tmp_path / "restarts.log"
    cluster.mkdir()
    hosts = {
        name: stack.enter_context(
            node_host(
                tmp_path / name,
                CONTAINERD,
                flavour="k3s-agent" if name.startswith("agent") else "k3s-server",
                cluster=cluster,
                events=events,
            )
        )
        for name in names
    }
    first = make_settings(hosts[names[0]])
    nodes = [
        first.nodes[0].model_copy(
            update={
                "name": name,
                "address": host.node_address,
                "restart_command": host.restart_command,
                "ssh_host_public_key": host.host_public_key,
            }
        )
        for name, host in hosts.items()
    ]
    settings = first.model_copy(
        update={
            "nodes": nodes,
            "containerd": first.containerd.model_copy(update={"batch_size": 5}),
        }
    )
    cache = settings.endpoint(settings.upstreams[0])
    for host in hosts.values():
        host.registries_file.write_text(users_registries_yaml(cache))
        assert host.ssh(host.restart_command).returncode == 0
    for host in hosts.values():
        _wait_cri_ok(host)
    return hosts, settings, cache, events


def test_three_servers_restart_one_at_a_time_and_before_the_agents(tmp_path: Path) -> None:
    """Three k3s servers (one etcd cluster in the stand-in) and two agents, batch size 5, listed
    mixed. The rollout's own batches (rollout_batches with the roles the component derives), run
    over real SSH as the engine runs gates: every restart is logged by the stand-in, each server's
    until its /readyz passes again. No two servers overlap and every server is done before any
    agent starts. Control: the same nodes restored with the batches of before (roles ignored:
    canary, then the other four together) do overlap, two servers down at once."""
    from components.containerd_mirrors import rollout_batches
    from components.plan.node_steps import node_role

    _prerequisites()
    names = ["server-1", "agent-1", "server-2", "server-3", "agent-2"]
    with contextlib.ExitStack() as stack:
        hosts, settings, cache, events = _k3s_cluster(stack, tmp_path, names)
        nodes = settings.nodes

        plans = {
            node.name: plan_registries(
                settings, node, read_node(settings, node, ssh_runner(hosts[node.name].agent_socket))
            )
            for node in nodes
        }
        control_planes = {
            node.name
            for node in nodes
            if node_role(node, plans[node.name].flavour) == "control-plane"
        }
        batches = rollout_batches(nodes, 5, control_planes)
        assert [[n.name for n in b] for b in batches] == [
            ["server-1"], ["server-2"], ["server-3"], ["agent-1"], ["agent-2"],
        ]  # fmt: skip

        since = time.monotonic()
        _run_batches(batches, hosts, {name: plan.registries for name, plan in plans.items()})

        restarts = _restarts(events, since)
        assert [r.member for r in restarts] == [
            "server-1", "server-2", "server-3", "agent-1", "agent-2",
        ]  # fmt: skip
        assert _overlapping([r for r in restarts if r.member.startswith("server")]) == []
        servers_done = max(r.end for r in restarts if r.member.startswith("server"))
        assert servers_done <= min(r.begin for r in restarts if r.member.startswith("agent"))
        for name, host in hosts.items():
            assert host.cri_status() == "ok", name
            assert "*" not in yaml.safe_load(host.registries_file.read_text())["mirrors"], name

        # Control: the batches of before (no roles), for the restore steps of the same nodes.
        old = rollout_batches(nodes, 5)
        assert [[n.name for n in b] for b in old] == [
            ["server-1"], ["agent-1", "server-2", "server-3", "agent-2"],
        ]  # fmt: skip
        since = time.monotonic()
        restores = {
            node.name: restore_registries_step(settings, node, plans[node.name].flavour)
            for node in nodes
        }
        _run_batches(old, hosts, restores)
        overlaps = _overlapping([r for r in _restarts(events, since) if r.member != "agent-1"])
        assert ("server-2", "server-3") in overlaps or ("server-3", "server-2") in overlaps
        for name, host in hosts.items():
            assert host.registries_file.read_text() == users_registries_yaml(cache), name


def test_a_held_server_that_is_down_neither_blocks_nor_restarts(tmp_path: Path) -> None:
    """Issue 27 items 3 and 4 together: of three servers (one etcd cluster) and an agent, server-2
    is down (its sshd stopped). Not held, the fleet read stops naming it. Held (its flavour set),
    plan_fleet never dials it, the component's batches give it no turn among the servers and
    never make it a canary, and the rollout run over real SSH as the engine runs the gates
    completes: server-1 then server-3, one at a time, each healthy as a member again before the
    next, then the agent; server-2 is not restarted."""
    from components.containerd_mirrors import rollout_batches
    from components.fleet import FleetReadError, plan_fleet
    from components.plan.node_steps import node_role

    _prerequisites()
    names = ["server-1", "agent-1", "server-2", "server-3"]
    with contextlib.ExitStack() as stack:
        hosts, settings, _, events = _k3s_cluster(stack, tmp_path, names)

        def runner(node: Node, step: Any) -> Any:
            return ssh_runner(hosts[node.name].agent_socket)(node, step)

        hosts["server-2"].stop_sshd()
        with pytest.raises(FleetReadError, match=r"server-2 .*\n.*nodes\[\]\.state: held"):
            plan_fleet(settings, runner)

        held = settings.model_copy(
            update={
                "nodes": [
                    node.model_copy(update={"state": "held", "flavour": "k3s-server"})
                    if node.name == "server-2"
                    else node
                    for node in settings.nodes
                ]
            }
        )
        plans = plan_fleet(held, runner)
        assert plans["server-2"].state == "held" and plans["server-2"].steps == ()
        roles = {n.name: node_role(n, plans[n.name].flavour) for n in held.nodes}
        control_planes = {name for name, role in roles.items() if role == "control-plane"}
        assert control_planes == {"server-1", "server-2", "server-3"}
        batches = rollout_batches(
            held.nodes, 5, control_planes, {n for n, p in plans.items() if p.state == "held"}
        )
        assert [[n.name for n in b] for b in batches] == [
            ["server-1"], ["server-3"], ["agent-1"], ["server-2"],
        ]  # fmt: skip

        since = time.monotonic()
        steps = {name: plan.steps[0].create for name, plan in plans.items() if plan.steps}
        # A held node's steps run nothing (the engine keeps them as they are): left out here.
        running = [[n for n in batch if n.name in steps] for batch in batches]
        _run_batches([batch for batch in running if batch], hosts, steps)

        restarts = _restarts(events, since)
        assert [r.member for r in restarts] == ["server-1", "server-3", "agent-1"]
        assert _overlapping(restarts) == []
        for name in ("server-1", "server-3", "agent-1"):
            assert hosts[name].cri_status() == "ok", name
            assert "*" not in yaml.safe_load(hosts[name].registries_file.read_text())["mirrors"]
