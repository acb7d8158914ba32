"""Linux inotify through ctypes (no dependency): the file events of one folder, read in a
thread, so that a fault can be timed from the moment a process creates or renames a file."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

IN_CREATE = 0x00000100
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CLOSE_WRITE = 0x00000008
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


@dataclass(frozen=True)
class Event:
    mask: int
    name: str


class FolderWatch:
    """Events of the files in one folder (IN_CREATE, IN_MOVED_TO by default)."""

    def __init__(self, folder: Path, mask: int = IN_CREATE | IN_MOVED_TO) -> None:
        self.fd = _libc.inotify_init1(IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(errno, f"inotify_add_watch {folder}")

    def read(self, timeout: float) -> Iterator[Event]:
        """The events that arrived, waiting up to `timeout` seconds for the first."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return
        data = os.read(self.fd, 64 * 1024)
        offset = 0
        while offset < len(data):
            _, mask, _, length = _EVENT.unpack_from(data, offset)
            start = offset + _EVENT.size
            name = data[start : start + length].rstrip(b"\0").decode(errors="replace")
            offset = start + length
            yield Event(mask, name)

    def close(self) -> None:
        os.close(self.fd)
