"""The table of global settings: name, type, default, scope, validator, help.

Validation, `msctl config list` and the README's table all come from `SETTINGS`. Values are
stored in Redis as normalised strings; `parse_*` functions turn operator input into that form
and raise ValidationError with a one-line reason naming the part at fault.
"""

from __future__ import annotations

import decimal
import difflib
import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from common import algorithms
from common.addresses import format_address_list, parse_address_list
from common.ca import CA_VALIDITY_DAYS
from common.errors import UnknownSettingError, ValidationError


class Scope(enum.StrEnum):
    GLOBAL = "global"
    CLUSTER = "cluster"


class Source(enum.StrEnum):
    """Where an effective value comes from."""

    CLUSTER = "cluster"
    GLOBAL = "global"
    DEFAULT = "default"


HOST = "host"
ALGORITHM = "indirect.agent.lb.algorithm"
CHECK_INTERVAL = "indirect.agent.lb.check.interval"
PING_INTERVAL = "ping.interval"
PING_TIMEOUT = "ping.timeout"
CERT_VALIDITY = "ca.framework.cert.validity.period"
MOVE_RATE = "indirect.agent.lb.move.rate"

MAX_MOVE_RATE = 1_000_000  # agents per second; a bound that keeps 1/rate a usable number


def _parse_host(raw: str) -> str:
    return format_address_list(parse_address_list(raw))


def _parse_algorithm(raw: str) -> str:
    name = raw.strip()
    algorithms.get(name)
    return name


def _whole_number(minimum: int, unit: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        text = raw.strip()
        if not re.fullmatch(r"-?[0-9]+", text):
            raise ValidationError(f"{raw!r} is not a whole number of {unit}")
        value = int(text)
        if value < minimum:
            raise ValidationError(f"{value} is below the minimum of {minimum} {unit}")
        return str(value)

    return parse


def _positive_number(
    unit: str, maximum: int | None = None, why_maximum: str = ""
) -> Callable[[str], str]:
    """A positive number of `unit`, decimals allowed (`0.5`), at most `maximum` when given;
    normalised without trailing zeros or exponent (`1.50` -> `1.5`, `0365` -> `365`)."""

    def parse(raw: str) -> str:
        text = raw.strip()
        if not re.fullmatch(r"-?([0-9]+(\.[0-9]*)?|\.[0-9]+)", text):
            raise ValidationError(f"{raw!r} is not a number of {unit}")
        value = decimal.Decimal(text)
        if value <= 0:
            raise ValidationError(f"{text} is not a positive number of {unit}")
        if maximum is not None and value > maximum:
            raise ValidationError(f"{text} is above the maximum of {maximum} {unit}{why_maximum}")
        return format(value.normalize(), "f")

    return parse


@dataclass(frozen=True)
class SettingSpec:
    name: str
    type: str
    default: str | None
    scopes: frozenset[Scope]
    parse: Callable[[str], str]
    help: str

    def normalise(self, raw: str) -> str:
        """Validate operator input; the error names this setting and the part at fault."""
        try:
            return self.parse(raw)
        except ValidationError as exc:
            raise ValidationError(f"{self.name}: {exc}") from None


_GLOBAL = frozenset({Scope.GLOBAL})
_GLOBAL_AND_CLUSTER = frozenset({Scope.GLOBAL, Scope.CLUSTER})

SETTINGS: dict[str, SettingSpec] = {
    spec.name: spec
    for spec in (
        SettingSpec(
            HOST,
            "csv of addresses",
            None,
            _GLOBAL,
            _parse_host,
            "management servers in preferred order: hostname, IPv4 or [IPv6], optional :port",
        ),
        SettingSpec(
            ALGORITHM,
            "algorithm name",
            "static",
            _GLOBAL,
            _parse_algorithm,
            "how each agent's copy of the list is ordered: " + ", ".join(algorithms.names()),
        ),
        SettingSpec(
            CHECK_INTERVAL,
            "seconds",
            "0",
            _GLOBAL_AND_CLUSTER,
            _whole_number(0, "seconds"),
            "period of the agents' preferred-server check; 0 disables it",
        ),
        SettingSpec(
            PING_INTERVAL,
            "seconds",
            "5",
            _GLOBAL,
            _whole_number(1, "seconds"),
            "agent heartbeat period",
        ),
        SettingSpec(
            PING_TIMEOUT,
            "multiple of ping.interval",
            "3",
            _GLOBAL,
            _whole_number(1, "intervals"),
            "silence (in ping intervals) after which a session is declared dead",
        ),
        SettingSpec(
            CERT_VALIDITY,
            "days",
            "365",
            _GLOBAL,
            _positive_number("days", CA_VALIDITY_DAYS, " (the CA's own)"),
            "lifetime of the agent and server certificates the CA issues (decimals allowed)",
        ),
        SettingSpec(
            MOVE_RATE,
            "agents per second",
            "200",
            _GLOBAL,
            _positive_number("agents per second", MAX_MOVE_RATE),
            "the most agents per second one server tells to move to another server",
        ),
    )
}


def spec_for(name: str) -> SettingSpec:
    """The spec of a setting; an unknown name suggests the closest known one."""
    try:
        return SETTINGS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(SETTINGS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(SETTINGS)}"
    raise UnknownSettingError(f"unknown setting {name!r}{hint}")


def resolve(
    name: str, global_values: Mapping[str, str], cluster_values: Mapping[str, str] | None = None
) -> tuple[str | None, Source]:
    """The effective value of one setting and where it comes from."""
    spec = spec_for(name)
    if cluster_values and Scope.CLUSTER in spec.scopes and name in cluster_values:
        return cluster_values[name], Source.CLUSTER
    if name in global_values:
        return global_values[name], Source.GLOBAL
    return spec.default, Source.DEFAULT


@dataclass(frozen=True)
class EffectiveSettings:
    """Typed effective values for one scope (global, or one cluster)."""

    host: tuple[str, ...] | None
    algorithm: str
    check_interval: int
    ping_interval: int
    ping_timeout: int
    cert_validity_days: float = 365.0
    move_rate: float = 200.0

    @classmethod
    def from_maps(
        cls, global_values: Mapping[str, str], cluster_values: Mapping[str, str] | None = None
    ) -> EffectiveSettings:
        def value(name: str) -> str | None:
            return resolve(name, global_values, cluster_values)[0]

        host = value(HOST)
        return cls(
            host=tuple(host.split(",")) if host else None,
            algorithm=value(ALGORITHM) or "static",
            check_interval=int(value(CHECK_INTERVAL) or 0),
            ping_interval=int(value(PING_INTERVAL) or 5),
            ping_timeout=int(value(PING_TIMEOUT) or 3),
            cert_validity_days=float(value(CERT_VALIDITY) or 365),
            move_rate=float(value(MOVE_RATE) or 200),
        )
