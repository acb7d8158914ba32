"""Events on the pub/sub channel: one JSON object per message, with a `type`.

Events are hints (pub/sub loses messages while a subscriber is away); the keys are the truth.
"""

from __future__ import annotations

import enum
import json
from typing import Any

from common.errors import ProtocolError


class EventType(enum.StrEnum):
    CONFIG_CHANGED = "config.changed"
    HOSTS_CHANGED = "hosts.changed"
    HOSTS_REVOKED = "hosts.revoked"
    SERVER_UP = "server.up"
    SERVER_DOWN = "server.down"
    SERVER_MAINTENANCE = "server.maintenance"


def encode_event(event_type: EventType, **fields: Any) -> str:
    return json.dumps({"type": str(event_type), **fields}, separators=(",", ":"))


def config_changed(version: int, key: str, scope: str, cluster: str | None) -> str:
    return encode_event(
        EventType.CONFIG_CHANGED, version=version, key=key, scope=scope, cluster=cluster
    )


def hosts_changed(zone: str) -> str:
    return encode_event(EventType.HOSTS_CHANGED, zone=zone)


def hosts_revoked(guid: str) -> str:
    """The host with this guid was removed and its certificates revoked: a server holding a
    session of it closes it."""
    return encode_event(EventType.HOSTS_REVOKED, guid=guid)


def server_maintenance(server_id: str, state: str) -> str:
    """A server's maintenance state changed (`preparing`, `maintenance`, or `running` once
    cancelled): every server reads the states again and recomputes its lists."""
    return encode_event(EventType.SERVER_MAINTENANCE, id=server_id, state=state)


def decode_event(data: str | bytes) -> dict[str, Any]:
    """Parse one event; a message that is not a JSON object with a `type` raises ProtocolError."""
    try:
        event = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("bad_event", f"event is not JSON: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise ProtocolError("bad_event", "event is not an object with a 'type'")
    return event
