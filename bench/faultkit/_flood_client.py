"""The host-flood scenario's client process: one join token, HOSTS hosts enrolling with it.

    python bench/faultkit/_flood_client.py --address HOST:PORT --hosts 5000 [--at-once 32]
    (the join token in AGENTD_TOKEN, as `agentd swarm` takes it)

Each host does what agentd.trust does to enroll, on the wire: a connection that verifies
nothing and reads the server's CA certificate, checked against the token's fingerprint; a
connection verified against that CA: `enroll` (a fresh guid, the token's id and secret, a CSR
of a key made here) and the reply. A host that got a certificate then connects with it and
sends its `startup` (zone ZONE, the good agents' zone), as the agent does next, and hangs up
once it is `ready`: the host is registered and ranked.

At the end one line `flood-result {json}` goes to stderr: enrolled, refused (by error code),
failed otherwise (by reason), started up, and the time it took.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import ssl
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from agentd.keystore import csr_pem  # noqa: E402
from common import protocol  # noqa: E402
from common.ca import fingerprint, key_pem, new_key  # noqa: E402
from common.errors import ProtocolError  # noqa: E402
from common.protocol import Ca, Enroll, Enrolled, Error, Ready, Startup  # noqa: E402
from common.tls import (  # noqa: E402
    client_context_from_pem,
    enrollment_context,
    pinning_context,
)
from common.tokens import JoinToken, parse_token  # noqa: E402

RESULT = "flood-result "
ZONE = "default"
TIMEOUT = 10.0  # seconds for one host's whole enrollment


class Flood:
    def __init__(self, host: str, port: int, token: JoinToken) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.ca_pem: bytes | None = None
        self.counts: Counter[str] = Counter()
        self.seconds: list[float] = []

    async def exchange(
        self, context: ssl.SSLContext, hostname: str | None, request: protocol.Message | None
    ) -> tuple[protocol.Message | protocol.UnknownMessage | None, ...]:
        """Open a TLS connection, read the first line, send `request` and read the reply."""
        reader, writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=context,
            server_hostname=hostname,
            limit=protocol.READER_LIMIT,
        )
        try:
            first = await protocol.read_message(reader)
            if request is None or not isinstance(first, Ca):
                return (first,)
            writer.write(protocol.encode(request))
            await writer.drain()
            return first, await protocol.read_message(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def pinned_ca(self) -> bytes:
        (first,) = await self.exchange(pinning_context(), None, None)
        if not isinstance(first, Ca):
            raise ValueError(f"expected the CA certificate, got {first!r}")
        found = fingerprint(x509.load_pem_x509_certificate(first.certificate.encode()))
        if found != self.token.ca_fingerprint:
            raise ValueError(f"the server's CA is {found}, the token names another")
        return first.certificate.encode()

    async def one(self) -> None:
        guid = str(uuid.uuid4())
        started = time.monotonic()
        try:
            async with asyncio.timeout(TIMEOUT):
                ca_pem = await self.pinned_ca()
                key = new_key()
                request = Enroll(
                    guid, self.token.id, self.token.secret, csr_pem(key, guid).decode()
                )
                replies = await self.exchange(enrollment_context(ca_pem), self.host, request)
                reply = replies[-1]
                if isinstance(reply, Error):
                    self.counts[f"refused_{reply.code}"] += 1
                    return
                if not isinstance(reply, Enrolled):
                    self.counts[f"failed_reply_{type(reply).__name__}"] += 1
                    return
                self.counts["enrolled"] += 1
                await self.start_up(guid, reply, key_pem(key))
        except (OSError, ssl.SSLError, ValueError, ProtocolError) as exc:
            self.counts[f"failed_{type(exc).__name__}"] += 1
        except TimeoutError:
            self.counts["failed_timeout"] += 1
        finally:
            self.seconds.append(time.monotonic() - started)

    async def start_up(self, guid: str, enrolled: Enrolled, key: bytes) -> None:
        """What the agent does next: a session with its new certificate, `startup`, `ready`."""
        context = client_context_from_pem(enrolled.ca.encode(), enrolled.certificate.encode(), key)
        reader, writer = await asyncio.open_connection(
            self.host,
            self.port,
            ssl=context,
            server_hostname=self.host,
            limit=protocol.READER_LIMIT,
        )
        try:
            address = f"{self.host}:{self.port}"
            startup = Startup(
                guid, f"flood-{guid[:8]}", "routing", ZONE, "", [address], None, address
            )
            writer.write(protocol.encode(startup))
            await writer.drain()
            reply = await protocol.read_message(reader)
            self.counts["started_up" if isinstance(reply, Ready) else "startup_refused"] += 1
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def run(self, hosts: int, at_once: int) -> dict[str, object]:
        gate = asyncio.Semaphore(at_once)

        async def gated() -> None:
            async with gate:
                await self.one()

        started = time.monotonic()
        await asyncio.gather(*(gated() for _ in range(hosts)))
        took = time.monotonic() - started
        ordered = sorted(self.seconds)
        return {
            "hosts": hosts,
            "seconds": round(took, 1),
            "per_second": round(hosts / took, 1),
            "enrolled": self.counts["enrolled"],
            "refused": sum(v for k, v in self.counts.items() if k.startswith("refused_")),
            "failed": sum(v for k, v in self.counts.items() if k.startswith("failed_")),
            "started_up": self.counts["started_up"],
            "host_s_p50": round(ordered[len(ordered) // 2], 3) if ordered else None,
            "host_s_max": round(ordered[-1], 3) if ordered else None,
            "counts": dict(sorted(self.counts.items())),
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", required=True, help="HOST:PORT of the server")
    parser.add_argument("--hosts", type=int, default=5000)
    parser.add_argument("--at-once", type=int, default=32, help="enrollments in flight")
    args = parser.parse_args()
    host, _, port = args.address.rpartition(":")
    flood = Flood(host, int(port), parse_token(os.environ["AGENTD_TOKEN"]))
    result = await flood.run(args.hosts, args.at_once)
    print(RESULT + json.dumps(result), file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
