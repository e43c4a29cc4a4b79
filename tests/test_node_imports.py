"""imports drop-ins (issue 22): probe.sh's walk on real files, the planner's replay of
containerd's order, and what the planner decides per drop-in. The real daemons' side is
tests/integration/test_node_dropins.py (the node over SSH) and test_containerd_imports.py (what
each version does, the table these rules must equal)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from components.plan.node_imports import ImportsError, containerd_order, plan_imports
from components.plan.node_probe import parse_probe
from components.renderers.containerd_config.imports import (
    go_glob_match,
    go_glob_order,
    import_rules,
)
from tests.integration.containerd_versions import VERSIONS

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "scripts" / "node" / "probe.sh"
CRI = 'plugins."io.containerd.grpc.v1.cri"'


def probe(tmp_path: Path, config: Path, version: str = "2.1.9", cwd: Path | None = None) -> str:
    """probe.sh on ``config`` with a fake ``containerd --version`` and a fake root ``id``."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "containerd"
    fake.write_text(
        f"#!/bin/sh\necho containerd github.com/containerd/containerd/v2 v{version} x\n"
    )
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", "-c", f'id() {{ echo 0; }}; export -f id\nexec bash "{PROBE}"'],
        env={
            **os.environ,
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "CONFIG_FILE": str(config),
            "CONFIG_PATH": str(tmp_path / "certs.d"),
        },
        cwd=cwd or tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_product_rules_are_the_measured_ones() -> None:
    """The product's table (components/renderers/containerd_config/imports.py) against the test
    table that tests/integration/test_containerd_imports.py checks on each real daemon."""
    for version in VERSIONS:
        product, measured = import_rules(version.version), version.imports
        assert (product.plugin_tables, product.relative_glob_base, product.older_dropins) == (
            measured.plugin_tables,
            measured.relative_glob_base,
            measured.older_dropins,
        ), version.version
    assert import_rules("2.0.7").older_dropins == "renamed"


def test_probe_and_planner_agree_on_containerds_order(tmp_path: Path) -> None:
    """Main file first, then breadth first: a drop-in's own imports after every file already
    queued; glob matches in lexical order (dotfiles too, as Go); relative paths next to the file;
    a file read once."""
    etc = tmp_path / "etc"
    main = write(
        etc / "config.toml",
        "version = 2\nimports = [\n  'conf.d/*.toml',  # pattern\n  \"extra.toml\",\n]\n",
    )
    write(etc / "conf.d" / "20-b.toml", 'version = 2\nimports = ["../nested.toml"]\n')
    write(etc / "conf.d" / "10-a.toml", "version = 2\n")
    write(etc / "conf.d" / ".05-hidden.toml", "version = 2\n")
    write(etc / "conf.d" / "notes.txt", "not imported\n")
    write(etc / "extra.toml", 'version = 2\nimports = ["conf.d/10-a.toml"]\n')
    write(etc / "nested.toml", "version = 2\n")
    result = parse_probe(probe(tmp_path, main))
    order = [d.path for d in containerd_order(result, import_rules("2.1.9"))]
    assert order == [
        f"{etc}/conf.d/.05-hidden.toml",
        f"{etc}/conf.d/10-a.toml",
        f"{etc}/conf.d/20-b.toml",
        f"{etc}/extra.toml",
        f"{etc}/nested.toml",
    ]


def test_containerd_1_6_matches_a_relative_pattern_in_its_working_directory(
    tmp_path: Path,
) -> None:
    """1.6 globs a relative pattern in its cwd (`/` under systemd); 1.7+ next to the file."""
    etc = tmp_path / "etc"
    main = write(etc / "config.toml", 'version = 2\nimports = ["conf.d/*.toml"]\n')
    write(etc / "conf.d" / "10-a.toml", "version = 2\n")
    on_1_7 = parse_probe(probe(tmp_path, main, "1.7.24"))
    assert [d.path for d in on_1_7.dropins] == [f"{etc}/conf.d/10-a.toml"]
    on_1_6 = parse_probe(probe(tmp_path, main, "1.6.20"))
    assert on_1_6.imports_glob_base == "cwd" and on_1_6.dropins == ()


def test_a_missing_import_is_refused_naming_it(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["gone.toml"]\n')
    result = parse_probe(probe(tmp_path, main))
    with pytest.raises(ImportsError, match=rf"^{tmp_path}/gone\.toml \(named in {main}\) does"):
        plan_imports(result, 2, "/etc/containerd/certs.d", "2.1.9")


def test_imports_the_probe_reads_otherwise_than_toml_are_refused(tmp_path: Path) -> None:
    # A basic string with an escape: the probe's reader does not unescape.
    main = write(tmp_path / "config.toml", 'version = 2\nimports = ["/etc/a\\u0062/*.toml"]\n')
    result = parse_probe(probe(tmp_path, main))
    with pytest.raises(ImportsError, match=r"probe\.sh reads its `imports` as"):
        plan_imports(result, 2, "/etc/containerd/certs.d", "2.1.9")


def test_a_pattern_that_would_import_our_backups_is_refused(tmp_path: Path) -> None:
    main = write(tmp_path / "config.toml", f'version = 2\nimports = ["{tmp_path}/d/*"]\n')
    write(tmp_path / "d" / "10-a.toml", "version = 2\n")
    with pytest.raises(ImportsError, match=r"would also import the backups kept beside"):
        plan_imports(parse_probe(probe(tmp_path, main)), 2, "/c", "2.1.9")


def _plan(tmp_path: Path, dropins: dict[str, str], version: str = "2.1.9", main_version: int = 2):
    main = write(
        tmp_path / "config.toml",
        f'version = {main_version}\nimports = ["{tmp_path}/conf.d/*.toml"]\n',
    )
    for name, text in dropins.items():
        write(tmp_path / "conf.d" / name, text)
    return plan_imports(
        parse_probe(probe(tmp_path, main, version)),
        main_version,
        "/etc/containerd/certs.d",
        version,
    )


def test_a_dropin_mirror_is_migrated_and_carried_over(tmp_path: Path) -> None:
    plan = _plan(
        tmp_path,
        {
            "10-m.toml": f'version = 2\n# keep me\n[{CRI}.registry.mirrors."quay.io"]\n'
            '  endpoint = ["https://quay-mirror.example"]\n'
            f"[{CRI}.containerd]\n  snapshotter = 'native'\n"
        },
    )
    [dropin] = plan.dropins
    assert dropin.sent and dropin.migration.changed
    assert "mirrors" not in dropin.text and "# keep me" in dropin.text
    assert "snapshotter = 'native'" in dropin.text
    assert [(r.host, r.endpoints) for r in plan.carried] == [
        ("quay.io", ("https://quay-mirror.example",))
    ]


def test_nvidias_dropin_with_a_registry_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ImportsError,
        match=r"99-nvidia\.toml sets .*registry\.mirrors, but the file belongs to the NVIDIA",
    ):
        _plan(
            tmp_path,
            {"99-nvidia.toml": f'version = 2\n[{CRI}.registry.mirrors."a.io"]\n  endpoint = []\n'},
        )


def test_containerd_1x_writes_config_path_to_the_dropin_whose_cri_table_wins(
    tmp_path: Path,
) -> None:
    nvidia = f'version = 2\n[{CRI}.containerd.runtimes.nvidia]\n  runtime_type = "x"\n'
    on_1x = _plan(tmp_path / "a", {"99-nvidia.toml": nvidia}, "1.7.24")
    [dropin] = on_1x.dropins
    assert on_1x.main_replaced_by == dropin.probed.path
    assert 'config_path = "/etc/containerd/certs.d"' in dropin.text
    assert any("may drop it when it rewrites the file" in w for w in on_1x.warnings)
    on_2x = _plan(tmp_path / "b", {"99-nvidia.toml": nvidia}, "2.1.9")
    assert not on_2x.dropins[0].sent and on_2x.main_replaced_by is None


@pytest.mark.parametrize(("version", "refused"), [("2.1.9", True), ("2.3.7", False)])
def test_a_dropin_of_another_config_version(tmp_path: Path, version: str, refused: bool) -> None:
    v3 = 'version = 3\n[plugins."io.containerd.cri.v1.images".registry]\n  config_path = "/o"\n'
    if refused:
        with pytest.raises(ImportsError, match=r"is config version 3, .* version 2: containerd"):
            _plan(tmp_path, {"50-v3.toml": v3}, version)
        return
    [dropin] = _plan(tmp_path, {"50-v3.toml": v3}, version).dropins
    assert 'config_path = "/etc/containerd/certs.d"' in dropin.text


def test_go_glob_semantics() -> None:
    assert go_glob_match("/etc/c/*.toml", "/etc/c/.hidden.toml")
    assert not go_glob_match("/etc/*.toml", "/etc/c/a.toml")
    assert go_glob_order(["/a-b/x", "/a/x"]) == ["/a/x", "/a-b/x"]
