"""Routes of a previous config_path (issue 27, item 5), planned from a probe: what containerd read
before is carried into containerd.configPath, or the node is refused with one line. The real
daemons pulling through a carried route: tests/integration/test_node_routes.py."""

from __future__ import annotations

import base64
import dataclasses

import pytest

from components.plan.node_plan import plan_node
from components.plan.node_probe import PreviousDir, ProbeResult, parse_probe
from components.plan.node_routes import RoutesError, plan_routes, previous_config_path
from components.plan.node_steps import NodeStepError
from tests.mocks import probe_stdout
from tests.sample import sample_settings

OURS = "/etc/containerd/certs.d"
DOCKER = "/etc/docker/certs.d"
PRIVATE = "registry.corp.example:5443"
HOSTS = (
    f'server = "https://{PRIVATE}"\n[host."https://{PRIVATE}"]\n'
    '  capabilities = ["pull", "resolve"]\n  ca = "ca.crt"\n'
)


def _config(config_path: str | None) -> str:
    line = f'  config_path = "{config_path}"\n' if config_path is not None else ""
    return (
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n'
        + line
        + '[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "native"\n'
    )


def _probe(
    config: str, dirs: dict[str, tuple[str, ...]] | None = None, version: str = "1.7.24"
) -> ProbeResult:
    """A probe whose previous roots hold ``dirs`` ({"<root>/<name>": files}), hosts.toml = HOSTS."""
    probe = parse_probe(probe_stdout(config, version=version))
    listed = tuple(
        PreviousDir(path, files, f"digest-{i}", HOSTS if "hosts.toml" in files else None)
        for i, (path, files) in enumerate((dirs or {}).items())
    )
    return dataclasses.replace(probe, previous_roots=(DOCKER,), previous_dirs=listed)


def test_a_ca_and_hosts_toml_in_docker_certs_d_are_carried() -> None:
    settings = sample_settings()
    dirs = {f"{DOCKER}/{PRIVATE}": ("ca.crt", "hosts.toml"), f"{DOCKER}/other.example": ("ca.crt",)}
    probe = _probe(_config(f"{OURS}:{DOCKER}"), dirs)
    routes = plan_routes(settings, probe, "node n1", ["docker.io"])
    assert [(d.source, d.name, d.digest) for d in routes.dirs] == [
        (f"{DOCKER}/other.example", "other.example", "digest-1"),
        (f"{DOCKER}/{PRIVATE}", PRIVATE, "digest-0"),
    ]
    assert routes.summary[1] == (
        f"carried {DOCKER}/{PRIVATE} (ca.crt, hosts.toml) into {OURS}/{PRIVATE}: "
        f"config_path was '{OURS}:{DOCKER}'"
    )


def test_the_plan_sends_them_to_hosts_sh_and_nothing_else_changes() -> None:
    settings = sample_settings()
    node = settings.nodes[0]
    dirs = {f"{DOCKER}/{PRIVATE}": ("ca.crt", "hosts.toml")}
    probe = _probe(_config(f"{OURS}:{DOCKER}"), dirs)
    stdout = probe_stdout(_config(f"{OURS}:{DOCKER}"), version="1.7.24")
    stdout += f"previous_root={DOCKER}\nprevious_dir={DOCKER}/{PRIVATE}\n"
    stdout += "previous_dir_files_b64=" + base64.b64encode(b"ca.crt\nhosts.toml\n").decode() + "\n"
    stdout += "previous_dir_digest=digest-0\n"
    stdout += "previous_dir_hosts_b64=" + base64.b64encode(HOSTS.encode()).decode() + "\n"
    assert parse_probe(stdout).previous_dirs == probe.previous_dirs
    plan = plan_node(settings, node, stdout)
    assert f"export CARRY='digest-0 {PRIVATE} {DOCKER}/{PRIVATE}\n'" in plan.hosts.command
    assert PRIVATE not in plan.hosts_files  # copied on the node, never in the bundle
    assert any(line.startswith(f"carried {DOCKER}/{PRIVATE}") for line in plan.summary)
    # Without previous routes the hosts step's command has no CARRY at all.
    plain = plan_node(settings, node, probe_stdout(_config(OURS), version="1.7.24"))
    assert "CARRY" not in plain.hosts.command.split("exec bash")[0]


@pytest.mark.parametrize(
    ("version", "config", "expected"),
    [
        # 2.2+ default when neither config_path nor mirrors is set.
        ("2.2.9", _config(None), f"{OURS}:{DOCKER}"),
        ("2.3.7", "", f"{OURS}:{DOCKER}"),
        ("2.1.9", _config(None), None),
        ("1.7.24", _config(None), None),
        (
            "2.2.9",
            _config(None) + '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
            '  endpoint = ["https://m.example"]\n',
            None,
        ),
        ("1.6.20", _config(DOCKER), DOCKER),
    ],
)
def test_the_previous_config_path(version: str, config: str, expected: str | None) -> None:
    assert previous_config_path(parse_probe(probe_stdout(config, version=version))) == expected


def test_after_the_first_apply_the_saved_original_still_says_what_to_carry() -> None:
    migrated = _config(OURS)
    probe = parse_probe(probe_stdout(migrated, original=_config(DOCKER)))
    assert previous_config_path(probe) == DOCKER
    # A node that had no config.toml at all (.absent mark: saved, no text) on 2.2.
    absent = dataclasses.replace(
        parse_probe(probe_stdout(migrated, version="2.2.9")), original_saved=True
    )
    assert previous_config_path(absent) == f"{OURS}:{DOCKER}"


def test_only_what_containerd_read_is_carried() -> None:
    """containerd asks each root for host_port_/, host:port/, then _default/: the first root that
    has one wins, whatever later roots hold."""
    settings = sample_settings()
    first, second = "/srv/first", "/srv/second"
    probe = dataclasses.replace(
        _probe(_config(f"{first}:{second}")),
        previous_roots=(first, second),
        previous_dirs=(
            PreviousDir(f"{first}/a.example_5000_", ("ca.crt",), "d1", None),
            PreviousDir(f"{second}/a.example:5000", ("ca.crt",), "d2", None),
            PreviousDir(f"{second}/b.example", ("ca.crt",), "d3", None),
        ),
    )
    routes = plan_routes(settings, probe, "node n1", [])
    assert [d.source for d in routes.dirs] == [f"{first}/a.example_5000_", f"{second}/b.example"]


@pytest.mark.parametrize(
    ("dirs", "hosts", "message"),
    [
        ({f"{DOCKER}/_default": ("hosts.toml",)}, HOSTS, "carrying a _default into"),
        ({f"{DOCKER}/docker.io": ("ca.crt",)}, None, "configures docker.io, which this program"),
        (
            {f"{DOCKER}/{PRIVATE}": ("hosts.toml",)},
            HOSTS.replace('"ca.crt"', '"../shared/ca.crt"'),
            "ca path '../shared/ca.crt' leaves its directory",
        ),
    ],
)
def test_what_cannot_be_carried_is_refused_with_one_line(
    dirs: dict[str, tuple[str, ...]], hosts: str | None, message: str
) -> None:
    settings = sample_settings()
    probe = _probe(_config(f"{OURS}:{DOCKER}"), dirs)
    probe = dataclasses.replace(
        probe,
        previous_dirs=tuple(dataclasses.replace(d, hosts_toml=hosts) for d in probe.previous_dirs),
    )
    with pytest.raises(RoutesError, match=message) as error:
        plan_routes(settings, probe, "node n1 (10.0.30.1)", [])
    assert "\n" not in str(error.value) and str(error.value).endswith("nothing was changed")


def test_a_name_ours_already_has_and_a_root_the_probe_missed_are_refused() -> None:
    settings = sample_settings()
    dirs = {f"{DOCKER}/{PRIVATE}": ("ca.crt",)}
    clash = dataclasses.replace(_probe(_config(DOCKER), dirs), config_path_dirs=(PRIVATE,))
    with pytest.raises(RoutesError, match=f"{OURS}/{PRIVATE} both configure"):
        plan_routes(settings, clash, "node n1", [])
    unread = dataclasses.replace(_probe(_config("/srv/elsewhere")), previous_roots=(DOCKER,))
    with pytest.raises(RoutesError, match=r"probe\.sh did not read /srv/elsewhere"):
        plan_routes(settings, unread, "node n1", [])
    # Through the planner: one line naming the node, before any step exists.
    settings_node = settings.nodes[0]
    stdout = probe_stdout(_config("/srv/elsewhere"))
    with pytest.raises(NodeStepError, match=r"^node .*probe.sh did not read /srv/elsewhere"):
        plan_node(settings, settings_node, stdout)
