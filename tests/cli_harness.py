"""Run the command-line tools as a user meets them, and judge the outcome the same way everywhere.

A user mistake must give: exit 2, one line per problem on stderr naming the file or key, nothing
on stdout, no traceback, no secret, and nothing written or changed (``snapshot`` before == after).
Tools run in-process (fast enough for tables and Hypothesis; any exception escaping ``main`` is
a traceback the user would have seen) or as a subprocess where the real entry point matters.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
# A problem line stays readable: long values are cut (settings.SHOWN_LENGTH) and YAML messages
# are one line; a 5 MB value echoed whole would blow far past this.
MAX_LINE = 500
_scripts: dict[str, ModuleType] = {}


def script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as a module (scripts/ is not a package)."""
    if name not in _scripts:
        spec = importlib.util.spec_from_file_location(
            f"script_{name}", ROOT / "scripts" / f"{name}.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        _scripts[name] = module
    return _scripts[name]


@dataclass
class Outcome:
    code: int
    stdout: bytes
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def run(name: str, argv: Sequence[str], stdin: bytes = b"") -> Outcome:
    """``scripts/<name>.py ARGV`` in this process, with its own stdin/stdout/stderr."""
    streams = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.StringIO()
    stdin_wrapper = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    stdout_wrapper = io.TextIOWrapper(out, encoding="utf-8", write_through=True)
    sys.stdin, sys.stdout, sys.stderr = stdin_wrapper, stdout_wrapper, err
    try:
        code = script(name).main(list(argv))
    except SystemExit as exit_:  # argparse
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        stdout_wrapper.flush()
        sys.stdin, sys.stdout, sys.stderr = streams
        stdout_wrapper.detach()  # a wrapper closes its buffer when collected
        stdin_wrapper.detach()
    return Outcome(code, out.getvalue(), err.getvalue())


def run_process(
    name: str, argv: Sequence[str], *, stdin: bytes = b"", unprivileged: bool = False
) -> Outcome:
    """``scripts/<name>.py ARGV`` as a process; ``unprivileged``: as nobody when we are root
    (root ignores file permissions, a user does not)."""
    command = [sys.executable, str(ROOT / "scripts" / f"{name}.py"), *argv]
    if unprivileged and os.geteuid() == 0:
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    done = subprocess.run(command, input=stdin, capture_output=True, timeout=120, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


def assert_user_error(
    outcome: Outcome,
    names: Iterable[str],
    secrets: Iterable[str] = (),
    lines: int | None = None,
    max_line: int = MAX_LINE,
) -> None:
    """Exit 2, one line per problem naming each of ``names``, nothing else."""
    assert outcome.code == 2, outcome
    assert outcome.stdout == b"", outcome
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.lines, "no problem line"
    for line in outcome.lines:
        assert line.strip(), f"empty line in {outcome.stderr!r}"
        assert len(line) <= max_line, f"line of {len(line)} characters: {line[:200]}"
    for name in names:
        assert any(name in line for line in outcome.lines), (name, outcome.lines)
    for secret in secrets:
        assert secret not in outcome.stderr, f"secret {secret!r} echoed: {outcome.stderr[:300]}"
    if lines is not None:
        assert len(outcome.lines) == lines, outcome.lines


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: kind, content or link target, mode. Equal snapshots: nothing
    was written, changed or left behind (no temp file either)."""
    entries: dict[str, tuple[Any, ...]] = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        key = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            entries[key] = ("link", os.readlink(path))
        elif stat.S_ISDIR(info.st_mode):
            entries[key] = ("dir", stat.S_IMODE(info.st_mode))
        else:
            entries[key] = ("file", path.read_bytes(), stat.S_IMODE(info.st_mode))
    return entries


@contextlib.contextmanager
def public_directory() -> Iterator[Path]:
    """A temp dir that ``run_process(unprivileged=True)`` can reach. Not pytest's tmp_path: its
    parent /tmp/pytest-of-root is 0700, and every pytest run resets it to that."""
    path = Path(tempfile.mkdtemp(prefix="registry-mirrors-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for entry in path.rglob("*"):
            if entry.is_dir() and not entry.is_symlink():
                entry.chmod(0o755)
        shutil.rmtree(path)


def require_unprivileged_runner() -> None:
    from tests.prereq import require_binary

    if os.geteuid() == 0:
        require_binary("setpriv")


# --- fault injection ------------------------------------------------------------------------------

# The os functions through which components.atomic_files changes the filesystem.
WRITE_CALLS = frozenset(
    {"mkdir", "open", "write", "fchown", "fchmod", "fsync", "replace", "unlink", "rmdir"}
)


class FaultyOs:
    """Stands in for ``os`` in components.atomic_files: counts write steps, and at step
    ``fail_at`` (and, with ``keep_failing``, every later one) calls ``fault`` instead."""

    def __init__(
        self,
        fail_at: int | None = None,
        fault: Callable[[str], NoReturn] | None = None,
        keep_failing: bool = False,
    ) -> None:
        self.fail_at = fail_at
        self.fault = fault or _raise_eio
        self.keep_failing = keep_failing
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        real = getattr(os, name)
        if name not in WRITE_CALLS:
            return real
        if name == "fsync":
            # Counted and failed like any step, but not run: it only changes what survives a
            # power cut, which these tests do not simulate, and costs most of their time.
            real = _no_fsync

        def step(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            count = len(self.calls)
            if self.fail_at is not None and (
                count == self.fail_at or (self.keep_failing and count > self.fail_at)
            ):
                self.fault(name)
            return real(*args, **kwargs)

        return step


def _no_fsync(descriptor: int) -> None:
    pass


def _raise_eio(name: str) -> NoReturn:
    raise OSError(5, f"Input/output error (injected into os.{name})")


def crash(name: str) -> NoReturn:
    """The process dies here, as under kill -9 or a power cut: no cleanup of any kind runs."""
    sys.stdout.flush()
    os._exit(137)


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True)
