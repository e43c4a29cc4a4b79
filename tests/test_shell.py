"""The command text a node script travels as: the shared library inlined, since no file of ours
exists on the node to source."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from components.renderers.shell import SCRIPTS_DIR, inline_libraries, remote_command

LIBRARY = SCRIPTS_DIR / "node" / "lib.sh"
LIBRARY_LINE = '. "$(dirname "$0")/lib.sh"'
# The three that replace a file, and the two that read (probe.sh) and copy (hosts.sh) the
# directories of a previous config_path with its dir_files/dir_digest.
USERS = (
    "node/apply-config.sh", "node/registries.sh", "node/restore.sh", "node/probe.sh",
    "node/hosts.sh",
)  # fmt: skip


def _sent(relative: str, params: dict[str, str | int | bool]) -> tuple[str, str]:
    """(script text, $0) of ``exec bash -c '<text>' <name>``, the last words of the command."""
    words = shlex.split(remote_command(relative, params))
    assert words[-4:-2] == ["bash", "-c"]
    return words[-2], words[-1]


def _library_functions() -> list[str]:
    return re.findall(r"^([a-z_][a-z0-9_]*)\(\) \{", LIBRARY.read_text(), re.MULTILINE)


def test_the_scripts_that_share_the_library_are_the_ones_listed() -> None:
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
    script.write_text(f"#!/usr/bin/env bash\n{LIBRARY_LINE}\n")
    with pytest.raises(ValueError, match="cannot be read on the remote host"):
        inline_libraries(script)
