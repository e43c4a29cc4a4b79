"""Build the command text that runs one of our ``.sh`` scripts on a remote host.

Scripts stay real files (shellcheck lints them; tests run them over real SSH). Parameters travel
as an exported preamble quoted with ``shlex.quote``, never spliced into the script; file contents
travel on stdin. The script runs under bash whatever the login shell is (dash has no pipefail).

A script is never a file on the remote host (``bash -c '<text>'``, ``$0`` is ``node/<name>.sh``),
so it cannot source a library there. It names one with the line ``. "$(dirname "$0")/lib.sh"``
(which sources it from a checkout, and which ``shellcheck -x`` follows); ``script_text`` puts the
library's text in place of that line.
"""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "scripts"
_PARAM = re.compile(r"^[A-Z][A-Z0-9_]*$")
_LIBRARY_LINE = re.compile(r'^\. "\$\(dirname "\$0"\)/(?P<name>[A-Za-z0-9_.-]+)"$', re.MULTILINE)
# A library line written any other way (indented, `source`, in a library) would be sent as is and
# look for a file that is not on the remote host.
_UNINLINED = re.compile(r"^[ \t]*(\.|source)[ \t].*\$\(dirname ", re.MULTILINE)


def inline_libraries(script: Path) -> str:
    """``script``'s text with each ``. "$(dirname "$0")/<lib>"`` line replaced by the text of
    ``<lib>`` beside it. A library that is not there, or a library line left as it was, is an
    error here rather than a "No such file" on every node."""

    def library_text(match: re.Match[str]) -> str:
        library = script.parent / match["name"]
        if not library.is_file():
            raise ValueError(f"{script} sources {match['name']}, but there is no {library}")
        return library.read_text().rstrip("\n")

    text = _LIBRARY_LINE.sub(library_text, script.read_text())
    leftover = _UNINLINED.search(text)
    if leftover:
        line = text[leftover.start() :].partition("\n")[0]
        raise ValueError(f"{script}: {line.strip()!r} cannot be read on the remote host")
    return text


@functools.cache
def script_text(relative: str) -> str:
    """The text of ``scripts/<relative>`` (e.g. ``node/probe.sh``) as sent: libraries inlined."""
    return inline_libraries(SCRIPTS_DIR / relative)


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


def as_root(command: str, user: str) -> str:
    """``command`` run by root when ``user`` logs in as someone else. sudo resets the
    environment, so the whole exported preamble runs inside the sudo'd shell; -n fails at once
    instead of prompting."""
    if user == "root":
        return command
    return f"exec sudo -n bash -c {shlex.quote(command)}\n"
