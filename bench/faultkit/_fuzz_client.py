"""The wire-fuzz scenario's client process: for a given time, connections to one server that send
generated and mutated frames, and connections that sit idle.

    python bench/faultkit/_fuzz_client.py --address HOST:PORT --namespace NS --seconds 60
    (the Redis URL in MSRV_REDIS_URL: the fuzzer issues its client certificates from the
    namespace's CA, as enrollment would)

Frames come from two sources:
- hypothesis strategies built from the protocol's own message classes (tests/msrv/
  test_hostile_frames.py's `cases`: every field of every message class with hostile values of
  its type or of a wrong type, oversize and cut lines, deep nesting, floods of blank lines),
  drawn with `fuzz_one_input` from random bytes (no shrinking, no database);
- byte-level mutations of real frames (encodings of real messages, a real CSR in `enroll` and
  `renew`): truncation, oversize, bad UTF-8, wrong types, huge numbers, flipped bytes, splices,
  duplicate keys, pipelines of one frame repeated, CSRs with bytes of their DER changed.

Connections are of three kinds: TLS with a client certificate of the namespace's CA (half of
them first complete a valid startup, so the frames reach a served session), TLS without a client
certificate (an agent before enrolling: only `enroll` is accepted there), and plain TCP (bytes
that are not TLS at all). Besides, IDLE connections of each kind are kept open, each sending
nothing, half a line or a byte now and then, and opened again when the server closes them.

At the end one line `fuzz-result {json}` goes to stderr: frames and bytes sent, connections by
kind, what the server answered (errors by code), how long idle connections were held.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import ssl
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from benchtls import Identities  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

from agentd.keystore import csr_pem  # noqa: E402
from common.ca import new_key  # noqa: E402
from common.connection import redis_from_url  # noqa: E402
from common.errors import ProtocolError  # noqa: E402
from common.protocol import (  # noqa: E402
    MAX_LINE,
    READER_LIMIT,
    Ack,
    Enroll,
    Error,
    Message,
    MsList,
    Ping,
    Pong,
    Ready,
    Renew,
    Startup,
    UnknownMessage,
    encode,
    read_message,
)
from common.tls import enrollment_context  # noqa: E402

# The strategies of the property test, one home for "hostile frames of the protocol's classes".
from tests.msrv.test_hostile_frames import Case, cases  # noqa: E402

RESULT = "fuzz-result "
OPEN_TIMEOUT = 3.0
SEND_TIMEOUT = 3.0
READ_TIMEOUT = 1.5
IDENTITIES = 256  # client certificates kept (an LRU of guid -> context)
ZONE = "fuzz"
KINDS = ("tls", "tls", "tls", "anonymous", "plain")


class Source:
    """Frames to send: hypothesis cases and mutations of real frames."""

    def __init__(self, rng: random.Random, address: str) -> None:
        self.rng = rng
        self.address = address
        self._drawn: list[Case] = []

        @settings(database=None, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=cases())
        def collect(case: Case) -> None:
            self._drawn.append(case)

        self._collect = collect
        csr = csr_pem(new_key(), str(uuid.uuid4())).decode()
        self.enroll = encode(Enroll(str(uuid.uuid4()), "0123abcd", "0" * 32, csr))
        self.renew = encode(Renew(csr))
        self.real: list[bytes] = [
            encode(self.startup(str(uuid.uuid4()))),
            encode(Ping(1)),
            encode(Pong(1)),
            encode(Ack(3, [address], "static")),
            self.enroll,
            self.renew,
            encode(MsList([address], "static", 0, 3, 5, 3, 0.5)),
            encode(Ready(1, address, 5, 3, 0)),
            encode(Error("bad_json", "x")),
        ]

    def startup(self, guid: str) -> Startup:
        return Startup(guid, f"fz-{guid[:8]}", "routing", ZONE, "", [self.address], None, "")

    def case(self) -> Case | None:
        """A hypothesis example (None when the random bytes made none)."""
        self._drawn.clear()
        self._collect.hypothesis.fuzz_one_input(  # type: ignore[attr-defined]
            self.rng.randbytes(self.rng.choice([256, 1024, 4096, 8192]))
        )
        return self._drawn[0] if self._drawn else None

    def mutated(self) -> tuple[str, bytes]:
        """(how, bytes): a real frame, mutated."""
        frame = self.rng.choice(self.real)
        how = self.rng.choice(list(MUTATIONS))
        return how, MUTATIONS[how](self, frame)

    # -- mutations (each returns the bytes to send)

    def truncate(self, frame: bytes) -> bytes:
        return frame[: self.rng.randrange(1, len(frame))] + self.rng.choice([b"", b"\n"])

    def oversize(self, frame: bytes) -> bytes:
        size = self.rng.choice([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, MAX_LINE + 2, 200_000])
        pad = max(0, size - len(frame) - 10)
        return frame.rstrip(b"}\n") + b',"pad":"' + b"p" * pad + b'"}\n'

    def bad_utf8(self, frame: bytes) -> bytes:
        bad = self.rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
        quote = [i for i, b in enumerate(frame) if b == ord('"')]
        at = self.rng.choice(quote) + 1 if quote else self.rng.randrange(len(frame))
        return frame[:at] + bad + frame[at:]

    def wrong_type(self, frame: bytes) -> bytes:
        body = json.loads(frame)
        key = self.rng.choice(list(body))
        body[key] = self.rng.choice(
            [None, True, 0, -1, 1.5, "", "x" * 300, [], {}, [1, [2]], {"a": {}}, ["a"] * 70]
        )
        return json.dumps(body).encode() + b"\n"

    def huge_number(self, frame: bytes) -> bytes:
        body = json.loads(frame)
        key = self.rng.choice(list(body))
        digits = self.rng.choice([19, 20, 64, 309, 400, 4300, 4301, 20_000])
        number = self.rng.choice(
            ["9" * digits, "-" + "9" * digits, "1e999", "-1e309", "1E-400", "0." + "0" * digits]
        )
        body[key] = "@@N@@"
        return json.dumps(body).encode().replace(b'"@@N@@"', number.encode()) + b"\n"

    def flip(self, frame: bytes) -> bytes:
        data = bytearray(frame)
        for _ in range(self.rng.randint(1, 8)):
            data[self.rng.randrange(len(data))] = self.rng.randrange(256)
        return bytes(data)

    def splice(self, frame: bytes) -> bytes:
        other = self.rng.choice(self.real)
        return frame[: self.rng.randrange(1, len(frame))] + other[self.rng.randrange(len(other)) :]

    def duplicate_key(self, frame: bytes) -> bytes:
        twin = self.rng.choice([b'"type":"startup"', b'"type":1', b'"guid":null', b'"seq":-1'])
        return frame.rstrip(b"}\n") + b"," + twin + b"}\n"

    def pipeline(self, frame: bytes) -> bytes:
        return frame * self.rng.choice([2, 10, 200, 2000])

    def csr(self, frame: bytes) -> bytes:
        """An `enroll` or `renew` whose CSR has a few bytes of its DER changed (still PEM)."""
        body = json.loads(self.rng.choice([self.enroll, self.renew]))
        lines = body["csr"].splitlines()
        der = bytearray(base64.b64decode("".join(lines[1:-1])))
        for _ in range(self.rng.randint(1, 4)):
            der[self.rng.randrange(len(der))] = self.rng.randrange(256)
        text = base64.encodebytes(bytes(der)).decode()
        body["csr"] = f"{lines[0]}\n{text}{lines[-1]}\n"
        return json.dumps(body).encode() + b"\n"

    def control(self, frame: bytes) -> bytes:
        at = self.rng.randrange(len(frame))
        return frame[:at] + self.rng.choice([b"\x00", b"\r", b"\x1b[2J", b"\\u0000"]) + frame[at:]


MUTATIONS = {
    "truncate": Source.truncate,
    "oversize": Source.oversize,
    "bad_utf8": Source.bad_utf8,
    "wrong_type": Source.wrong_type,
    "huge_number": Source.huge_number,
    "flip": Source.flip,
    "splice": Source.splice,
    "duplicate_key": Source.duplicate_key,
    "pipeline": Source.pipeline,
    "control": Source.control,
    "csr": Source.csr,
}


class Fuzzer:
    def __init__(self, host: str, port: int, ids: Identities, seed: int) -> None:
        self.host = host
        self.port = port
        self.ids = ids
        self.rng = random.Random(seed)
        self.source = Source(self.rng, f"{host}:{port}")
        self.anonymous = enrollment_context(ids.ca.certificate_pem)
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.stats: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()
        self.idle_held: list[float] = []
        self.deadline = 0.0

    def identity(self, guid: str) -> ssl.SSLContext:
        context = self.contexts.pop(guid, None) or self.ids.client(guid)
        self.contexts[guid] = context
        if len(self.contexts) > IDENTITIES:
            del self.contexts[next(iter(self.contexts))]
        return context

    async def open(
        self, kind: str, guid: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        tls = {"tls": None, "anonymous": self.anonymous, "plain": None}[kind]
        if kind == "tls":
            tls = self.identity(guid)
        try:
            async with asyncio.timeout(OPEN_TIMEOUT):
                return await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=tls,
                    server_hostname=self.host if tls is not None else None,
                    limit=READER_LIMIT,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self.stats[f"open_failed_{kind}"] += 1
            self.stats[f"open_failed_{type(exc).__name__}"] += 1
            return None

    def frames(self, guid: str) -> tuple[list[bytes], str, str]:
        """(frames, ending, source) for one connection: a hypothesis case (its ending), or
        one to three mutated real frames (ending in a ping half the time)."""
        if self.rng.random() < 0.5:
            case = self.source.case()
            if case is not None:
                self.stats["hypothesis_cases"] += 1
                return [p.data for p in case.pieces], case.ending, "hypothesis"
        frames = []
        for _ in range(self.rng.randint(1, 3)):
            how, data = self.source.mutated()
            self.stats[f"mutation_{how}"] += 1
            frames.append(data.replace(b"__GUID__", guid.encode()))
        ending = self.rng.choice(["sync", "sync", "half_close", "abort"])
        return frames, ending, "mutation"

    async def connection(self) -> None:
        kind = self.rng.choice(KINDS)
        guid = str(uuid.uuid4())
        frames, ending, source = self.frames(guid)
        if kind == "tls" and source == "hypothesis":
            guid = self._certified(frames) or guid
        opened = await self.open(kind, guid)
        self.stats[f"connections_{kind}"] += 1
        if opened is None:
            return
        reader, writer = opened
        try:
            if kind == "tls" and self.rng.random() < 0.5:
                frames.insert(0, encode(self.source.startup(guid)))
                self.stats["after_valid_startup"] += 1
            if ending == "sync":
                frames.append(encode(Ping(7)))
            await self.send(writer, frames)
            if ending == "abort":
                writer.transport.abort()
                return
            if ending == "half_close" and writer.can_write_eof():
                with contextlib.suppress(OSError, RuntimeError):
                    writer.write_eof()
            await self.read_answers(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()

    def _certified(self, frames: list[bytes]) -> str | None:
        """The guid of a hypothesis case's startup, when a certificate can name it."""
        for data in frames[:1]:
            with contextlib.suppress(ValueError, UnicodeDecodeError, RecursionError):
                body = json.loads(data)
                guid = body.get("guid") if isinstance(body, dict) else None
                if isinstance(guid, str) and guid.isprintable() and 0 < len(guid) <= 64:
                    with contextlib.suppress(UnicodeEncodeError):
                        guid.encode()
                        return guid
        return None

    async def send(self, writer: asyncio.StreamWriter, frames: list[bytes]) -> None:
        with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, RuntimeError):
            for data in frames:
                writer.write(data)
                async with asyncio.timeout(SEND_TIMEOUT):
                    await writer.drain()
                self.stats["frames_sent"] += 1
                self.stats["bytes_sent"] += len(data)

    async def read_answers(self, reader: asyncio.StreamReader) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT):
                while True:
                    message = await read_message(reader)
                    if message is None:
                        self.stats["closed_by_server"] += 1
                        return
                    self.note(message)
        except TimeoutError:
            self.stats["left_open"] += 1
        except ProtocolError as exc:  # the server wrote something that is not a message
            self.stats["server_malformed"] += 1
            print(f"server sent a malformed line: {exc}", file=sys.stderr, flush=True)
        except (OSError, ssl.SSLError):
            self.stats["reset_by_server"] += 1

    def note(self, message: Message | UnknownMessage) -> None:
        if isinstance(message, Error):
            self.answers[f"error_{message.code}"] += 1
        elif isinstance(message, UnknownMessage):
            self.stats["server_unknown_type"] += 1
        else:
            self.answers[str(message.TYPE)] += 1

    async def worker(self) -> None:
        while time.monotonic() < self.deadline:
            await self.connection()

    async def idler(self) -> None:
        """One idle connection at a time: open, dribble or say nothing, until the server closes
        it (or the run ends)."""
        while time.monotonic() < self.deadline:
            kind = self.rng.choice(KINDS)
            opened = await self.open(kind, str(uuid.uuid4()))
            self.stats[f"idle_{kind}"] += 1
            if opened is None:
                await asyncio.sleep(0.5)
                continue
            reader, writer = opened
            started = time.monotonic()
            dribble = self.rng.choice([b"", b"", b'{"type":"sta', b" ", b"\n"])
            try:
                while time.monotonic() < self.deadline:
                    if dribble:
                        writer.write(dribble)
                    try:
                        async with asyncio.timeout(1.0):
                            if not await reader.read(4096):
                                break
                    except TimeoutError:
                        continue
            except (OSError, ssl.SSLError):
                pass
            finally:
                closed_by_server = time.monotonic() < self.deadline
                if closed_by_server:
                    self.idle_held.append(time.monotonic() - started)
                writer.close()

    async def run(self, seconds: float, workers: int, idle: int) -> dict[str, Any]:
        self.deadline = time.monotonic() + seconds
        started = time.monotonic()
        tasks = [self.worker() for _ in range(workers)] + [self.idler() for _ in range(idle)]
        await asyncio.gather(*tasks)
        connections = sum(v for k, v in self.stats.items() if k.startswith("connections_"))
        return {
            "seconds": round(time.monotonic() - started, 1),
            "connections": connections,
            "idle_connections": sum(v for k, v in self.stats.items() if k.startswith("idle_")),
            "idle_held_max_s": round(max(self.idle_held, default=0.0), 1),
            "frames_sent": self.stats["frames_sent"],
            "bytes_sent": self.stats["bytes_sent"],
            "stats": dict(sorted(self.stats.items())),
            "answers": dict(sorted(self.answers.items())),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of the server")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workers", type=int, default=16, help="connections at once")
    parser.add_argument("--idle", type=int, default=100, help="idle connections at once")
    parser.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4)))
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    redis = redis_from_url(os.environ["MSRV_REDIS_URL"])
    try:
        ids = await Identities.of_namespace(redis, args.namespace)
    finally:
        await redis.aclose()
    fuzzer = Fuzzer(host, int(port), ids, args.seed)
    result = await fuzzer.run(args.seconds, args.workers, args.idle)
    print(RESULT + json.dumps({"seed": args.seed, **result}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
