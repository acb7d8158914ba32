"""CSRs that parse but whose key cannot be used, against a live server (bench/faults.py
wire-fuzz: an `enroll` whose CSR's key was off the curve logged a traceback, "ValueError:
Invalid key", and a `renew` would have ended the session that sent it).

cryptography reads a CSR's key only when it is used: a point off the curve raises ValueError,
an unknown key type or curve UnsupportedAlgorithm, a version other than 1 InvalidVersion; of
20,000 CSRs with a few bytes changed a third got past the checks that way. Each must be
refused as bad_csr, without a traceback, without using the token, and a session that asks for a
renewal with one goes on.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import Callable

import pytest

from agentd.keystore import csr_pem
from common.ca import CsrError, csr_key, new_key
from common.protocol import Ca, Enroll, Error, ErrorCode, Ping, Pong, Renew
from common.tokens import create_token, list_tokens, parse_token
from tests.support.fleet import fleet

BEGIN, END = "-----BEGIN CERTIFICATE REQUEST-----", "-----END CERTIFICATE REQUEST-----"
POINT = b"\x03\x42\x00\x04"  # an uncompressed P-256 point's BIT STRING header, in the DER


def _pem(der: bytes) -> bytes:
    body = base64.encodebytes(der).decode()
    return (
        f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n".encode()
    )


def _der(guid: str) -> bytearray:
    lines = csr_pem(new_key(), guid).decode().splitlines()
    return bytearray(base64.b64decode("".join(lines[1:-1])))


def off_the_curve(guid: str) -> bytes:
    """A CSR whose key's X coordinate has one byte changed: no longer a point of the curve."""
    der = _der(guid)
    at = der.index(POINT) + len(POINT) + 5
    der[at] ^= 0x5A
    return _pem(bytes(der))


def unknown_curve(guid: str) -> bytes:
    """A CSR whose key names a curve that does not exist (prime256v1's OID, one arc changed)."""
    der = _der(guid)
    p256 = bytes.fromhex("2a8648ce3d030107")
    at = der.index(p256)
    der[at + 7] = 0x4B
    return _pem(bytes(der))


def wrong_version(guid: str) -> bytes:
    der = _der(guid)
    at = der.index(bytes.fromhex("020100"))  # version INTEGER 0 (v1)
    der[at + 2] = 0x4D
    return _pem(bytes(der))


MANGLED: dict[str, Callable[[str], bytes]] = {
    "off the curve": off_the_curve,
    "unknown curve": unknown_curve,
    "wrong version": wrong_version,
}


@pytest.mark.parametrize("mangle", list(MANGLED))
def test_csr_key_refuses_what_it_cannot_use(mangle: str) -> None:
    with pytest.raises(CsrError, match=r"^csr: "):
        csr_key(MANGLED[mangle]("g-1"))


def test_csr_key_refuses_bytes_changed_anywhere() -> None:
    """Whatever a few changed bytes make of a CSR, csr_key refuses it with CsrError or takes
    it, never raises anything else."""
    rng = random.Random(16)
    good = _der("g-1")
    for _ in range(2000):
        der = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            der[rng.randrange(len(der))] = rng.randrange(256)
        with contextlib.suppress(CsrError):
            csr_key(_pem(bytes(der)))


def test_unusable_csrs_are_refused_and_the_session_goes_on(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            (server,) = f.servers
            await f.set("host", server.address)
            text, _ = await create_token(f.redis, f.keys, ttl_seconds=600, uses=1)
            parsed = parse_token(text)
            for name, mangle in MANGLED.items():
                client = await f.connect(0, certificate=False)
                assert isinstance(await client.next(), Ca)
                guid = f"g-{name.replace(' ', '-')}"
                await client.send(Enroll(guid, parsed.id, parsed.secret, mangle(guid).decode()))
                error = await client.wait_error_and_close()
                assert error.code == ErrorCode.BAD_CSR, (name, error)
            (info,) = await list_tokens(f.redis, f.keys)
            assert info.uses_left == 1  # no use spent on a CSR that cannot be signed
            agent = await f.connect(0, "g-renewing")
            await agent.startup(zone="z1")
            for mangle in MANGLED.values():
                await agent.send(Renew(mangle("g-renewing").decode()))
            await agent.send(Ping(41))
            assert await agent.next() == Pong(41)  # nothing refused: the session goes on
            await server.wait_for("renewal not done", count=len(MANGLED))
            assert not any(isinstance(m, Error) for m in agent.received)
            assert not server.matching("Traceback|internal error")

    asyncio.run(scenario())
