"""Hostile frames against a live `msrv serve` that also serves real agents (property-based).

Frames are built from the protocol's own message classes (their dataclass fields and type
hints) with hostile values in every field: lone surrogates, control characters, huge and
negative numbers, floats where whole numbers go, wrong types, very long text, deep nesting;
and hostile framing: lines over 64 KiB, lines cut mid-JSON, floods of blank lines, unknown
types, missing fields. Each example sends them on a fresh TLS connection (with a certificate
from the namespace's CA: for the guid of the example's startup when the CA could have issued
one for it, else for a fresh guid), reads what comes back for a bounded time and closes. After
every example:

- the connection was answered (our trailing ping, or a close) and the server sent only
  well-formed messages, an `error` always followed by a close;
- a fresh agent still gets `ready`;
- the swarm's agents still hold their sessions (same server, same session token);
- nothing the example stored in the registry is unbounded or holds control characters;
- the server is running and logged no traceback.

KNOWN_CASES (the defects the test was written after) are always tried first. A case that
breaks the server gets it restarted (and the swarm settled again) before the next one.
The examples run in a worker thread; their network I/O runs on the event loop that owns the
child processes.

A connection that never sends a startup is not held open, however much else it sends
(`test_connection_without_startup_is_closed`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import signal
import socket
import ssl
import time
import types
import typing
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from common.ca import CertificateAuthority
from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.errors import ProtocolError
from common.fields import word_fault
from common.keys import Keys
from common.protocol import (
    MAX_LINE,
    MESSAGE_CLASSES,
    READER_LIMIT,
    Error,
    Message,
    Ping,
    Pong,
    Ready,
    Startup,
    UnknownMessage,
    encode,
    read_message,
)
from common.records import HostRecord, HostState, load_hosts
from common.tokens import create_token
from msctl.children import swarm_ready
from tests.support.agents import SwarmProcess
from tests.support.msrv_process import MsrvProcess
from tests.support.tls import identity, namespace_ca

SERVER_ID = "ms1"
SWARM_SIZE = 3
ZONE = "z1"
EXAMPLES = 250
ANSWER_TIMEOUT = 3.0  # for the server to answer (or close) one example's connection
PROBE_TIMEOUT = 3.0  # for a fresh agent's `ready`
EXAMPLE_TIMEOUT = 30.0  # one whole example, restart of a broken server included
# A case that breaks the server costs a restart and a few seconds each time the shrinker tries
# a variant of it: variants are tried for this long after the first failure, then skipped (the
# failure is reported less shrunk, but reported, well before the test's timeout).
SHRINK_SECONDS = 40.0
SYNC_SEQ = 7_777_777_777  # the seq of the ping that ends an example's frames
# Stored host fields are expected to be short words: generated long text is at least
# LONG_TEXT characters, so any limit the server picks between the two passes.
STORED_MAX = 1024
LONG_TEXT = 10_000
CN_MAX = 64  # characters in a certificate's subject CN (X.509 ub-common-name)
CONTROL = "".join(map(chr, range(0x20))) + "\x7f"
SURROGATES = "\ud800\udbff\udc00\udfff"

# -- frames ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text spliced in as is (numbers json.dumps cannot write, nesting, broken syntax)."""

    text: str


def render(value: Any) -> str:
    """JSON text of `value`, ASCII only: lone surrogates travel as \\udc00 escapes."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        items = (f"{json.dumps(k, ensure_ascii=True)}:{render(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(map(render, value)) + "]"
    return json.dumps(value, ensure_ascii=True)


def shown(data: bytes, limit: int = 100) -> str:
    text = repr(data[:limit])
    return text if len(data) <= limit else f"{text}...({len(data)} bytes)"


def brief(value: Any) -> str:
    """A short rendering of a generated value (long text and deep nesting abbreviated)."""
    if isinstance(value, Raw | str) and len(text := getattr(value, "text", value)) > 40:
        return f"{text[:12]!a}...({len(text)} chars)"
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, dict):
        return "{" + ", ".join(f"{brief(k)}: {brief(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        more = f", ...({len(value)} items)" if len(value) > 4 else ""
        return "[" + ", ".join(map(brief, value[:4])) + more + "]"
    return ascii(value)


class Piece:
    """Bytes to send and a short description (what a failing case shows)."""

    __slots__ = ("data", "guid", "label")

    def __init__(self, data: bytes, label: str, guid: object = None) -> None:
        self.data = data
        self.label = label
        self.guid = guid  # a startup's guid, when the piece carries one

    def __repr__(self) -> str:
        return self.label


class Case:
    """What one example sends, and how it ends: "sync" (a ping after the frames, read until
    its pong or the close), "half_close" (EOF, read until the close) or "abort" (a reset)."""

    __slots__ = ("ending", "pieces")

    def __init__(self, pieces: list[Piece], ending: str) -> None:
        self.pieces = pieces
        self.ending = ending

    @property
    def data(self) -> bytes:
        return b"".join(p.data for p in self.pieces)

    def guids(self) -> set[str]:
        return {p.guid for p in self.pieces if isinstance(p.guid, str)}

    def certified_guid(self) -> str:
        """The guid of the certificate the case is sent with: its first startup's, when the CA
        could have issued a certificate for it (enrollment takes a guid that is a word, and a
        CN has at most 64 characters), so that the startup is refused, or served, for what
        else it holds; otherwise a fresh guid (such a startup is refused as bad_message before
        its guid is compared with the certificate's, or as wrong_host)."""
        for piece in self.pieces:
            guid = piece.guid
            if isinstance(guid, str):
                if word_fault(guid, required=True) is None and len(guid) <= CN_MAX:
                    return guid
                break
        return str(uuid.uuid4())

    def __repr__(self) -> str:
        return f"Case({self.pieces!r}, ending={self.ending!r})"


hostile_char = st.one_of(
    st.sampled_from(SURROGATES),
    st.sampled_from(CONTROL),
    st.sampled_from('\u2028\u202e\ufeff\u200b\x85\xa0,@:"\\ é😀'),
    st.characters(),
)
short_text = st.lists(hostile_char, max_size=24).map("".join)  # st.text drops surrogates
plausible_text = st.one_of(
    st.uuids().map(str),
    st.sampled_from([ZONE, "routing", "ssvm", "c1", "127.0.0.1:8250", "roundrobin", "", " "]),
)
long_text = st.builds(
    lambda unit, n: unit * (n // len(unit)),
    st.sampled_from(["a", "x-", "\x1b[2J", "\x00\x07", "\udc00", "é"]),
    st.integers(LONG_TEXT, LONG_TEXT + 2000),
)
text_value = st.one_of(short_text, plausible_text, long_text)
huge_number = st.builds(
    lambda sign, digits: Raw(sign + "9" * digits), st.sampled_from(["", "-"]), st.integers(19, 6000)
)
int_value = st.one_of(
    st.integers(-3, 3),
    st.integers(),
    st.sampled_from([2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 10**40]),
    huge_number,
)


def nested(depth: int, shape: str, closed: bool) -> Raw:
    if shape == "[":
        return Raw("[" * depth + ("]" * depth if closed else ""))
    return Raw('{"a":' * depth + ("0" + "}" * depth if closed else ""))


deep_value = st.builds(nested, st.integers(900, 20_000), st.sampled_from(["[", "{"]), st.booleans())
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(),
    int_value,
    short_text,
    st.sampled_from([Raw("1e999"), Raw("-0"), Raw("NaN"), Raw("-Infinity"), Raw("1.0")]),
)
any_value = st.one_of(
    st.recursive(
        scalar,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(short_text, inner, max_size=3),
        max_leaves=8,
    ),
    long_text,
    deep_value,
)


HOSTILE_TYPES: dict[Any, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: int_value,
    float: st.floats() | int_value | st.sampled_from([Raw("1e999"), Raw("NaN")]),  # a delay
    str: text_value,
    type(None): st.none(),
}


def typed(hint: Any) -> st.SearchStrategy[Any]:
    """A value of the field's declared type, with hostile contents."""
    if hint in HOSTILE_TYPES:
        return HOSTILE_TYPES[hint]
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(typed(item), max_size=4) | st.lists(typed(item), min_size=60, max_size=90)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(typed(arg) for arg in typing.get_args(hint)))
    raise TypeError(f"no strategy for {hint!r}")


message_classes = st.sampled_from(list(MESSAGE_CLASSES.values()))
# Well-formed values where a field's type alone does not say enough (the rest follow the hint).
ADDRESS = "127.0.0.1:8250"
SOUND_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "guid": st.uuids().map(str),
    "ms_list": st.just([ADDRESS]),
    "dialled": st.just(ADDRESS),
    "protocol": st.just(1),
}
SOUND_TYPES: dict[Any, st.SearchStrategy[Any]] = {
    bool: st.booleans(),
    int: st.integers(0, 1000),
    float: st.floats(0, 10),
    str: st.from_regex(r"[a-z][a-z0-9.-]{0,15}", fullmatch=True),
}


def sound(name: str, hint: Any) -> st.SearchStrategy[Any]:
    """A well-formed value of a field."""
    if name in SOUND_FIELDS:
        return SOUND_FIELDS[name]
    if hint in SOUND_TYPES:
        return SOUND_TYPES[hint]
    if typing.get_origin(hint) is list:
        return st.just([])
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return st.none()
    raise TypeError(f"no strategy for {name}: {hint!r}")


@st.composite
def bodies(draw: st.DrawFn, classes: st.SearchStrategy[type[Message]]) -> dict[str, Any]:
    """A message of one of the protocol's classes, in one of three ways: well-formed but for
    one or two fields (of its type with hostile contents, of a wrong type, or missing); every
    field of its type with hostile contents; or anything goes, the `type` included."""
    cls = draw(classes)
    hints = typing.get_type_hints(cls)
    names = [spec.name for spec in dataclasses.fields(cls)]
    way = draw(st.sampled_from(["one", "one", "one", "every", "chaos", "chaos"]))
    body: dict[str, Any] = {"type": str(cls.TYPE)}
    if way == "one":
        body |= {name: draw(sound(name, hints[name])) for name in names}
        for name in draw(st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True)):
            mode = draw(st.sampled_from(["typed", "typed", "typed", "wrong", "gone"]))
            if mode == "gone":
                del body[name]
            else:
                body[name] = draw(typed(hints[name]) if mode == "typed" else any_value)
        return body
    if way == "every":
        body |= {name: draw(typed(hints[name])) for name in names}
        if "protocol" in body and draw(st.booleans()):
            body["protocol"] = 1
        return body
    kind = draw(st.sampled_from(["own", "own", "own", "unknown", "wrong", "gone"]))
    if kind == "unknown":
        body["type"] = draw(short_text | long_text)
    elif kind == "wrong":
        body["type"] = draw(any_value)
    elif kind == "gone":
        del body["type"]
    for name in names:
        mode = draw(st.sampled_from(["typed", "typed", "wrong", "gone"]))
        if mode != "gone":
            body[name] = draw(typed(hints[name]) if mode == "typed" else any_value)
    extra = draw(st.dictionaries(short_text, any_value, max_size=2))
    return body | {k: v for k, v in extra.items() if k not in body}


@st.composite
def message_lines(draw: st.DrawFn, classes: st.SearchStrategy[type[Message]]) -> Piece:
    body = draw(bodies(classes))
    text = render(body).encode()
    cut = draw(st.sampled_from(["whole"] * 5 + ["crlf", "spaced", "cut", "cut-eol"]))
    label = f"{brief(body)} ({len(text)} bytes)"
    if cut == "crlf":
        data = text + b"\r\n"
    elif cut == "spaced":
        data = b" \t" + text + b" \n"
    elif cut.startswith("cut"):
        at = draw(st.integers(1, max(1, len(text) - 1)))
        data = text[:at] + (b"\n" if cut == "cut-eol" else b"")
        label = f"{shown(data[-30:])} <- cut at {at} of {label}"
    else:
        data = text + b"\n"
    guid = body.get("guid") if body.get("type") == "startup" else None
    return Piece(data, label if cut == "whole" else f"{cut}: {label}", guid)


@st.composite
def blank_lines(draw: st.DrawFn) -> Piece:
    unit = draw(st.sampled_from([b"\n", b"\r\n", b" \n", b"\t \r\n"]))
    count = draw(st.integers(1, 60_000))
    return Piece(unit * count, f"{count} x {unit!r}")


@st.composite
def oversize_lines(draw: st.DrawFn) -> Piece:
    """Lines around and far over MAX_LINE: junk, or a ping padded with an extra field."""
    size = draw(st.integers(MAX_LINE - 40, MAX_LINE + 40) | st.integers(MAX_LINE, 300_000))
    if draw(st.booleans()):
        body = {"type": "ping", "seq": 1, "pad": ""}
        body["pad"] = "p" * max(0, size - len(render(body)))
        line = render(body).encode()
        return Piece(line + b"\n", f"ping padded to {len(line)} bytes + newline")
    unit = draw(st.sampled_from([b"x", b"[", b" ", b"\xff"]))
    eol = draw(st.sampled_from([b"\n", b""]))
    return Piece(unit * size + eol, f"{size} x {unit!r} + {eol!r}")


@st.composite
def deep_lines(draw: st.DrawFn) -> Piece:
    raw = draw(deep_value)
    return Piece(raw.text.encode() + b"\n", f"{brief(raw)} + newline")


ODD_LINES = [
    *(text.encode() + b"\n" for text in ["[]", "null", "1", '"ping"', "1e999", "NaN", "{}"]),
    b'{"type":null}\n',
    b"\xef\xbb\xbf{}\n",  # a byte-order mark
    b'{"type":"ping","seq":"\xed\xb0\x80"}\n',  # a surrogate in UTF-8 (not valid UTF-8)
]
odd_lines = st.one_of(
    st.sampled_from(ODD_LINES), st.binary(min_size=1, max_size=48).map(lambda b: b + b"\n")
).map(lambda data: Piece(data, shown(data)))
pieces = st.one_of(
    *[message_lines(message_classes)] * 4, blank_lines(), oversize_lines(), deep_lines(), odd_lines
)


def startup(**fields: Any) -> Piece:
    """A startup line, well-formed but for `fields`."""
    body = {
        "type": "startup",
        "guid": str(uuid.uuid4()),
        "name": "n1",
        "host_type": "routing",
        "zone": ZONE,
        "cluster": "c1",
        "ms_list": [ADDRESS],
        "algorithm": None,
        "dialled": ADDRESS,
        "protocol": 1,
    } | fields
    text = render(body).encode()
    return Piece(text + b"\n", f"{brief(body)} ({len(text)} bytes)", body["guid"])


# Always tried first: the defects this test was written after (each broke a server revision).
KNOWN_CASES = [
    Case([startup(guid="\udc00")], "sync"),  # killed the registry writer, and the server
    Case([startup(zone="x\udc00")], "sync"),
    Case([Piece(b"[" * 2000 + b"\n", "2000 x b'['")], "sync"),  # RecursionError in json
    Case([Piece(b"\n" * 50_000, "50000 x b'\\n'")], "sync"),  # recursion in read_message
    Case([startup(guid="g" * 10_000)], "sync"),  # stored as is
    Case([startup(name="n\x1b[2J\x00\x07")], "sync"),  # stored as is
]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    # half the cases open with a startup: its fields are the ones the server stores
    first = draw(message_lines(st.just(Startup)) | pieces)
    frames = [first, *draw(st.lists(pieces, max_size=2))]
    return Case(frames, draw(st.sampled_from(["sync", "sync", "half_close", "abort"])))


# -- one connection -------------------------------------------------------------------------------


@dataclass
class Outcome:
    received: list[Message | UnknownMessage] = field(default_factory=list)
    closed: bool = False  # the server closed (or reset) the connection
    answered: bool = False  # our trailing ping got its pong
    timed_out: bool = False
    malformed: str | None = None  # a line from the server that is not a valid message

    @property
    def errors(self) -> list[Error]:
        return [m for m in self.received if isinstance(m, Error)]

    def __str__(self) -> str:
        got = ", ".join(repr(m)[:200] for m in self.received) or "nothing"
        state = "closed" if self.closed else "open"
        return f"received {got}; connection {state}; timed out: {self.timed_out}"


async def open_tls(
    port: int, tls: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, asyncio.WriteTransport]:
    """A TLS connection, and the TCP transport under it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=READER_LIMIT)
    tcp = writer.transport
    try:
        await writer.start_tls(tls, server_hostname="127.0.0.1")
    except BaseException:
        tcp.abort()
        raise
    assert isinstance(tcp, asyncio.WriteTransport)
    return reader, writer, tcp


async def end_tcp_stream(writer: asyncio.StreamWriter, tcp: asyncio.WriteTransport) -> None:
    """A FIN once all that was written is sent, without close_notify: asyncio's TLS has no
    half-close (and after a write_eof on the TCP transport, the close_notify it answers the
    server's with would raise RuntimeError; after this, it fails as a broken pipe)."""
    # no event says that a transport's buffer is empty
    while writer.transport.get_write_buffer_size() or tcp.get_write_buffer_size():  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    writer.get_extra_info("socket").shutdown(socket.SHUT_WR)


async def exchange(port: int, case: Case, tls: ssl.SSLContext) -> Outcome:
    """Send the case's frames on a new connection; read until the answer to our ping (when
    the case ends with one) or the close, for ANSWER_TIMEOUT at most."""
    outcome = Outcome()
    async with asyncio.timeout(ANSWER_TIMEOUT):
        reader, writer, tcp = await open_tls(port, tls)
    try:
        data = case.data + (encode(Ping(SYNC_SEQ)) if case.ending == "sync" else b"")
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            writer.write(data)
            async with asyncio.timeout(ANSWER_TIMEOUT):
                await writer.drain()
                if case.ending == "half_close":
                    await end_tcp_stream(writer, tcp)
        if case.ending == "abort":
            writer.transport.abort()
            return outcome
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT):
                while True:
                    message = await read_message(reader)
                    if message is None:
                        outcome.closed = True
                        break
                    outcome.received.append(message)
                    if isinstance(message, UnknownMessage):
                        outcome.malformed = f"a message of unknown type {message.type!r}"
                    if isinstance(message, Pong) and message.seq == SYNC_SEQ:
                        outcome.answered = True
                        if not outcome.errors:
                            break
        except TimeoutError:
            outcome.timed_out = True
        except (ConnectionError, OSError):
            outcome.closed = True
        except ProtocolError as exc:
            outcome.malformed = f"{exc.code}: {exc.message}"
        return outcome
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def probe(
    port: int, address: str, name: str, ca: CertificateAuthority, timeout: float = PROBE_TIMEOUT
) -> object:
    """What a fresh agent gets first for a valid startup (`ready`, or why not)."""
    guid = str(uuid.uuid4())
    try:
        async with asyncio.timeout(timeout):
            reader, writer, _ = await open_tls(port, identity(ca, guid))
            try:
                startup = Startup(
                    guid=guid,
                    name=name,
                    host_type="routing",
                    zone=ZONE,
                    cluster="c1",
                    ms_list=[address],
                    algorithm=None,
                    dialled=address,
                )
                writer.write(encode(startup))
                await writer.drain()
                return await read_message(reader) or "a close"
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError, ProtocolError) as exc:
        return exc


# -- the live server ------------------------------------------------------------------------------


def faults(host: HostRecord) -> list[str]:
    """What is wrong with a stored host's fields: too long, or holding control characters."""
    found = []
    values = [
        ("guid", host.guid),
        ("name", host.name),
        ("type", host.type),
        ("zone", host.zone),
        ("cluster", host.cluster),
        ("algorithm", host.algorithm or ""),
        *(("ms_list", entry) for entry in host.ms_list),
    ]
    for name, value in values:
        if len(value) > STORED_MAX:
            found.append(f"{name} of {len(value)} characters")
        if any(c in CONTROL for c in value):
            found.append(f"{name} {ascii(value)[:80]} holds control characters")
    return found


@dataclass
class Live:
    server: MsrvProcess
    redis: aioredis.Redis
    keys: Keys
    ca: CertificateAuthority
    sessions: dict[str, str] = field(default_factory=dict)  # the swarm's guid -> session token
    log: list[str] = field(default_factory=list)  # lines of the server's earlier runs
    restarts: int = 0
    dirty: bool = False  # the last example failed: the server may be broken, start it again
    failed: set[str] = field(default_factory=set)  # repr of each case that failed
    first_failure: float | None = None  # monotonic time
    _probes: itertools.count[int] = field(default_factory=itertools.count)

    async def hosts(self) -> dict[str, HostRecord]:
        return {h.guid: h for h in await load_hosts(self.redis, self.keys)}

    async def settled(self, previous: dict[str, str], timeout: float = 10.0) -> dict[str, str]:
        """The swarm's session tokens once all its agents hold a session on the server that
        is not one of `previous` (polls the registry)."""

        def fresh(hosts: dict[str, HostRecord]) -> bool:
            mine = [h for h in hosts.values() if h.guid in previous or not previous]
            return len(mine) == SWARM_SIZE and all(
                h.state == HostState.CONNECTED
                and h.server == SERVER_ID
                and h.session != previous.get(h.guid)
                for h in mine
            )

        async with asyncio.timeout(timeout):
            while True:
                hosts = await self.hosts()
                if fresh(hosts):
                    return {g: h.session for g, h in hosts.items() if g in previous or not previous}
                await asyncio.sleep(0.05)

    async def restart(self) -> None:
        self.log += self.server.lines
        with contextlib.suppress(ProcessLookupError, TimeoutError):
            await self.server.stop(signal.SIGKILL)
        await self.server.start()
        self.restarts += 1
        self.sessions = await self.settled(self.sessions)

    def tracebacks(self) -> list[str]:
        return [line for line in self.log + self.server.lines if "Traceback" in line]

    async def healthy(self) -> bool:
        """Whether the server serves a fresh agent and the swarm as before."""
        if not self.server.running:
            return False
        name = f"probe-{next(self._probes)}"
        got = await probe(self.server.port, self.server.address, name, self.ca, 1.0)
        if not isinstance(got, Ready):
            return False
        hosts = await self.hosts()
        return all(g in hosts and hosts[g].session == s for g, s in self.sessions.items())

    async def example(self, case: Case) -> None:
        if self.dirty and not await self.healthy():
            await self.restart()
        self.dirty = True
        mark = len(self.server.lines)
        before = await self.hosts()
        outcome = await exchange(self.server.port, case, identity(self.ca, case.certified_guid()))
        assert outcome.malformed is None, f"the server sent {outcome.malformed}"
        if case.ending != "abort":
            assert outcome.answered or outcome.closed, f"no answer, no close: {outcome}"
            assert outcome.closed or not outcome.errors, f"an error without a close: {outcome}"
        name = f"probe-{next(self._probes)}"
        got = await probe(self.server.port, self.server.address, name, self.ca)
        assert isinstance(got, Ready), f"a fresh agent got {got!r}\n{self.server.tail(20)}"
        after = await self.hosts()
        for guid, session in self.sessions.items():
            host = after.get(guid)
            held = host and (host.state, host.server, host.session)
            assert held == (HostState.CONNECTED, SERVER_ID, session), f"swarm host lost: {host}"
        changed = [h for g, h in after.items() if before.get(g) != h]
        stored = {h.guid[:40]: fault for h in changed if (fault := faults(h))}
        assert not stored, f"stored: {stored}"
        assert self.server.running, self.server.tail(30)
        new_lines = "\n".join(self.server.lines[mark:])
        assert "Traceback" not in new_lines, new_lines[-4000:]
        self.dirty = False


@contextlib.asynccontextmanager
async def live_server(
    redis_url: str, namespace: str, directory: Path, server_args: list[str] | None = None
) -> AsyncIterator[Live]:
    """One `msrv serve` with a swarm of SWARM_SIZE agents connected to it."""
    redis = redis_from_url(redis_url)
    keys = Keys(namespace)
    server = MsrvProcess(SERVER_ID, redis_url, namespace, verbose=True)
    server.args += server_args or []
    # quick reconnects, for a server restarted after a failed example
    backoff = [
        "--property",
        "failover.backoff.initial=0.05",
        "--property",
        "failover.backoff.max=0.5",
    ]
    swarm: SwarmProcess | None = None
    try:
        await ConfigStore(redis, keys).set("host", server.address)
        await server.start()
        token, _ = await create_token(redis, keys, ttl_seconds=600, uses=SWARM_SIZE)
        swarm = SwarmProcess(
            directory, SWARM_SIZE, server.address, "--zone", ZONE, "--token", token, *backoff
        )
        await swarm.start(ready=swarm_ready(SWARM_SIZE), timeout=20)
        live = Live(server, redis, keys, await namespace_ca(redis, namespace))
        live.sessions = await live.settled({})
        yield live
    finally:
        for process in (swarm, server):
            if process is None:
                continue
            with contextlib.suppress(ProcessLookupError):
                try:
                    await process.stop(signal.SIGTERM, timeout=5.0)
                except TimeoutError:  # a broken server may not stop; it must not outlive the loop
                    await process.stop(signal.SIGKILL)
        await redis.aclose()


@pytest.mark.slow
@pytest.mark.timeout(150)  # a passing run takes ~10 s; shrinking a failure, up to a minute
def test_hostile_frames_harm_no_one(redis_url: str, namespace: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with live_server(redis_url, namespace, tmp_path / "swarm") as live:
            loop = asyncio.get_running_loop()
            swarm_guids = frozenset(live.sessions)

            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                # no explain phase: its variants of a server-breaking case each cost a restart
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
                suppress_health_check=[
                    HealthCheck.function_scoped_fixture,
                    HealthCheck.too_slow,
                    HealthCheck.data_too_large,
                    HealthCheck.large_base_example,
                ],
            )
            @given(case=cases())
            def hostile(case: Case) -> None:
                # a valid startup with a swarm agent's guid legitimately takes its session over
                assume(not case.guids() & swarm_guids)
                key = repr(case)
                since = live.first_failure
                if since is not None and time.monotonic() - since > SHRINK_SECONDS:
                    assume(key in live.failed)  # done shrinking: only replays of failures
                future = asyncio.run_coroutine_threadsafe(live.example(case), loop)
                try:
                    future.result(EXAMPLE_TIMEOUT)
                except BaseException as exc:
                    live.failed.add(key)
                    live.first_failure = live.first_failure or time.monotonic()
                    if isinstance(exc, concurrent.futures.TimeoutError):
                        future.cancel()
                        message = f"example unfinished after {EXAMPLE_TIMEOUT}s"
                        raise AssertionError(message) from None
                    raise

            for known in KNOWN_CASES:
                hostile = example(case=known)(hostile)

            await asyncio.to_thread(hostile)
            assert live.server.running, live.server.tail(30)
            assert not live.tracebacks(), live.server.tail(60)

    asyncio.run(scenario())


# -- connections that never start up --------------------------------------------------------------

STARTUP_TIMEOUT = 2.0  # the server's --startup-timeout here
STARTUP_BOUND = STARTUP_TIMEOUT + 3.0  # how long a connection without a startup may stay open
CHATTER_EVERY = 0.25


def plain(cls: type[Message]) -> bytes:
    """A well-formed message of `cls` with simple values."""
    values = {str: "x", int: 1, bool: False}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        hint = hints[spec.name]
        kwargs[spec.name] = [] if typing.get_origin(hint) is list else values.get(hint)
    return encode(cls(**kwargs))


async def linger(port: int, chatter: bytes, bound: float, tls: ssl.SSLContext) -> float | None:
    """Send `chatter` every CHATTER_EVERY seconds (once, when it is not a whole line) and
    never a startup: how long the server kept the connection open (None: past `bound`)."""
    opened = time.monotonic()
    async with asyncio.timeout(bound):
        reader, writer, _ = await open_tls(port, tls)
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(bound):
                while True:
                    if chatter:
                        writer.write(chatter)
                    try:
                        async with asyncio.timeout(CHATTER_EVERY):
                            if await read_message(reader) is None:
                                return time.monotonic() - opened
                    except TimeoutError:
                        pass  # still open: say it again
                    except (ConnectionError, OSError, ProtocolError):
                        return time.monotonic() - opened
                    if not chatter.endswith(b"\n"):
                        chatter = b""
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


@pytest.mark.slow
def test_connection_without_startup_is_closed(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    options = ["--startup-timeout", str(STARTUP_TIMEOUT)]
    chatters = {str(cls.TYPE): plain(cls) for cls in MESSAGE_CLASSES.values() if cls is not Startup}
    chatters |= {
        "unknown type": b'{"type":"telemetry","cpu":3}\n',
        "blank lines": b"\n\n",
        "half a line": b'{"type":"startup","guid":"g',
        "nothing": b"",
    }

    async def scenario() -> None:
        async with live_server(redis_url, namespace, tmp_path / "swarm", options) as live:
            port = live.server.port
            held = await asyncio.gather(
                *(
                    linger(port, c, STARTUP_BOUND, identity(live.ca, str(uuid.uuid4())))
                    for c in chatters.values()
                )
            )
            kept = {name: t for name, t in zip(chatters, held, strict=True) if t is None}
            assert not kept, f"open after {STARTUP_BOUND:.0f}s without a startup: {sorted(kept)}"
            assert live.server.running, live.server.tail(30)
            assert not live.tracebacks(), live.server.tail(60)
            for guid, host in (await live.hosts()).items():
                if guid in live.sessions:
                    assert host.session == live.sessions[guid], host

    asyncio.run(scenario())
