"""scripts/render.py: what a person reviews is what the program ships."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components import atomic_files
from components.renderers.bundle import render_bundle
from tests.cli_harness import (
    FaultyOs,
    assert_user_error,
    copy_tree,
    public_directory,
    require_unprivileged_runner,
    run_process,
    snapshot,
)
from tests.cli_harness import (
    run as run_tool,
)
from tests.sample import sample_settings

ROOT = Path(__file__).resolve().parent.parent
RENDER = ROOT / "scripts" / "render.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(RENDER), *args], capture_output=True, text=True, timeout=120, cwd="/"
    )


def test_renders_dev_stack(tmp_path: Path):
    result = run("--stack", "dev", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "registry-vm/ipconfig0.txt").read_text() == "ip=10.0.20.10/24,gw=10.0.20.1\n"
    assert (tmp_path / "registry-vm/vendor-data.yaml").read_text().startswith("#cloud-config\n")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (
        summary["vm"] | {"address": "10.0.20.10", "prefix": 24, "gateway": "10.0.20.1"}
        == summary["vm"]
    )
    assert summary["upstreams"][0] == summary["upstreams"][0] | {
        "host": "docker.io",
        "container": "registry",
        "port": 5000,
        "metrics_port": 5001,
        "tls_port": 5002,
        "backend_port": 15000,
        "endpoint": "https://10.0.20.10:5002",
        "server": "https://registry-1.docker.io",
    }
    assert [u["host"] for u in summary["upstreams"]] == [
        "docker.io",
        "ghcr.io",
        "quay.io",
        "registry.k8s.io",
        "reg.kyverno.io",
    ]
    assert summary["upstreams"][1]["server"] == "https://ghcr.io"
    assert summary["nodes"][0]["name"] == "k8s-dev-cp-1"
    # The front as it serves once every node is switched: plain ports refuse (403).
    remap = (tmp_path / "registry-vm/front/remap.config").read_text()
    assert "regex_map https://^.*$:5002 http://127.0.0.1:15000 " in remap
    assert "registry-mirrors-plain-off.config" in remap


def test_both_committed_stacks_are_valid(tmp_path: Path):
    for stack in ("dev", "prod"):
        result = run("--stack", stack, "--out", str(tmp_path / stack))
        assert result.returncode == 0, (stack, result.stderr)


def test_stack_file_writes_the_same_bundle_as_the_renderers(tmp_path: Path):
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in _sample_raw().items()}}
    stack_file = tmp_path / "Pulumi.test.yaml"
    stack_file.write_text(yaml.safe_dump(stack))
    out = tmp_path / "out"
    result = run("--stack-file", str(stack_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = render_bundle(sample_settings())
    written = {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}
    assert written == expected


def test_bad_settings_exit_2_with_every_problem_and_nothing_written(tmp_path: Path):
    raw = _sample_raw()
    raw["vm"]["gateway"] = "10.0.30.1"
    raw["nodes"][1]["address"] = "10.0.20.10"
    raw["vm"]["adress"] = "x"
    stack_file = tmp_path / "Pulumi.bad.yaml"
    stack_file.write_text(
        yaml.safe_dump({"config": {f"registry-mirrors:{k}": v for k, v in raw.items()}})
    )
    out = tmp_path / "out"
    result = run("--stack-file", str(stack_file), "--out", str(out))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith("vm.gateway: '10.0.30.1' is outside") for line in lines), lines
    assert any(line.startswith("nodes[1].address:") for line in lines), lines
    assert any(line.startswith("vm.adress: unknown key") for line in lines), lines
    assert not out.exists()


def test_secure_values_are_not_needed(tmp_path: Path):
    stack = {"config": {f"registry-mirrors:{k}": v for k, v in _sample_raw().items()}}
    stack["config"]["registry-mirrors:proxmoxApiToken"] = {"secure": "v1:abc"}
    stack["config"]["proxmoxve:unrelated"] = "other namespaces are ignored"
    stack_file = tmp_path / "Pulumi.s.yaml"
    stack_file.write_text(yaml.safe_dump(stack))
    result = run("--stack-file", str(stack_file), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "v1:abc" not in "".join(
        p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()
    )


def _sample_raw():
    from tests.sample import sample_raw

    return sample_raw()


# --- where the bundle goes: checked before anything is written ----------------------------------


def _prepare(root: Path, layout: dict[str, str]) -> None:
    """{"relative/path": "file" | "dir" | "link:TARGET"}"""
    for relative, kind in layout.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "dir":
            path.mkdir()
        elif kind.startswith("link:"):
            path.symlink_to(kind.removeprefix("link:"))
        else:
            path.write_text("keep me\n")


# (id, existing layout, --out relative to the test dir, what the one line names)
BAD_OUT = [
    ("out-is-a-file", {"o": "file"}, "o", "o: exists and is not a directory"),
    ("parent-is-a-file", {"p": "file"}, "p/o", "p: not a directory"),
    ("grandparent-is-a-file", {"p": "file"}, "p/q/o", "p: not a directory"),
    ("subdir-is-a-file", {"o/registry-vm": "file"}, "o", "o/registry-vm: not a directory"),
    ("deep-subdir-is-a-file", {"o/registries": "file"}, "o", "o/registries: not a directory"),
    ("file-is-a-dir", {"o/summary.json": "dir"}, "o", "o/summary.json: is a directory"),
    (
        "script-is-a-dir",
        {"o/registry-vm/ipconfig0.txt": "dir"},
        "o",
        "ipconfig0.txt: is a directory",
    ),
    (
        "out-is-a-link-to-a-file",
        {"f": "file", "o": "link:f"},
        "o",
        "o: exists and is not a directory",
    ),
    ("out-is-a-dangling-link", {"o": "link:missing"}, "o", "o: not a directory"),
    ("parent-is-a-dangling-link", {"p": "link:missing"}, "p/o", "p: not a directory"),
]


@pytest.mark.parametrize(
    ("layout", "out", "named"), [c[1:] for c in BAD_OUT], ids=[c[0] for c in BAD_OUT]
)
def test_bad_out_location_is_one_line_and_nothing_is_written(
    tmp_path: Path, layout: dict, out: str, named: str
):

    _prepare(tmp_path, layout)
    before = snapshot(tmp_path)
    outcome = run_tool("render", ["--stack", "dev", "--out", str(tmp_path / out)])
    assert_user_error(outcome, [named], lines=1)
    assert snapshot(tmp_path) == before


def test_out_without_write_permission_is_one_line():

    require_unprivileged_runner()
    with public_directory() as root:
        locked = root / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        before = snapshot(root)
        for out in (locked, locked / "sub"):
            outcome = run_process(
                "render", ["--stack", "dev", "--out", str(out)], unprivileged=True
            )
            assert_user_error(outcome, [f"{locked}: permission denied"], lines=1)
        assert snapshot(root) == before


def test_existing_out_dir_gets_the_bundle_and_keeps_other_files(tmp_path: Path):
    out = tmp_path / "out"
    _prepare(out, {"notes.txt": "file", "summary.json": "file"})
    assert run("--stack", "dev", "--out", str(out)).returncode == 0
    assert (out / "notes.txt").read_text() == "keep me\n"
    assert (out / "summary.json").read_text().startswith("{")


def test_a_failing_write_at_any_step_leaves_nothing_behind(tmp_path: Path, monkeypatch):
    """Each filesystem step of the bundle write fails in turn (disk full, I/O error): exit 2,
    one line, and the output location is exactly as before, however far the write got."""
    import shutil

    pristine, work = tmp_path / "pristine", tmp_path / "work"
    _prepare(pristine, {"o/bundle/summary.json": "file", "o/bundle/notes.txt": "file"})
    out = work / "o" / "bundle"
    counter = FaultyOs()
    monkeypatch.setattr(atomic_files, "_os", counter)
    copy_tree(pristine, tmp_path / "count")
    assert (
        run_tool(
            "render", ["--stack", "dev", "--out", str(tmp_path / "count" / "o" / "bundle")]
        ).code
        == 0
    )
    steps = len(counter.calls)
    assert steps > 16 * 4, counter.calls  # open, write, fchmod, fsync per file, then renames
    expected = snapshot(pristine)
    for fail_at in range(1, steps + 1):
        shutil.rmtree(work, ignore_errors=True)
        copy_tree(pristine, work)
        faulty = FaultyOs(fail_at)
        monkeypatch.setattr(atomic_files, "_os", faulty)
        outcome = run_tool("render", ["--stack", "dev", "--out", str(out)])
        step = faulty.calls[fail_at - 1]
        if outcome.code == 0:  # only a directory fsync after a rename may fail harmlessly
            assert step in ("open", "fsync"), (fail_at, step)
            continue
        assert_user_error(outcome, [str(out), "Input/output error"], lines=1)
        assert snapshot(work) == expected, (fail_at, step)
