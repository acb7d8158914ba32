"""Which certificates were issued to each host, and which are revoked.

`ns:certs:<guid>` (hash): serial -> expiry of every certificate issued to that guid, written
by the server that signs it (`record_issued`, at enrollment and renewal). `ns:revoked` (hash):
serial -> expiry of the revoked certificates. Serials are lowercase hex (common.tls.serial_hex),
expiries Unix seconds.

Revocation is part of retiring a host: `msctl hosts remove ID` (common.records.remove_host,
script REMOVE_HOST in common.host_scripts) moves, in the same atomic script, every entry of the
host's `ns:certs:<guid>` into `ns:revoked`, deletes `ns:certs:<guid>` and publishes
`hosts.revoked` with the guid, so that a server holding a session of it closes it. Servers
refuse a startup whose certificate `is_revoked` (script HOST_ID).

Pruning: a certificate past its expiry is refused by TLS anyway, so its entry is no longer
needed. REMOVE_HOST drops the entries of `ns:revoked` that are past expiry (the only place
that hash grows, so it holds only revoked certificates still valid, plus those that expired
since the last removal), and `record_issued` drops the expired entries of the guid's own hash.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from common.keys import Keys

# KEYS: the guid's certificates. ARGV: serial, expiry, now (Unix seconds).
# Records the certificate and drops the guid's entries that expired.
_RECORD_ISSUED = """
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local expires = tonumber(entries[i + 1])
  if expires and expires <= tonumber(ARGV[3]) then redis.call('HDEL', KEYS[1], entries[i]) end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


async def record_issued(
    redis: aioredis.Redis, keys: Keys, guid: str, serial: str, expires: float
) -> None:
    """Note that the certificate `serial` (lowercase hex), valid until `expires` (Unix
    seconds), was issued to `guid`: removing the host revokes it."""
    script = redis.register_script(_RECORD_ISSUED)
    await script(
        keys=[keys.host_certificates(guid)], args=[serial, f"{expires:.3f}", f"{time.time():.3f}"]
    )


async def is_revoked(redis: aioredis.Redis, keys: Keys, serial: str) -> bool:
    """Whether the certificate `serial` (lowercase hex) was revoked (and not yet pruned,
    which happens only after its expiry)."""
    return bool(await redis.hexists(keys.revoked, serial))
