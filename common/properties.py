"""agent.properties: read, change and write back with comments, blank lines, key order and
unknown keys kept, replaced atomically so a crash leaves the old file or the new one.

`KeptProperties` is for a file one process rewrites often (the agent's list): it keeps the
parsed file between writes and reads it again only when the file changed since its last write
(another writer of the agent, an operator), so a write costs no parse."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path

import javaproperties

from common.errors import PropertiesError

# latin-1 maps every byte to one character, so untouched lines round-trip byte for byte;
# values we write are ASCII (javaproperties escapes anything else as \uXXXX).
_ENCODING = "latin-1"


def atomic_write(path: Path, data: bytes, mode: int | None = None) -> os.stat_result:
    """Replace `path` with `data`: temp file in the same folder, fsync, rename, fsync folder.
    Returns the new file's status (its inode, size and mtime stay those after the rename).

    The file gets `mode` when one is given (a private key's 0o600), else keeps its permission
    bits when it already exists, else 0o644. The mode is set on the temp file before any data
    is written to it, so the data is never readable by more than the final file allows.
    """
    folder = path.parent
    if mode is None:
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
            written = os.fstat(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_folder(folder)
    return written


def fsync_folder(folder: Path) -> None:
    """Make a rename or a removal in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Remove temporary files an interrupted `atomic_write` of `path` left behind."""
    removed = []
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed.append(stale)
    return removed


class AgentProperties:
    """An agent.properties file held in memory; `save()` writes it back atomically."""

    def __init__(self, path: Path, document: javaproperties.PropertiesFile, text: str = "") -> None:
        self.path = path
        self._document = document
        self._text = text  # as read, for `where` (parsed for line numbers only when asked)

    @classmethod
    def load(cls, path: Path | str) -> AgentProperties:
        path = Path(path)
        try:
            text = path.read_bytes().decode(_ENCODING)
        except OSError as exc:
            raise PropertiesError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            document = javaproperties.PropertiesFile.loads(text)
        except ValueError as exc:  # InvalidUEscapeError is a ValueError
            raise PropertiesError(f"{path}: {exc}") from None
        return cls(path, document, text)

    @classmethod
    def empty(cls, path: Path | str) -> AgentProperties:
        return cls(Path(path), javaproperties.PropertiesFile())

    def where(self, key: str) -> str:
        """`path line N` for error messages (the last line that sets `key`), or just `path`."""
        line = _key_lines(self._text).get(key)
        return f"{self.path} line {line}" if line else str(self.path)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self._document.get(key, default)

    def as_dict(self) -> dict[str, str]:
        return dict(self._document)

    def set(self, key: str, value: str) -> None:
        """Change a key in place (its line keeps its position) or append it."""
        self._document[key] = value

    def remove(self, key: str) -> None:
        if key in self._document:
            del self._document[key]

    def dumps(self) -> str:
        return str(self._document.dumps())

    def save(self, mode: int | None = None) -> os.stat_result:
        """Write the file back atomically (`atomic_write`); returns its new status."""
        return atomic_write(self.path, self.dumps().encode(_ENCODING), mode)


def _key_lines(text: str) -> dict[str, int]:
    """Line number (1-based) where each key is set; a later setting wins, as when reading."""
    lines: dict[str, int] = {}
    line = 1
    for element in javaproperties.parse(text):
        if isinstance(element, javaproperties.KeyValue):
            lines[element.key] = line
        line += element.source.count("\n")
    return lines


def _apply(props: AgentProperties, changes: Mapping[str, str | None]) -> None:
    for key, value in changes.items():
        if value is None:
            props.remove(key)
        else:
            props.set(key, value)


def update_properties(path: Path | str, changes: Mapping[str, str | None]) -> AgentProperties:
    """Read `path`, apply `changes` (None removes a key), write it back atomically."""
    props = AgentProperties.load(path)
    _apply(props, changes)
    props.save()
    return props


def _identity(status: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: a rename puts a new inode in place, an
    edit in place changes the size or the mtime (a rename changes only the ctime)."""
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class KeptProperties:
    """A file this process rewrites often, kept parsed between writes: `update` reads it again
    only when the file on disk is no longer the one it last wrote (or read), else applies the
    changes to the kept document. Either way the write is `atomic_write`'s, with the file's
    permission bits kept. Not for concurrent use: the caller writes one change at a time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._props: AgentProperties | None = None
        self._identity: tuple[int, int, int, int] | None = None

    def update(self, changes: Mapping[str, str | None]) -> None:
        """Apply `changes` (None removes a key) and write the file back atomically."""
        try:
            status = os.stat(self.path)
        except OSError as exc:
            raise PropertiesError(f"{self.path}: cannot read: {exc.strerror}") from None
        props = self._props
        if props is None or _identity(status) != self._identity:
            props = AgentProperties.load(self.path)
        self._props = None  # until this write is known to be on disk
        _apply(props, changes)
        written = props.save(stat.S_IMODE(status.st_mode))
        self._props, self._identity = props, _identity(written)
