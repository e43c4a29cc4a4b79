"""The command text a node script travels as: the shared library inlined, since no file of ours
exists on the node to source."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from components.renderers.shell import SCRIPTS_DIR, inline_libraries, remote_command

LIBRARY = SCRIPTS_DIR / "node" / "lib.sh"
LIBRARY_LINE = '. "$(dirname "$0")/lib.sh"'
USERS = ("node/apply-config.sh", "node/registries.sh", "node/restore.sh")


def _sent(relative: str, params: dict[str, str | int | bool]) -> tuple[str, str]:
    """(script text, $0) of ``exec bash -c '<text>' <name>``, the last words of the command."""
    words = shlex.split(remote_command(relative, params))
    assert words[-4:-2] == ["bash", "-c"]
    return words[-2], words[-1]


def _run_sent(command: str, uid: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """As on the node: the command from a directory holding nothing of ours. `id` is faked so the
    root check passes or fails whoever runs the test."""
    fake_id = f"id() {{ echo {uid}; }}; export -f id\n"
    return subprocess.run(
        ["bash", "-c", fake_id + command], cwd=cwd, capture_output=True, text=True, check=False
    )


def _library_functions() -> list[str]:
    return re.findall(r"^([a-z_][a-z0-9_]*)\(\) \{", LIBRARY.read_text(), re.MULTILINE)


def test_the_scripts_that_share_the_library_are_the_three_that_replace_a_file() -> None:
    users = {
        str(path.relative_to(SCRIPTS_DIR))
        for path in SCRIPTS_DIR.rglob("*.sh")
        if LIBRARY_LINE in path.read_text().splitlines()
    }
    assert users == set(USERS)


@pytest.mark.parametrize("relative", USERS)
def test_remote_command_carries_the_library_instead_of_sourcing_it(relative: str) -> None:
    text, name = _sent(relative, {"CONFIG_FILE": "/etc/containerd/config.toml"})
    assert name == relative
    assert LIBRARY_LINE not in text.splitlines()
    assert LIBRARY.read_text().rstrip("\n") in text
    functions = _library_functions()
    assert {"require_root", "wait_for_cri", "skip_or_refuse", "record_applied"} <= set(functions)
    for function in functions:
        assert len(re.findall(rf"^{function}\(\) \{{", text, re.MULTILINE)) == 1, function
    # The script's own part follows: its shebang and parameters first, its work after the library.
    assert text.startswith("#!/usr/bin/env bash\n")
    assert text.index("set -euo pipefail") < text.index("require_root() {")
    assert text.index("restore_original() {") < text.rindex("require_root\n")


def test_a_script_without_the_line_is_sent_as_it_is() -> None:
    text, _ = _sent("node/probe.sh", {"CONFIG_FILE": "/etc/containerd/config.toml"})
    assert text == (SCRIPTS_DIR / "node" / "probe.sh").read_text()


def test_a_library_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text('#!/usr/bin/env bash\n. "$(dirname "$0")/nolib.sh"\nrequire_root\n')
    with pytest.raises(ValueError, match=r"x\.sh sources nolib\.sh, but there is no .*nolib\.sh"):
        inline_libraries(script)


def test_a_library_line_written_otherwise_is_an_error(tmp_path: Path) -> None:
    """Sent as is, it would look on every node for a file that is not there."""
    (tmp_path / "lib.sh").write_text('  source "$(dirname "$0")/other.sh"\n')
    script = tmp_path / "x.sh"
    script.write_text(f"#!/usr/bin/env bash\n{LIBRARY_LINE}\n")
    with pytest.raises(ValueError, match="cannot be read on the remote host"):
        inline_libraries(script)


@pytest.mark.parametrize(("uid", "code", "stdout", "stderr"), [
    (1000, 2, "", "restore.sh: must run as root (log in as root"),
    (0, 0, "restored=0\nrestarted=0\n", ""),
])  # fmt: skip
def test_the_sent_command_runs_with_no_file_of_ours_beside_it(
    tmp_path: Path, uid: int, code: int, stdout: str, stderr: str
) -> None:
    """The library's functions run, and its root check names the script from $0."""
    command = remote_command(
        "node/restore.sh",
        {"CONFIG_FILE": str(tmp_path / "config.toml"), "RESTART_COMMAND": "false"},
    )
    result = _run_sent(command, uid, tmp_path)
    assert (result.returncode, result.stdout) == (code, stdout), result.stderr
    assert stderr in result.stderr if stderr else result.stderr == ""


def test_a_restore_whose_restart_fails_exits_5_quoting_the_restart_command(tmp_path: Path) -> None:
    """The delete step shared by restore.sh and registries.sh RESTORE=1: the original is back, and
    a failing restart is reported as such (its exit code could read as ssh's 255 otherwise)."""
    config = tmp_path / "config.toml"
    config.write_text("ours\n")
    (tmp_path / "config.toml.registry-mirrors.orig").write_text("theirs\n")
    (tmp_path / "config.toml.registry-mirrors.applied").write_text("a b\n")
    command = remote_command(
        "node/restore.sh",
        {
            "CONFIG_FILE": str(config),
            "RESTART_COMMAND": "echo Unit containerd.service not found. >&2; exit 255",
        },
    )
    result = _run_sent(command, 0, tmp_path)
    assert (result.returncode, result.stdout) == (5, "restored=1\n"), result.stderr
    assert f"restore.sh: {config} was restored but the CRI plugin on" in result.stderr
    assert "restart command output: Unit containerd.service not found." in result.stderr
    assert config.read_text() == "theirs\n"
    assert (tmp_path / "config.toml.registry-mirrors.before-restore").read_text() == "ours\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.toml",
        "config.toml.registry-mirrors.before-restore",
    ]
