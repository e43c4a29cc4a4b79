"""RegistryMirrors under Pulumi mocks: what would be created on the VM, with which inputs.

Inputs arrive camelCased, numbers as floats, secrets wrapped (tests.mocks.is_secret).
Every test RETURNS an Output so Pulumi awaits the assertions.
"""

from __future__ import annotations

import shlex
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_command import remote

from components.registry_mirrors import CONFIG_SHA_LABEL, RegistryMirrors
from components.renderers import maintenance
from components.renderers.front_proxy import front_bundle, public_ports, settings_front
from components.renderers.registry_config import CONFIG_PATH_LABEL, container_spec
from components.settings import Settings, load_settings
from components.ssh import SshTarget
from tests.mocks import RecordingMocks, is_secret, plain
from tests.sample import REGISTRY_IMAGES, sample_raw, sample_settings

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE7xVwq9nJb1xWcY0mHq8T2p1yKfXo3dLr5sZa4uB6cQ"
PASSWORD = "dckr_pat_never-in-plain-text"
CREDENTIALS = {"docker.io": {"username": "mirror-bot", "password": PASSWORD}}


def _build(
    name: str = "mirrors", credentials: Any = None, image: str | None = None
) -> tuple[RegistryMirrors, remote.Command]:
    ssh = SshTarget(
        host="10.0.20.10", user="debian", agent_socket="/tmp/agent.sock", host_key=HOST_KEY
    )
    ready = remote.Command(f"{name}-vm-ready", connection=ssh.connection(), create="true")
    if credentials is None:
        credentials = pulumi.Output.secret(CREDENTIALS)
    mirrors = RegistryMirrors(
        name, settings=_settings(image), ssh=ssh, ready=ready, credentials=credentials
    )
    return mirrors, ready


def _settings(image: str | None = None) -> Settings:
    raw = sample_raw()
    if image is not None:
        raw["registry"] = {"image": image}
    return load_settings(raw)


def _settled(mirrors: RegistryMirrors) -> pulumi.Output[Any]:
    """Resolves once every child is registered (mocks record at registration)."""
    return pulumi.Output.all(
        mirrors.mirrors, mirrors.maintenance.id, mirrors.image.id, mirrors.provider.id
    )


IMAGE_ID = "sha256:" + "ab" * 32


@pytest.fixture(autouse=True)
def _image_id(mocks: RecordingMocks) -> None:
    # The provider reports the pulled image's id; containers are created from that id.
    mocks.outputs_for["docker:index/remoteImage:RemoteImage"] = lambda _args: {"imageId": IMAGE_ID}


def _inputs(mocks: RecordingMocks, name: str) -> dict[str, Any]:
    return mocks.named(name).inputs


@pulumi.runtime.test
def test_one_container_per_upstream_with_its_ports_config_and_limits(mocks: RecordingMocks):
    mirrors, _ = _build()
    settings = sample_settings()

    def check(_: Any) -> None:
        containers = mocks.of_type("docker:index/container:Container")
        assert sorted(c.inputs["name"] for c in containers) == sorted(
            u.container for u in settings.upstreams
        )
        for upstream in settings.upstreams:
            container = mocks.named(f"mirrors-{upstream.container}")
            inputs = plain(container.inputs)
            assert container.provider is not None
            assert "pulumi:providers:docker::mirrors-docker" in container.provider
            assert inputs["restart"] == "always"
            # The registry on the VM's loopback only (the front owns the public port), its
            # metrics on every address (Prometheus).
            assert inputs["ports"] == [
                {
                    "ip": "127.0.0.1",
                    "internal": float(upstream.port),
                    "external": float(upstream.resolved_backend_port),
                },
                {
                    "ip": "0.0.0.0",
                    "internal": float(upstream.resolved_metrics_port),
                    "external": float(upstream.resolved_metrics_port),
                },
            ]
            # The default image is Distribution 3: it reads /etc/distribution/config.yml.
            assert inputs["volumes"] == [
                {
                    "hostPath": f"/etc/docker-registry/{upstream.container}/config.yml",
                    "containerPath": "/etc/distribution/config.yml",
                    "readOnly": True,
                },
                {
                    "hostPath": f"/var/lib/registry/{upstream.container}",
                    "containerPath": "/var/lib/registry",
                },
            ]
            assert inputs["envs"] == ["OTEL_TRACES_EXPORTER=none"]
            assert inputs["memory"] == float(settings.registry.memory_mb)
            # unset, the provider reads the daemon's default back: a diff in every preview
            assert inputs["memorySwap"] == float(settings.registry.memory_mb)
            assert inputs["healthcheck"]["tests"][-1] == f"http://127.0.0.1:{upstream.port}/v2/"
            assert inputs["logDriver"] == "json-file"
            assert set(inputs["logOpts"]) == {"max-size", "max-file"}
            assert inputs["image"] == IMAGE_ID
        image = _inputs(mocks, "mirrors-image")
        assert image["name"] == settings.registry.image

    return _settled(mirrors).apply(check)


@pulumi.runtime.test
def test_docker_provider_reaches_the_vm_over_ssh_after_readiness(mocks: RecordingMocks):
    mirrors, _ = _build()

    def check(_: Any) -> None:
        provider = _inputs(mocks, "mirrors-docker")
        assert provider["host"] == "ssh://debian@10.0.20.10:22"
        ssh_opts = yaml.safe_load(provider["sshOpts"])  # providers get JSON-encoded lists
        assert "StrictHostKeyChecking=yes" in ssh_opts
        assert any(o.startswith("KnownHostsCommand=") and HOST_KEY in o for o in ssh_opts)
        # Its inputs are plain strings, so this is exactly its depends_on.
        assert mocks.named("mirrors-docker").depends_on == ["mirrors-vm-ready"]

    return _settled(mirrors).apply(check)


@pulumi.runtime.test
def test_credentials_reach_the_vm_only_as_secrets_never_logged(mocks: RecordingMocks):
    # Passed in as a PLAIN dict: the component itself must make them secret.
    mirrors, _ = _build(credentials=CREDENTIALS)
    settings = sample_settings()

    def check(args: list[Any]) -> None:
        stdin_is_secret, label_is_secret = args
        assert stdin_is_secret
        assert label_is_secret
        for upstream in settings.upstreams:
            command = _inputs(mocks, f"mirrors-{upstream.container}-config")
            assert is_secret(command["stdin"]), upstream.host
            assert command["logging"] == "none"
            assert "MODE=0600" in command["create"]
            assert f"DEST=/etc/docker-registry/{upstream.container}/config.yml" in command["create"]
            assert "DEST=" in command["delete"]
            config = yaml.safe_load(plain(command["stdin"]))
            if upstream.host == "docker.io":
                assert config["proxy"] == {
                    "remoteurl": "https://registry-1.docker.io",
                    "username": "mirror-bot",
                    "password": PASSWORD,
                    "ttl": "0",
                }
            else:
                assert config["proxy"] == {"remoteurl": upstream.resolved_server, "ttl": "0"}
        # Nowhere in plain text: not in a command line, a label, an env, anything.
        for resource in mocks.resources:
            for key, value in resource.inputs.items():
                if not is_secret(value):
                    assert PASSWORD not in str(value), f"{resource.name}.{key}"

    return pulumi.Output.all(
        pulumi.Output.is_secret(mirrors.configs["docker.io"].stdin),
        pulumi.Output.is_secret(mirrors.containers["docker.io"].labels),
    ).apply(check)


@pulumi.runtime.test
def test_config_change_replaces_exactly_the_affected_container(mocks: RecordingMocks):
    before, _ = _build("before", pulumi.Output.secret(CREDENTIALS))
    rotated = {"docker.io": {"username": "mirror-bot", "password": "rotated"}}
    after, _ = _build("after", pulumi.Output.secret(rotated))

    def label(prefix: str, container: str) -> str:
        labels = {
            e["label"]: e["value"] for e in plain(_inputs(mocks, f"{prefix}-{container}")["labels"])
        }
        return labels[CONFIG_SHA_LABEL]

    def check(_: Any) -> None:
        changed = [
            u.container
            for u in sample_settings().upstreams
            if label("before", u.container) != label("after", u.container)
        ]
        assert changed == ["registry"]

    return pulumi.Output.all(_settled(before), _settled(after)).apply(check)


@pulumi.runtime.test
def test_maintenance_cron_and_script_installed_and_removed_with_the_stack(mocks: RecordingMocks):
    mirrors, _ = _build()
    settings = sample_settings()

    def check(_: Any) -> None:
        cron = _inputs(mocks, "mirrors-maintenance-cron")
        assert cron["stdin"] == maintenance.render_cron(settings)
        assert "export DEST=/etc/cron.d/registry-mirrors" in cron["create"]
        assert "MODE=0644" in cron["create"]
        assert "export DEST=/etc/cron.d/registry-mirrors" in cron["delete"]
        assert "export REMOVE=1" in cron["delete"]
        script = _inputs(mocks, "mirrors-maintenance-script")
        assert script["stdin"] == maintenance.script_text()
        assert f"export DEST={maintenance.SCRIPT_PATH}" in script["create"]
        assert "MODE=0755" in script["create"]

    return _settled(mirrors).apply(check)


@pulumi.runtime.test
def test_outputs_per_upstream(mocks: RecordingMocks):
    mirrors, _ = _build()

    def check(outputs: dict[str, dict[str, Any]]) -> None:
        assert set(outputs) == {u.host for u in sample_settings().upstreams}
        assert outputs["ghcr.io"] == {
            "endpoint": "https://10.0.20.10:5012",
            "port": 5010,
            "tlsPort": 5012,
            "container": "registry-ghcr",
            "metricsUrl": "http://10.0.20.10:5011/metrics",
            "server": "https://ghcr.io",
        }

    return mirrors.mirrors.apply(check)


def _container(mocks: RecordingMocks, name: str) -> dict[str, Any]:
    return plain(_inputs(mocks, name))


STACK_IMAGES = {f"v{major}": image for major, image in REGISTRY_IMAGES.items()}


@pulumi.runtime.test
def test_container_inputs_are_exactly_the_plain_container_spec(mocks: RecordingMocks):
    """What a VM test runs with `docker run`: every value the container needs is in its inputs,
    derived from container_spec alone (plain values), for both majors."""
    built = [_build(name, image=image)[0] for name, image in STACK_IMAGES.items()]

    def check(_: Any) -> None:
        for name, image in STACK_IMAGES.items():
            settings = _settings(image)
            for upstream in settings.upstreams:
                spec = container_spec(upstream, settings.registry)
                inputs = _container(mocks, f"{name}-{upstream.container}")
                assert inputs["name"] == spec.name
                assert [(p["ip"], p["external"], p["internal"]) for p in inputs["ports"]] == [
                    (address, float(external), float(internal))
                    for address, external, internal in spec.published
                ]
                assert inputs["volumes"] == [
                    {"hostPath": spec.config_host_path, "containerPath":
                     spec.config_container_path, "readOnly": True},
                    {"hostPath": spec.data_host_path, "containerPath": spec.data_container_path},
                ]  # fmt: skip
                assert inputs.get("envs", []) == list(spec.env)
                assert inputs["healthcheck"]["tests"] == list(spec.healthcheck)
                # SIGKILL after the drain: on `docker stop`, the daemon's shutdown, a replacement.
                assert inputs["stopTimeout"] == float(spec.stop_timeout)
                assert inputs["destroyGraceSeconds"] == float(spec.stop_timeout)
                labels = {entry["label"]: entry["value"] for entry in inputs["labels"]}
                assert labels[CONFIG_PATH_LABEL] == spec.config_container_path
                assert set(labels) == {CONFIG_SHA_LABEL, *spec.labels}

    return pulumi.Output.all(*[_settled(m) for m in built]).apply(check)


@pulumi.runtime.test
def test_upgrading_2_8_to_3_1_replaces_containers_and_keeps_the_data(mocks: RecordingMocks):
    """The same stack before and after `registry.image: registry:3.1.1`: the containers change
    (image, config mount path, env) so they are replaced; the data directories and the config
    files on the VM are the same paths, and the config text differs only by 3.x's proxy.ttl, so
    nothing deletes the cache (test_distribution proves 3.1.1 serves what 2.8 cached)."""
    built = [_build(name, image=image)[0] for name, image in STACK_IMAGES.items()]

    def check(_: Any) -> None:
        assert _inputs(mocks, "v2-image")["name"] == "registry:2.8.3"
        assert _inputs(mocks, "v3-image")["name"] == "registry:3.1.1"
        for upstream in sample_settings().upstreams:
            before = _container(mocks, f"v2-{upstream.container}")
            after = _container(mocks, f"v3-{upstream.container}")
            assert [v["hostPath"] for v in before["volumes"]] == [
                v["hostPath"] for v in after["volumes"]
            ]
            assert before["volumes"][0]["containerPath"] == "/etc/docker/registry/config.yml"
            assert after["volumes"][0]["containerPath"] == "/etc/distribution/config.yml"
            assert before.get("envs", []) == [] and after["envs"] == ["OTEL_TRACES_EXPORTER=none"]
            config_before = _container(mocks, f"v2-{upstream.container}-config")
            config_after = _container(mocks, f"v3-{upstream.container}-config")
            # The one difference: 3.x renders proxy.ttl 0 (no expiry; 2.x has no such key).
            text_before = yaml.safe_load(plain(config_before["stdin"]))
            text_after = yaml.safe_load(plain(config_after["stdin"]))
            assert text_after.pop("proxy").pop("ttl") == "0"
            text_before.pop("proxy")
            assert text_before == text_after
            assert config_before["create"] == config_after["create"]
            # Only the config FILE is ever removed; its data dir is never part of a delete.
            assert "REMOVE=1" in config_after["delete"]
            assert "/var/lib/registry" not in config_after["delete"]

    return pulumi.Output.all(*[_settled(m) for m in built]).apply(check)


@pulumi.runtime.test
def test_the_front_is_installed_after_the_containers_free_its_ports(mocks: RecordingMocks):
    """scripts/vm/front.sh as root, the rendered files on stdin (plain text: no secret in
    them), the ports it must listen on, and only once every container has moved its registry
    to the VM's loopback (a cache used to publish its registry on the front's port)."""
    mirrors, _ = _build()
    settings = sample_settings()

    def check(_: Any) -> None:
        front = mocks.named("mirrors-front")
        inputs = plain(front.inputs)
        assert inputs["create"] == inputs["update"]
        assert inputs["create"].startswith("exec sudo -n bash -c ")
        command = shlex.split(inputs["create"])[-1]
        expected = settings_front(settings, serve_plain=True)
        assert f"export PORTS='{' '.join(map(str, public_ports(expected)))}'" in command
        assert "export RESTART=1" in command
        assert inputs["stdin"] == front_bundle(expected)
        assert not is_secret(front.inputs["stdin"])
        for name in ("records.config", "remap.config", "storage.config"):
            assert f"# registry-mirrors-front: {name}\n" in inputs["stdin"]
        # (and, TLS on, the CA and the first certificate: the front cannot serve TLS without)
        assert set(front.depends_on) == {
            "mirrors-vm-ready",
            "mirrors-tls-trust",
            *(f"mirrors-{u.container}" for u in settings.upstreams),
        }
        assert "systemctl disable --now trafficserver" in inputs["delete"]

    return _settled(mirrors).apply(check)


def _tls_settings() -> Settings:
    raw = sample_raw()
    raw["tls"] = {"enabled": True, "dnsNames": ["registry.lab.example"]}
    return load_settings(raw)


@pulumi.runtime.test
def test_with_tls_the_ca_is_made_on_the_vm_before_the_front_and_renewed_by_cron(
    mocks: RecordingMocks,
):
    """The trust step (scripts/vm/registry-tls.sh) runs on the VM before the front, which
    cannot serve TLS without its certificate; only its stdout (the CA certificate) leaves the VM;
    cron gets the installed script and an hourly renewal line."""
    ssh = SshTarget(host="10.0.20.10", user="debian", agent_socket="/tmp/a.sock", host_key=HOST_KEY)
    ready = remote.Command("tls-vm-ready", connection=ssh.connection(), create="true")
    mirrors = RegistryMirrors("tls", settings=_tls_settings(), ssh=ssh, ready=ready, vm_id="210")

    def check(_: Any) -> None:
        trust = plain(mocks.named("tls-tls-trust").inputs)
        command = shlex.split(trust["create"])[-1]
        assert "export ACTION=trust" in command
        assert "export SANS='IP:10.0.20.10 DNS:registry.lab.example'" in command
        assert "stdin" not in trust  # nothing secret goes in; the key is made there
        assert trust["triggers"] == ["210"]  # a new VM gets its own CA, pushed to the nodes
        assert "tls-tls-trust" in mocks.named("tls-front").depends_on
        cron = plain(mocks.named("tls-maintenance-cron").inputs)["stdin"]
        assert "root /usr/local/sbin/registry-tls renew" in cron
        script = plain(mocks.named("tls-tls-script").inputs)
        assert "DEST=/usr/local/sbin/registry-tls" in script["create"]
        assert "tls-tls-script" in mocks.named("tls-maintenance-cron").depends_on

    assert mirrors.trust_bundle is not None
    return pulumi.Output.all(_settled(mirrors), mirrors.trust_bundle).apply(check)
