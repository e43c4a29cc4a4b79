"""Build the command text that runs one of our ``.sh`` scripts on a remote host.

Scripts stay real files (shellcheck lints them; tests run them over real SSH). Parameters travel
as an exported preamble quoted with ``shlex.quote``, never spliced into the script; file contents
travel on stdin. The script runs under bash whatever the login shell is (dash has no pipefail).

A script is never a file on the remote host (``bash -c '<text>'``, ``$0`` is ``node/<name>.sh``),
so it cannot source a library there. It names one with the line ``. "$(dirname "$0")/lib.sh"``
(which sources it from a checkout, and which ``shellcheck -x`` follows); ``script_text`` puts the
library's text in place of that line.

Two ways to send it:
- ``remote_command``: the script inside the command (``bash -c '<script>'``). For commands whose
  failure we report ourselves (the probe, verify) and the VM's steps.
- ``stdin_command``: the script FIRST ON STDIN, the command only the parameters and a loader of a
  few hundred bytes. For the node steps that pulumi-command runs: on failure it prints
  ``<exit status>: running "<the whole command>":`` and then the output, so with the script
  inlined (~14 KB with the library, on one %q-quoted line) the script's own summary of what
  failed came after a screenful of shell (pulumi-command ``provider/pkg/provider/remote/
  commandOutputs.go``: ``fmt.Errorf("%w: running %q:\\n%s", err, cmd, stdouterrbuf)``).
"""

from __future__ import annotations

import functools
import hashlib
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


def _preamble(params: Mapping[str, str | int | bool] | None) -> list[str]:
    lines = []
    for key, value in sorted((params or {}).items()):
        if not _PARAM.match(key):
            raise ValueError(f"script parameter {key!r}: expected UPPER_CASE name")
        text = ("1" if value else "0") if isinstance(value, bool) else str(value)
        lines.append(f"export {key}={shlex.quote(text)}")
    return lines


def remote_command(relative: str, params: Mapping[str, str | int | bool] | None = None) -> str:
    """``export K='v' ...; exec bash -c '<script>' <name>``: runnable by any POSIX login shell."""
    lines = _preamble(params)
    lines.append(f"exec bash -c {shlex.quote(script_text(relative))} {shlex.quote(relative)}")
    return "\n".join(lines) + "\n"


# Reads the script off stdin (exactly its length: bash reads a pipe one byte at a time for
# `read -N`, so what follows stays on stdin for the script), checks it arrived whole, runs it
# with $0 = its name. The script is ASCII, so characters are bytes in any locale.
_LOADER = (
    "IFS= read -r -N {length} s; "
    '[ "$(printf %s "$s" | sha256sum)" = "{sha256}  -" ] || '
    '{{ echo "$0: the script did not arrive whole on stdin; nothing was changed" >&2; exit 2; }}; '
    'exec bash -c "$s" "$0"'
)
LOADER_LENGTH = re.compile(r"read -r -N (\d+) s;")


def stdin_command(
    relative: str, params: Mapping[str, str | int | bool] | None = None
) -> tuple[str, str]:
    """(command, script): the command exports the parameters and runs the script that must come
    first on its stdin, ahead of any content the script reads. The script's checksum is in the
    command, so a changed script still changes the command (and a preview shows it)."""
    script = script_text(relative)
    if not script.isascii():
        raise ValueError(f"scripts/{relative}: not ASCII (the loader counts bytes as characters)")
    sha256 = hashlib.sha256(script.encode()).hexdigest()
    loader = _LOADER.format(length=len(script), sha256=sha256)
    lines = [*_preamble(params), f"exec bash -c {shlex.quote(loader)} {shlex.quote(relative)}"]
    return "\n".join(lines) + "\n", script


def as_root(command: str, user: str) -> str:
    """``command`` run by root when ``user`` logs in as someone else. sudo resets the
    environment, so the whole exported preamble runs inside the sudo'd shell; -n fails at once
    instead of prompting."""
    if user == "root":
        return command
    return f"exec sudo -n bash -c {shlex.quote(command)}\n"
