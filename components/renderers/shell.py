"""Build the command text that runs one of our ``.sh`` scripts on a remote host.

Scripts stay real files (shellcheck lints them; tests run them over real SSH). Parameters travel
as an exported preamble quoted with ``shlex.quote``, never spliced into the script; file contents
travel on stdin. The script runs under bash whatever the login shell is (dash has no pipefail).
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "scripts"
_PARAM = re.compile(r"^[A-Z][A-Z0-9_]*$")


@functools.cache
def script_text(relative: str) -> str:
    """The text of ``scripts/<relative>``, e.g. ``node/probe.sh``."""
    return (SCRIPTS_DIR / relative).read_text()


def remote_command(relative: str, params: Mapping[str, str | int | bool] | None = None) -> str:
    """``export K='v' ...; exec bash -c '<script>' <name>``: runnable by any POSIX login shell."""
    lines = []
    for key, value in sorted((params or {}).items()):
        if not _PARAM.match(key):
            raise ValueError(f"script parameter {key!r}: expected UPPER_CASE name")
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        lines.append(f"export {key}={shlex.quote(text)}")
    lines.append(f"exec bash -c {shlex.quote(script_text(relative))} {shlex.quote(relative)}")
    return "\n".join(lines) + "\n"
