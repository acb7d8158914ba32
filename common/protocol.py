"""The agent <-> server wire protocol: one JSON object per line, UTF-8, at most 64 KiB.

Messages are typed dataclasses keyed by `MessageType`; `decode` checks every field and raises
ProtocolError (with an error code) on anything malformed, so a bad line affects one connection:
text must be valid Unicode (no lone surrogates), whole numbers fit in 64 bits, nesting too deep
for the parser is refused, and a `startup`'s host fields follow common.fields (bounded length, no
control characters), its list holds valid addresses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from common.addresses import parse_address
from common.errors import ProtocolError, ValidationError
from common.fields import check_word
from common.hostlist import ALGORITHM_NAME_RE

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024
# A StreamReader limit a little above MAX_LINE, so a line of exactly MAX_LINE bytes plus its
# newline is still read whole and anything longer is refused.
READER_LIMIT = MAX_LINE + 2


class MessageType(enum.StrEnum):
    STARTUP = "startup"
    READY = "ready"
    MS_LIST = "ms_list"
    ACK = "ack"
    PING = "ping"
    PONG = "pong"
    ERROR = "error"
    CA = "ca"
    ENROLL = "enroll"
    ENROLLED = "enrolled"
    RENEW = "renew"
    RENEWED = "renewed"


class ErrorCode(enum.StrEnum):
    BAD_JSON = "bad_json"
    BAD_MESSAGE = "bad_message"
    LINE_TOO_LONG = "line_too_long"
    UNSUPPORTED_PROTOCOL = "unsupported_protocol"
    UNAVAILABLE = "unavailable"  # retryable: try another server or later
    SUPERSEDED = "superseded"  # a newer session of this host exists
    SHUTTING_DOWN = "shutting_down"
    STARTUP_TIMEOUT = "startup_timeout"  # the connection sent no startup in time
    INTERNAL = "internal"  # the server failed on this session's work; retryable
    NO_CERTIFICATE = "no_certificate"  # a connection without a client certificate may only enroll
    WRONG_HOST = "wrong_host"  # a startup for a guid other than its certificate's
    REVOKED = "revoked"  # the certificate was revoked (`msctl hosts remove`)
    BAD_TOKEN = "bad_token"  # unknown, expired, used-up or revoked join token, or a wrong secret
    BAD_CSR = "bad_csr"


@dataclass(frozen=True)
class Startup:
    TYPE: ClassVar[MessageType] = MessageType.STARTUP
    guid: str
    name: str
    host_type: str  # the host's type (routing, ssvm, cpvm...); `type` is the message's
    zone: str
    cluster: str
    ms_list: list[str]
    algorithm: str | None
    dialled: str
    protocol: int = PROTOCOL_VERSION
    # When the agent began this connection attempt (its own clock, ms, strictly increasing per
    # agent): a server that reads a startup late (after a stall) can tell it from a newer one.
    attempt: int = 0


@dataclass(frozen=True)
class Ready:
    TYPE: ClassVar[MessageType] = MessageType.READY
    host_id: int
    server: str
    ping_interval: int
    ping_timeout: int
    check_interval: int


@dataclass(frozen=True)
class MsList:
    """The list an agent is to hold, and the settings that travel with it: a change of ping
    settings reaches connected agents this way (`ready` carries them only once). When the list
    tells the agent to move, `delay` is how long it waits first (seconds, the server's pacing);
    0 when the server paces nothing (an older server sends none)."""

    TYPE: ClassVar[MessageType] = MessageType.MS_LIST
    ms_list: list[str]
    algorithm: str
    check_interval: int
    version: int
    ping_interval: int
    ping_timeout: int
    delay: float = 0.0  # the last field: msrv.lifecycle splices it into a cached encoding


@dataclass(frozen=True)
class Ack:
    """Names exactly the list the agent has persisted (several pushes may share a version)."""

    TYPE: ClassVar[MessageType] = MessageType.ACK
    version: int
    ms_list: list[str]
    algorithm: str


@dataclass(frozen=True)
class Ping:
    TYPE: ClassVar[MessageType] = MessageType.PING
    seq: int = 0


@dataclass(frozen=True)
class Pong:
    TYPE: ClassVar[MessageType] = MessageType.PONG
    seq: int = 0


@dataclass(frozen=True)
class Error:
    TYPE: ClassVar[MessageType] = MessageType.ERROR
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class Ca:
    """Server -> agent, first on a connection without a client certificate: the CA certificate
    (PEM), public, so that an agent holding only a join token can pin it against the token's
    fingerprint before it opens a verified connection and sends the token's secret."""

    TYPE: ClassVar[MessageType] = MessageType.CA
    certificate: str


@dataclass(frozen=True)
class Enroll:
    """Agent -> server, the only message accepted on a connection without a client
    certificate: the join token's id and secret, and a CSR made on the host (PEM)."""

    TYPE: ClassVar[MessageType] = MessageType.ENROLL
    guid: str
    token_id: str
    secret: str = field(repr=False)
    csr: str = field(repr=False)


@dataclass(frozen=True)
class Enrolled:
    """Server -> agent: the certificate issued for the CSR (subject CN = guid) and the CA's."""

    TYPE: ClassVar[MessageType] = MessageType.ENROLLED
    certificate: str
    ca: str


@dataclass(frozen=True)
class Renew:
    """Agent -> server on an established session: a CSR for a new key."""

    TYPE: ClassVar[MessageType] = MessageType.RENEW
    csr: str = field(repr=False)


@dataclass(frozen=True)
class Renewed:
    TYPE: ClassVar[MessageType] = MessageType.RENEWED
    certificate: str
    ca: str


Message = (
    Startup | Ready | MsList | Ack | Ping | Pong | Error | Ca | Enroll | Enrolled | Renew | Renewed
)

MESSAGE_CLASSES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Startup,
        Ready,
        MsList,
        Ack,
        Ping,
        Pong,
        Error,
        Ca,
        Enroll,
        Enrolled,
        Renew,
        Renewed,
    )
}


@dataclass(frozen=True)
class UnknownMessage:
    """A well-formed message of a type this side does not know: logged and ignored."""

    type: str
    body: dict[str, Any] = field(default_factory=dict)


_FIELDS: dict[type[Message], tuple[tuple[str, Any, Any], ...]] = {}


def _fields(cls: type[Message]) -> tuple[tuple[str, Any, Any], ...]:
    """(name, type hint, default) of each field of a message class, resolved once."""
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls)
        fields = tuple((f.name, hints[f.name], f.default) for f in dataclasses.fields(cls))
        _FIELDS[cls] = fields
    return fields


# json.dumps with any non-default option builds a new encoder per call
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode(message: Message) -> bytes:
    body = {"type": str(message.TYPE)}
    body.update((name, getattr(message, name)) for name, _, _ in _fields(type(message)))
    return _ENCODER.encode(body).encode() + b"\n"


INT_LIMIT = 1 << 63  # whole numbers on the wire fit in a signed 64-bit integer
MAX_LIST = 64  # entries in a startup's list
MAX_ADDRESS = 300  # characters of a startup's `dialled` and of each list entry
MAX_CN = 64  # characters of a certificate's subject CN (RFC 5280): an enrolling guid's limit


def _text_ok(value: str) -> bool:
    """JSON may carry lone surrogates (\\udc00); they are not text and cannot be stored."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number_ok(value: Any, hint: type) -> bool:
    """int: a whole number of 64 bits; float: any finite number of that size (a peer may write
    2.0 as 2). Never a bool, though JSON's true is a Python int."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if hint is int:
        return isinstance(value, int) and -INT_LIMIT <= value < INT_LIMIT
    return abs(value) < INT_LIMIT and math.isfinite(value)


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if hint is int or hint is float:
        return _number_ok(value, hint)
    if hint is str:
        return isinstance(value, str) and _text_ok(value)
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    raise TypeError(f"unsupported field type {hint!r}")


def _build(cls: type[Message], body: dict[str, Any]) -> Message:
    kwargs: dict[str, Any] = {}
    for name, hint, default in _fields(cls):
        if name not in body:
            if default is dataclasses.MISSING:
                raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: missing field {name!r}")
            continue
        if not _type_ok(body[name], hint):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: bad value for {name!r}")
        kwargs[name] = body[name]
    message = cls(**kwargs)
    check = _CHECKS.get(cls)
    if check is not None:
        try:
            check(message)
        except ValidationError as exc:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: {exc}") from None
    return message


def _check_startup(message: Any) -> None:
    """A startup's fields are stored in Redis and shown to operators: bound them here."""
    assert isinstance(message, Startup)
    check_word("guid", message.guid, required=True)
    check_word("name", message.name, required=True)
    check_word("host_type", message.host_type, required=True)
    check_word("zone", message.zone, required=True)
    check_word("cluster", message.cluster, required=False)
    if message.algorithm is not None and not ALGORITHM_NAME_RE.fullmatch(message.algorithm):
        raise ValidationError("algorithm: not an algorithm name")
    if len(message.ms_list) > MAX_LIST:
        raise ValidationError(f"ms_list: {len(message.ms_list)} entries; the limit is {MAX_LIST}")
    for name, entry in [*(("ms_list", e) for e in message.ms_list), ("dialled", message.dialled)]:
        if len(entry) > MAX_ADDRESS:
            raise ValidationError(f"{name}: an entry longer than {MAX_ADDRESS} characters")
        if entry or name == "ms_list":
            try:
                parse_address(entry)
            except ValidationError:
                raise ValidationError(f"{name}: {ascii(entry)[:60]} is not an address") from None


def _check_enroll(message: Any) -> None:
    assert isinstance(message, Enroll)
    check_word("guid", message.guid, required=True)
    if len(message.guid) > MAX_CN:
        raise ValidationError(f"guid: longer than {MAX_CN} characters, a certificate's name limit")
    if len(message.token_id) > 64 or len(message.secret) > 64:
        raise ValidationError("token: id or secret too long")


def _check_ms_list(message: Any) -> None:
    assert isinstance(message, MsList)
    if message.delay < 0:
        raise ValidationError("delay: negative")


_CHECKS: dict[type[Message], typing.Callable[[Any], None]] = {
    Startup: _check_startup,
    MsList: _check_ms_list,
    Enroll: _check_enroll,
}


def decode(line: bytes) -> Message | UnknownMessage:
    """Parse one line (with or without its newline)."""
    if len(line.rstrip(b"\r\n")) > MAX_LINE:
        raise ProtocolError(ErrorCode.LINE_TOO_LONG, f"line longer than {MAX_LINE} bytes")
    try:
        body = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError(ErrorCode.BAD_JSON, "line is not a UTF-8 JSON object") from None
    except RecursionError:
        raise ProtocolError(ErrorCode.BAD_JSON, "line nests too deeply") from None
    if not isinstance(body, dict) or not isinstance(body.get("type"), str):
        raise ProtocolError(ErrorCode.BAD_MESSAGE, "message is not an object with a 'type'")
    try:
        message_type = MessageType(body["type"])
    except ValueError:
        return UnknownMessage(body["type"], body)
    return _build(MESSAGE_CLASSES[message_type], body)


async def read_message(reader: asyncio.StreamReader) -> Message | UnknownMessage | None:
    """The next message, or None at end of stream; blank lines are skipped. The reader must use
    READER_LIMIT."""
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return None
            line = exc.partial
        except asyncio.LimitOverrunError:
            raise ProtocolError(
                ErrorCode.LINE_TOO_LONG, f"line longer than {MAX_LINE} bytes"
            ) from None
        if line.strip():
            return decode(line)
