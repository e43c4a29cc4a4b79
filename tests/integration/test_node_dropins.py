"""A node whose config.toml imports drop-ins (issue 22): the real daemons (every version of
tests/integration/containerd_versions.py), the project's scripts over real SSH, CRI pulls through
the real caches, exactly the steps ``pulumi up`` and ``pulumi destroy`` send.

Each drop-in holds, next to one kind of setting, settings that are none of our business and must
survive (a pinned pause image, the snapshotter, the test's CNI dir; containerd 1.x replaces the
main file's whole CRI table with a drop-in's, so on 1.x those are the node's CRI settings).
docs/containerd-imports.md has what each version does with them; README, "imports drop-ins",
what the program does.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.plan.node_steps import (
    NodeStepError,
    check_step,
    restore_config_step,
    restore_hosts_step,
)
from components.renderers.containerd_config import DEFAULT_CONFIG_PATH
from tests.integration import test_node_e2e as e2e
from tests.integration.containerd_versions import V2_1
from tests.integration.test_node_e2e import (
    ANY_NODE,
    PAUSE,
    NodeStart,
    World,
    _without_mark,
    dig,
    requests_in,
    start_config,
)

pytestmark = pytest.mark.integration

# The node e2e's fixtures: a node over SSH with its caches and upstreams, every containerd.
upstream_storage = e2e.upstream_storage
node_start = e2e.node_start
world = e2e.world

CRI = 'plugins."io.containerd.grpc.v1.cri"'
CRI_PATH = ("plugins", "io.containerd.grpc.v1.cri")
IMPORTS = 'imports = ["/etc/containerd/conf.d/*.toml"]\n'

# What every test drop-in sets besides its own kind of setting, and the main file too.
OTHERS = f"""[{CRI}]
  sandbox_image = "{PAUSE}"
  [{CRI}.containerd]
    snapshotter = "native"
  [{CRI}.cni]
    conf_dir = "/etc/containerd/cni"
"""
MAIN = f"version = 2\n{IMPORTS}\n{OTHERS}"
# What nvidia-ctk (`runtime configure --runtime=containerd --set-as-default`) writes: the
# runtime, made the default. The runc entry is there for containerd 1.x, whose drop-in CRI table
# replaces the main file's whole: without it 1.x refuses the default runtime it names.
NVIDIA_DEFAULT = '    default_runtime_name = "nvidia"\n'
NVIDIA_RUNTIME = f"""
  [{CRI}.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
  [{CRI}.containerd.runtimes.nvidia]
    privileged_without_host_devices = false
    runtime_type = "io.containerd.runc.v2"
    [{CRI}.containerd.runtimes.nvidia.options]
      BinaryName = "/usr/bin/nvidia-container-runtime"

# Test isolation, not NVIDIA's: this machine's test nodes use the native snapshotter (no
# overlayfs here), and with runtimes listed a 2.x CRI pull asks the transfer service to unpack
# into each runtime's snapshotter, which must then be in its unpack_config (default: overlayfs).
[plugins."io.containerd.transfer.v1.local"]
  unpack_config = [{{platform = "linux", snapshotter = "native"}}]
"""


def _wildcard(world: World) -> str:
    return (
        f'\n[{CRI}.registry.mirrors."*"]\n  endpoint = ["http://{world.host.host_address}:5000"]\n'
    )


def _tls(world: World) -> str:
    return f'\n[{CRI}.registry.configs."registry.example.com".tls]\n  ca_file = "/etc/ssl/ex.pem"\n'


def _config_path(world: World) -> str:
    return f'\n[{CRI}.registry]\n  config_path = "/etc/containerd/other.d"\n'


def _nvidia(world: World) -> str:
    return NVIDIA_RUNTIME


# kind -> (drop-in file name, its own setting, the main file: NVIDIA's sits next to a node's old
# wildcard mirror in config.toml, the others next to a main file with no registry settings).
DROPINS: dict[str, tuple[str, Callable[[World], str], bool]] = {
    "wildcard-mirror": ("10-mirrors.toml", _wildcard, False),
    "configs-tls": ("10-tls.toml", _tls, False),
    "own-config-path": ("10-certs.toml", _config_path, False),
    "nvidia-runtime": ("99-nvidia.toml", _nvidia, True),
}


def _start(world: World, kind: str) -> Path:
    name, setting, main_has_mirror = DROPINS[kind]
    host = world.host
    dropin = host.etc_containerd / "conf.d" / name
    dropin.parent.mkdir()
    others = OTHERS
    if kind == "nvidia-runtime":
        snapshotter = '    snapshotter = "native"\n'
        others = others.replace(snapshotter, snapshotter + NVIDIA_DEFAULT)
    dropin.write_text(f"version = 2\n\n{others}{setting(world)}")
    if main_has_mirror:
        main = start_config(f"http://{host.host_address}:5000", 2)
        main = main.replace("version = 2\n", f"version = 2\n{IMPORTS}", 1)
    else:
        main = MAIN
    host.start_containerd(main)
    assert host.cri_status() == "ok", host.containerd_log.read_text()[-2000:]
    return dropin


def _without_registry(data: dict[str, Any]) -> dict[str, Any]:
    cri = dict(dig(data, CRI_PATH) or {})
    cri.pop("registry", None)
    return cri


@pytest.mark.parametrize("kind", list(DROPINS))
def test_a_dropin_is_migrated_where_it_lives_and_destroy_brings_every_file_back(
    world: World, kind: str
) -> None:
    host, containerd = world.host, world.containerd
    dropin = _start(world, kind)
    before = {path: path.read_bytes() for path in (host.config_file, dropin)}

    plan = world.plan()
    assert plan.config_changed, plan.summary
    assert f"/etc/containerd/conf.d/{dropin.name}" in plan.probe.dropins[0].path
    world.apply(plan)

    assert host.cri_status() == "ok", host.containerd_log.read_text()[-2000:]
    assert world.effective_config_path() == DEFAULT_CONFIG_PATH
    proxy = world.registries["docker-proxy"]
    hits = requests_in(proxy, "ns=docker.io")
    world.pull("docker.io/library/x:1")
    assert requests_in(proxy, "ns=docker.io") > hits

    # The drop-in's other settings, as they were; its registry settings gone or ours.
    old, new = tomllib.loads(before[dropin].decode()), tomllib.loads(dropin.read_text())
    assert _without_registry(new) == _without_registry(old)
    registry = dig(new, (*CRI_PATH, "registry")) or {}
    assert "mirrors" not in registry and "configs" not in registry
    replaced = containerd.imports.plugin_tables == "replaced"
    if kind == "own-config-path" or replaced:
        # Its own config_path wins over config.toml's; on 1.x its CRI table replaces config.toml's.
        assert registry == {"config_path": DEFAULT_CONFIG_PATH}
    else:
        assert registry == {}
    if kind == "nvidia-runtime" and not replaced:
        assert dropin.read_bytes() == before[dropin]  # not even a byte of NVIDIA's file
    if kind == "configs-tls":
        hosts_toml = tomllib.loads(plan.hosts_files["registry.example.com"])
        assert hosts_toml["ca"] == ["/etc/ssl/ex.pem"]

    # An unchanged node: the same step inputs, nothing runs.
    again = world.plan()
    assert (again.config.command, again.config.stdin) == (plan.config.command, plan.config.stdin)
    pid = host.containerd_pid
    _, out = world.apply(again)
    assert "changed=0" in out and host.containerd_pid == pid

    # nodes[].state: restored: every file byte for byte, our hosts.toml gone.
    config = host.run_step(restore_config_step(world.settings, world.node))
    check_step(world.node, "restore-config", config.returncode, config.stderr)
    hosts = host.run_step(restore_hosts_step(world.settings, world.node))
    check_step(world.node, "restore-hosts", hosts.returncode, hosts.stderr)
    assert {path: path.read_bytes() for path in before} == before
    assert not (host.etc_containerd / "certs.d" / "docker.io").exists()
    # Our backups stay beside it (as beside config.toml), under names `*.toml` does not match.
    names = sorted(p.name for p in dropin.parent.iterdir())
    assert [name for name in names if ".registry-mirrors." not in name] == [dropin.name], names
    assert host.cri_status() == "ok"


def test_a_dropin_back_on_its_original_is_planned_again_and_migrated_again(world: World) -> None:
    """Issue 27 item 1 for drop-ins: the config step also left the drop-in it migrated. Put back
    to its original (a config manager, containerd restarted on it) while config.toml is as we
    left it: the same bundle as the first apply's, yet a new mark, so the step runs again."""
    host = world.host
    dropin = _start(world, "wildcard-mirror")
    original = dropin.read_text()
    first = world.plan()
    world.apply(first)
    migrated = dropin.read_text()
    assert migrated != original
    assert world.plan().config == first.config  # unchanged: no diff

    dropin.write_text(original)
    assert host.ssh(host.restart_command).returncode == 0
    reverted = world.plan()
    assert reverted.config.stdin == first.config.stdin
    assert _without_mark(reverted.config.command) == _without_mark(first.config.command)
    assert reverted.config.command != first.config.command
    assert any(f"{dropin.name} is not what the last apply left" in s for s in reverted.summary)

    world.apply(reverted)
    assert dropin.read_text() == migrated
    assert world.effective_config_path() == DEFAULT_CONFIG_PATH
    for _ in range(2):
        assert world.plan().config == reverted.config


def test_a_failed_cri_check_puts_the_dropin_back_too(world: World) -> None:
    """config.toml and a drop-in change in one step, and containerd refuses the result (a mirror
    slipped into the drop-in behind the planner's back, guards and all): both files come back."""
    from components.plan.node_steps import config_step

    host = world.host
    dropin = _start(world, "wildcard-mirror")
    before = {path: path.read_bytes() for path in (host.config_file, dropin)}
    plan = world.plan()
    assert plan.imports is not None
    [sent] = plan.imports.sent
    broken = sent.text + f'\n[{CRI}.registry.mirrors."docker.io"]\n  endpoint = ["http://m:1"]\n'
    step = config_step(
        world.settings,
        world.node,
        plan.probe.config_sha256,
        plan.migration.text,
        [(sent.probed.path, sent.guard, broken)],
    )
    hosts = host.run_step(plan.hosts)
    check_step(world.node, "hosts", hosts.returncode, hosts.stderr)
    result = host.run_step(step)

    assert result.returncode == 5, result.stdout + result.stderr
    assert f"/etc/containerd/conf.d/{dropin.name}" in result.stderr
    assert "rolled_back=1" in result.stderr  # a failed step prints all of it there
    assert {path: path.read_bytes() for path in before} == before
    assert host.cri_status() == "ok"


REFUSED = {
    # A registry setting in NVIDIA's file: the toolkit would put it back.
    "owned": (
        "99-nvidia.toml",
        f'version = 2\n[{CRI}.registry.mirrors."docker.io"]\n  endpoint = ["http://m:5000"]\n',
        r"/etc/containerd/conf\.d/99-nvidia\.toml sets plugins\.\"io\.containerd\.grpc\.v1\.cri\""
        r"\.registry\.mirrors, but the file belongs to the NVIDIA Container Toolkit",
    ),
    "missing": (
        None,
        "",
        r"/etc/containerd/extra\.toml \(named in /etc/containerd/config\.toml\) does not exist",
    ),
}


@pytest.mark.parametrize("node_start", [*ANY_NODE, NodeStart(V2_1)], ids=str)
@pytest.mark.parametrize("case", list(REFUSED))
def test_a_dropin_the_program_refuses_stops_before_any_change(world: World, case: str) -> None:
    host = world.host
    name, text, message = REFUSED[case]
    conf_d = host.etc_containerd / "conf.d"
    conf_d.mkdir()
    if name is not None:
        (conf_d / name).write_text(text)
        imports = IMPORTS
    else:
        imports = 'imports = ["/etc/containerd/extra.toml"]\n'
    main = MAIN.replace(IMPORTS, imports)
    if name is not None:
        host.start_containerd(main)
    else:
        host.config_file.write_text(main)  # containerd would not start with it
    before = {p: p.read_bytes() for p in (host.etc_containerd.rglob("*")) if p.is_file()}
    pid = host.containerd_pid

    with pytest.raises(NodeStepError, match=message) as refused:
        world.plan()

    assert "\n" not in str(refused.value) and str(refused.value).endswith("nothing was changed")
    assert {p: p.read_bytes() for p in host.etc_containerd.rglob("*") if p.is_file()} == before
    assert host.containerd_pid == pid


@pytest.mark.parametrize("node_start", [NodeStart(V2_1)], ids=str)
def test_a_dropin_of_another_config_version_is_refused_where_it_silently_drops_settings(
    world: World,
) -> None:
    """2.0-2.2 read the merged config as the LAST file's version: a version 3 drop-in next to a
    version 2 config.toml silently drops config.toml's CRI settings (config_path included)."""
    host = world.host
    conf_d = host.etc_containerd / "conf.d"
    conf_d.mkdir()
    (conf_d / "50-v3.toml").write_text(
        'version = 3\n[plugins."io.containerd.cri.v1.images".pinned_images]\n'
        f'  sandbox = "{PAUSE}"\n[plugins."io.containerd.cri.v1.runtime".cni]\n'
        '  conf_dir = "/etc/containerd/cni"\n'
    )
    host.start_containerd(MAIN)
    with pytest.raises(NodeStepError, match=r"50-v3\.toml is config version 3, .* version 2"):
        world.plan()
