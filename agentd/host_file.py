"""The agent's list in its agent.properties: `host=A,B,C@algorithm`, written atomically
(common.properties: temp file, fsync, rename, fsync of the folder; every other line kept), one
write at a time, the file kept parsed between writes (KeptProperties: read again only when
something else changed it). The agent acks a list only once it is written; a write that fails
keeps the old file, and its cause is logged once while it lasts (the server pushes the list
again later)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from agentd.config import HOST
from common.errors import PropertiesError
from common.hostlist import HostList, format_host_value
from common.properties import KeptProperties

logger = logging.getLogger(__name__)


class HostFile:
    def __init__(self, path: Path, label: str) -> None:
        self.path = path
        self.label = label
        self._file = KeptProperties(path)
        self._lock = asyncio.Lock()
        self._fault: str | None = None  # why the last write failed, while it fails

    async def save(self, host_list: HostList) -> bool:
        """Write `host=`; whether it is on disk."""
        value = format_host_value(host_list)
        async with self._lock:
            try:
                await asyncio.to_thread(self._file.update, {HOST: value})
            except (OSError, PropertiesError) as exc:
                self._failed(value, exc)
                return False
        if self._fault is not None:
            logger.warning("%s: %s writable again", self.label, self.path)
            self._fault = None
        return True

    def _failed(self, value: str, exc: Exception) -> None:
        fault = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        log = logger.error if fault != self._fault else logger.debug
        log(
            "%s: cannot save host=%s to %s (%s); keeping the old list, not acknowledging",
            self.label,
            value,
            self.path,
            fault,
        )
        self._fault = fault
