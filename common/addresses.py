"""Management server addresses: hostname, IPv4 or [IPv6], each with an optional :port."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

from common.errors import ValidationError

DEFAULT_PORT = 8250

_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True)
class Address:
    """A normalised server address. `host` is bare (no brackets); `port` None means default."""

    host: str
    port: int | None = None

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def endpoint(self, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
        """The (host, port) to dial."""
        return self.host, self.port if self.port is not None else default_port


def _parse_port(text: str, entry: str) -> int:
    if not _PORT_RE.match(text):
        raise ValidationError(f"{entry!r}: port {text!r} is not a number")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValidationError(f"{entry!r}: port {port} is out of range 1-65535")
    return port


def _normalise_host(text: str, entry: str) -> str:
    if text.count(":") > 0:
        raise ValidationError(f"{entry!r}: an IPv6 address must be in brackets, like [{text}]")
    if re.fullmatch(r"[0-9.]+", text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            raise ValidationError(f"{entry!r}: {text!r} is not a valid IPv4 address") from None
    name = text.lower().rstrip(".")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise ValidationError(f"{entry!r}: not a valid hostname, IPv4 or [IPv6] address")
    return name


@functools.lru_cache(maxsize=1024)
def parse_address(text: str) -> Address:
    """Parse one entry; surrounding spaces are dropped. Raises ValidationError naming it.

    Remembered (an Address is immutable): a fleet's lists name the same few servers, and every
    agent parses each list it gets (py-spy: 4.5% of a 3,000-agent swarm's busy time when `host`
    changed), every server each startup's."""
    entry = text.strip()
    if not entry:
        raise ValidationError("empty address")
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ValidationError(f"{entry!r}: missing closing bracket ']'")
        inside, rest = entry[1:close], entry[close + 1 :]
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise ValidationError(f"{entry!r}: {inside!r} is not a valid IPv6 address") from None
        if not rest:
            return Address(host)
        if not rest.startswith(":"):
            raise ValidationError(f"{entry!r}: unexpected {rest!r} after ']'")
        return Address(host, _parse_port(rest[1:], entry))
    if "]" in entry:
        raise ValidationError(f"{entry!r}: ']' without an opening '['")
    if entry.count(":") == 1:
        host_text, port_text = entry.split(":")
        return Address(_normalise_host(host_text, entry), _parse_port(port_text, entry))
    return Address(_normalise_host(entry, entry))


def parse_address_list(csv: str, default_port: int = DEFAULT_PORT) -> tuple[Address, ...]:
    """Parse a comma-separated list. Refuses empty entries and duplicates (after normalising).

    Two entries are duplicates when they dial the same endpoint, taking a missing port as
    `default_port`. Messages name the entry at fault by position and text.
    """
    if not csv.strip():
        raise ValidationError("the list is empty")
    parts = csv.split(",")
    seen: dict[tuple[str, int], int] = {}
    result: list[Address] = []
    for position, part in enumerate(parts, start=1):
        if not part.strip():
            raise ValidationError(f"entry {position} is empty")
        try:
            address = parse_address(part)
        except ValidationError as exc:
            raise ValidationError(f"entry {position} {exc}") from None
        endpoint = address.endpoint(default_port)
        if endpoint in seen:
            raise ValidationError(
                f"entry {position} {part.strip()!r} repeats entry {seen[endpoint]}"
            )
        seen[endpoint] = position
        result.append(address)
    return tuple(result)


def format_address_list(addresses: Sequence[Address | str]) -> str:
    return ",".join(str(a) for a in addresses)
