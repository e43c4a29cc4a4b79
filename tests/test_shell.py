"""The command text a node script travels as: the shared libraries inlined, since no file of ours
exists on the node to source; for the steps pulumi-command runs, the script on stdin and a short
command."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from components.renderers import shell
from components.renderers.shell import (
    SCRIPTS_DIR,
    inline_libraries,
    remote_command,
    script_text,
    stdin_command,
)

LIBRARY = SCRIPTS_DIR / "node" / "lib.sh"
STEP_LIBRARY = SCRIPTS_DIR / "node" / "step.sh"


def _line(library: Path) -> str:
    return f'. "$(dirname "$0")/{library.name}"'


# lib.sh: every node script (the three that replace a file a daemon reads at start, and the two
# that read (probe.sh) and copy (hosts.sh) the directories of a previous config_path with its
# dir_files/dir_digest); step.sh: every step that pulumi-command runs (how a step ends, and what a
# failure says first).
STEPS = ("node/apply-config.sh", "node/hosts.sh", "node/registries.sh", "node/restore.sh")
USERS = {
    LIBRARY: (*STEPS, "node/probe.sh"),
    STEP_LIBRARY: STEPS,
}


def _sent(relative: str, params: dict[str, str | int | bool]) -> tuple[str, str]:
    """(script text, $0) of ``exec bash -c '<text>' <name>``, the last words of the command."""
    words = shlex.split(remote_command(relative, params))
    assert words[-4:-2] == ["bash", "-c"]
    return words[-2], words[-1]


def _functions(library: Path) -> list[str]:
    return re.findall(r"^([a-z_][a-z0-9_]*)\(\) \{", library.read_text(), re.MULTILINE)


@pytest.mark.parametrize("library", list(USERS), ids=lambda p: p.name)
def test_the_scripts_that_share_each_library(library: Path) -> None:
    users = {
        str(path.relative_to(SCRIPTS_DIR))
        for path in SCRIPTS_DIR.rglob("*.sh")
        if _line(library) in path.read_text().splitlines()
    }
    assert users == set(USERS[library])


@pytest.mark.parametrize("relative", USERS[LIBRARY])
def test_remote_command_carries_the_libraries_instead_of_sourcing_them(relative: str) -> None:
    text, name = _sent(relative, {"CONFIG_FILE": "/etc/containerd/config.toml"})
    assert name == relative
    for library in (LIBRARY, STEP_LIBRARY):
        if relative not in USERS[library]:
            continue
        assert _line(library) not in text.splitlines()
        assert library.read_text().rstrip("\n") in text
        for function in _functions(library):
            assert len(re.findall(rf"^{function}\(\) \{{", text, re.MULTILINE)) == 1, function
    assert {"hold_output", "end_step"} <= set(_functions(STEP_LIBRARY))
    assert {"require_root", "fail_with", "wait_for_cri", "skip_or_refuse", "record_applied"} <= set(
        _functions(LIBRARY)
    )
    assert {"dir_files", "dir_digest", "require_member_healthy"} <= set(_functions(LIBRARY))
    # The script's own part follows: its shebang and parameters first, lib.sh before step.sh
    # (step.sh's end_step reads what lib.sh defines), the script's work after both.
    assert text.startswith("#!/usr/bin/env bash\n")
    assert text.index("set -euo pipefail") < text.index("require_root() {")
    assert text.index("restore_original() {") < text.rindex("require_root\n")
    if relative in USERS[STEP_LIBRARY]:
        step_start = text.index("end_step() {")
        assert text.index("fail_with() {") < step_start < text.index("hold_output\n")


def test_a_script_without_the_line_is_sent_as_it_is() -> None:
    text, _ = _sent("node/verify-node.sh", {"CONFIG_FILE": "/etc/containerd/config.toml"})
    assert text == (SCRIPTS_DIR / "node" / "verify-node.sh").read_text()


def test_a_library_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text('#!/usr/bin/env bash\n. "$(dirname "$0")/nolib.sh"\nrequire_root\n')
    with pytest.raises(ValueError, match=r"x\.sh sources nolib\.sh, but there is no .*nolib\.sh"):
        inline_libraries(script)


def test_a_library_line_written_otherwise_is_an_error(tmp_path: Path) -> None:
    """Sent as is, it would look on every node for a file that is not there."""
    (tmp_path / "lib.sh").write_text('  source "$(dirname "$0")/other.sh"\n')
    script = tmp_path / "x.sh"
    script.write_text(f"#!/usr/bin/env bash\n{_line(LIBRARY)}\n")
    with pytest.raises(ValueError, match="cannot be read on the remote host"):
        inline_libraries(script)


# --- the script on stdin: what pulumi-command prints of a failed step stays short ---------------


@pytest.mark.parametrize("relative", USERS[STEP_LIBRARY])
def test_stdin_command_is_short_and_names_the_script_by_its_checksum(relative: str) -> None:
    command, script = stdin_command(relative, {"CONFIG_FILE": "/etc/containerd/config.toml"})
    assert script == script_text(relative)
    # pulumi-command prints the whole command before the output of a failed step: a few
    # hundred bytes now, against the script and its libraries (several KB) inlined.
    assert len(command) < 800 < len(remote_command(relative))
    assert "export CONFIG_FILE=/etc/containerd/config.toml\n" in command
    assert hashlib.sha256(script.encode()).hexdigest() in command
    assert f"read -r -N {len(script)} s;" in command
    assert "set -euo pipefail" not in command


def _run(command: str, stdin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # /bin/sh as the login shell (dash on Debian): the command must not need bash to start.
    return subprocess.run(
        ["sh", "-c", command], input=stdin, capture_output=True, text=True, cwd=cwd, check=False
    )


def test_the_script_reads_what_follows_it_on_stdin_byte_for_byte(tmp_path: Path) -> None:
    """hosts.sh writes the bundle that follows the script: the loader takes exactly the script's
    bytes, whatever the content (UTF-8 text, backslashes, no final newline on the script's end)."""
    config_path = tmp_path / "certs.d"
    text = 'server = "https://d\u00e9j\u00e0.example"\n# caf\u00e9 \\ back\\slash\n'
    bundle = f"# registry-mirrors: docker.io/hosts.toml\n{text}"
    command, script = stdin_command(
        "node/hosts.sh", {"CONFIG_PATH": str(config_path), "APPLY_MARK": "m1"}
    )
    fake_id = "id() { echo 0; }; export -f id 2>/dev/null || true\n"
    result = subprocess.run(
        ["bash", "-c", fake_id + command],
        input=script + bundle,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "written=docker.io" in result.stdout
    assert (config_path / "docker.io" / "hosts.toml").read_text() == text


@pytest.mark.parametrize("cut", [1, 500])
def test_a_script_that_does_not_arrive_whole_runs_nothing(tmp_path: Path, cut: int) -> None:
    command, script = stdin_command("node/hosts.sh", {"CONFIG_PATH": str(tmp_path / "c")})
    result = _run(command, script[:-cut], tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "node/hosts.sh: the script did not arrive whole on stdin; nothing was changed\n"
    )
    assert not (tmp_path / "c").exists()
    # Control: the same command with the whole script gets past the loader (to the root check).
    whole = _run(command, script, tmp_path)
    assert "did not arrive whole" not in whole.stderr


def test_a_script_that_is_not_ascii_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loader counts characters; only in ASCII is that the byte count in every locale."""
    monkeypatch.setattr(shell, "script_text", lambda relative: "echo d\u00e9j\u00e0\n")
    with pytest.raises(ValueError, match=r"scripts/node/x\.sh: not ASCII"):
        stdin_command("node/x.sh")
