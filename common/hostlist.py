"""The agent.properties `host` value: `A,B,C@algorithm`, or a bare `A,B,C`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.addresses import Address, format_address_list, parse_address_list
from common.errors import ValidationError

ALGORITHM_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class HostList:
    """An ordered list of server addresses and the algorithm that produced it (None: unknown)."""

    addresses: tuple[Address, ...]
    algorithm: str | None = None

    @property
    def entries(self) -> list[str]:
        return [str(a) for a in self.addresses]

    @property
    def preferred(self) -> Address:
        return self.addresses[0]


def parse_host_value(text: str) -> HostList:
    """Parse `A,B,C@algorithm` or `A,B,C`. The algorithm name is kept even if not registered
    here (compare then treats the list as stale)."""
    value = text.strip()
    if value.startswith("@") and value.endswith("@"):
        raise ValidationError(f"host value {value!r} holds no addresses")
    algorithm: str | None = None
    if "@" in value:
        value, algorithm = value.rsplit("@", 1)
        algorithm = algorithm.strip()
        if not ALGORITHM_NAME_RE.match(algorithm):
            raise ValidationError(f"host value: bad algorithm name {algorithm!r} after '@'")
    try:
        addresses = parse_address_list(value)
    except ValidationError as exc:
        raise ValidationError(f"host value: {exc}") from None
    return HostList(addresses, algorithm)


def format_host_value(host_list: HostList) -> str:
    csv = format_address_list(host_list.addresses)
    return csv if host_list.algorithm is None else f"{csv}@{host_list.algorithm}"
