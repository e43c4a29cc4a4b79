"""Write a set of files all or nothing: the command-line tools' one way to change files.

Pure: no ``import pulumi``. Used by ``scripts/render.py`` (the review bundle) and
``scripts/migrate_containerd_config.py`` (hosts.toml files, a backup, config.toml).

How (and why):
- ``problems()`` checks every target first (its nearest existing parent is a directory the
  process may write in; the target is not a directory) so a bad location is one line and nothing
  is touched.
- ``write()`` stages every file as a hidden temp file next to its target (written, chmod'ed,
  fsync'ed), creating missing directories, and only then renames them into place in the order
  they were added: a reader (containerd, a person) never sees half a file, and the caller puts
  the file that matters most (config.toml) last. Each rename is followed by an fsync of its
  directory, so after a power cut the files added earlier are on disk before a later one.
- On any failure everything done so far is undone (new files removed, replaced files restored,
  created directories removed) and ``WriteFailed`` says, in one line, what failed and what, if
  anything, could not be undone.

Every change to the filesystem goes through the module attribute ``_os``: the fault-injection
tests replace it to make each write step fail (or the process die) in turn.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

_os = os


class WriteFailed(Exception):
    """One line: which file could not be written, and why."""


@dataclass
class _File:
    path: Path
    data: bytes
    mode: int
    owner: tuple[int, int] | None
    previous: bytes | None  # the content it replaces (None: the file is new)
    temp: str | None = None
    committed: bool = False


class AtomicFiles:
    def __init__(self) -> None:
        self._files: list[_File] = []
        self._made_dirs: list[Path] = []
        self._read_problems: list[str] = []

    def add(
        self, path: Path, data: bytes, mode: int = 0o644, owner: tuple[int, int] | None = None
    ) -> None:
        """Write ``data`` to ``path`` (replacing what is there) with ``mode`` (and ``owner``)."""
        previous = None
        if os.path.lexists(path) and not path.is_dir():
            try:
                previous = path.read_bytes()  # to restore it if a later file fails
            except OSError as error:
                self._read_problems.append(f"{path}: cannot read: {_reason(error)}")
        self._files.append(_File(path, data, mode, owner, previous))

    def problems(self) -> list[str]:
        """What would stop ``write()``, found without changing anything, one line each."""
        problems = list(self._read_problems)
        for file in self._files:
            if file.path.is_dir():
                problems.append(f"{file.path}: is a directory")
                continue
            if file.previous is not None and not os.access(file.path, os.W_OK):
                # A rename could replace it anyway (the directory is writable): respect the
                # file's own permission, as an editor does.
                problems.append(f"{file.path}: permission denied (the file is read-only)")
                continue
            for parent in file.path.parents:
                if not os.path.lexists(parent):
                    continue  # will be created
                if not parent.is_dir():
                    problems.append(f"{parent}: not a directory")
                elif not os.access(parent, os.W_OK | os.X_OK):
                    problems.append(f"{parent}: permission denied (cannot write in it)")
                break
        return list(dict.fromkeys(problems))

    def write(self) -> None:
        """Stage everything, then rename in order; on failure undo it all (see module doc)."""
        current: Path | None = None
        try:
            for file in self._files:
                current = file.path
                self._stage(file)
            for file in self._files:
                current = file.path
                assert file.temp is not None
                _os.replace(file.temp, file.path)
                file.temp, file.committed = None, True
                _fsync_directory(file.path.parent)
        except BaseException as error:  # an OSError, or Ctrl-C: undo either way
            self._remove_temps()
            left = self._undo()
            if not isinstance(error, OSError):
                raise
            undone = f"; NOT undone, check: {', '.join(map(str, left))}" if left else ""
            raise WriteFailed(f"{current}: cannot write: {_reason(error)}{undone}") from None

    def _remove_temps(self) -> None:
        for file in self._files:
            if file.temp is not None:
                _remove(file.temp)
                file.temp = None

    def _stage(self, file: _File) -> None:
        self._make_directories(file.path.parent)
        file.temp = str(file.path.with_name(f".{file.path.name}.{secrets.token_hex(4)}.tmp"))
        _write_file(file.temp, file.data, file.mode, file.owner)

    def _make_directories(self, directory: Path) -> None:
        missing = []
        while not os.path.lexists(directory):
            missing.append(directory)
            directory = directory.parent
        for path in reversed(missing):
            _os.mkdir(path, 0o755)
            self._made_dirs.append(path)

    def _undo(self) -> list[Path]:
        """Put back what ``write`` changed; the files that could not be put back."""
        left = []
        for file in reversed(self._files):
            if not file.committed:
                continue
            try:
                if file.previous is None:
                    _os.unlink(file.path)
                else:
                    temp = str(file.path.with_name(f".{file.path.name}.{secrets.token_hex(4)}.tmp"))
                    _write_file(temp, file.previous, file.mode, file.owner)
                    _os.replace(temp, file.path)
                file.committed = False
            except OSError:
                left.append(file.path)
        for directory in reversed(self._made_dirs):
            with contextlib.suppress(OSError):  # not empty (a file we could not remove)
                _os.rmdir(directory)
        return left


def _write_file(path: str, data: bytes, mode: int, owner: tuple[int, int] | None) -> None:
    descriptor = _os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[_os.write(descriptor, view) :]
        if owner is not None:
            _os.fchown(descriptor, *owner)
        _os.fchmod(descriptor, mode)
        _os.fsync(descriptor)
    except BaseException:
        os.close(descriptor)
        _remove(path)
        raise
    os.close(descriptor)


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable. Best effort: the rename is done and visible either way, and some
    filesystems refuse fsync on a directory."""
    try:
        descriptor = _os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        _os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


def _reason(error: OSError) -> str:
    return error.strerror or str(error)
