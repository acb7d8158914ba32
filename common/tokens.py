"""Join tokens, as k3s and kubeadm do it: one string that names the CA and carries a secret.

    lb1:<sha256 hex of the CA's DER certificate>:<token id>.<secret>

The id (8 hex characters) is public: `msctl token list` shows it, `msctl token revoke` takes
it. The secret (32 hex characters, 128 bits from `secrets`) is shown once, by `msctl token
create`, and never stored: Redis keeps a SHA-256 of it (a random 128-bit secret needs no slow
hash), in one hash per token that expires with the token (EXPIREAT), so an expired token is
simply gone. A set of ids lets `list_tokens` find them; ids whose hash is gone are dropped
from it as it lists.

A token's life: valid (uses left) -> used up (no use left) or revoked; either stays until its
expiry so that an attempt with it is told apart (and logged) rather than looking unknown.
`consume_token` is one Lua script: of two servers racing for a token's last use, one wins.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, cast

import redis.asyncio as aioredis

from common.ca import ensure_ca
from common.durability import confirm_replicated
from common.errors import ValidationError
from common.keys import Keys

logger = logging.getLogger(__name__)

PREFIX = "lb1:"
FINGERPRINT_PREFIX = "sha256:"
MAX_TTL_SECONDS = 365 * 86400

_HEX64 = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{8}")
_SECRET = re.compile(r"[0-9a-f]{32}")


class UnknownTokenError(ValidationError):
    """A token id that names no token (never created, or expired)."""


class TokenCheck(enum.StrEnum):
    """What `consume_token` found; only OK used the token up by one."""

    OK = "ok"
    UNKNOWN = "unknown"  # no such id, or expired and gone
    BAD_SECRET = "bad_secret"
    USED_UP = "used_up"
    REVOKED = "revoked"


@dataclass(frozen=True)
class JoinToken:
    """A parsed token. `ca_fingerprint` is `sha256:<hex>`, as common.ca.fingerprint makes it;
    the secret stays out of repr (and so out of logs and tracebacks)."""

    ca_fingerprint: str
    id: str
    secret: str = field(repr=False)

    def as_text(self) -> str:
        """The token string (with the secret: `str()` and `repr()` leave it out)."""
        fingerprint = self.ca_fingerprint.removeprefix(FINGERPRINT_PREFIX)
        return f"{PREFIX}{fingerprint}:{self.id}.{self.secret}"


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown of a token: never its secret or the secret's hash."""

    id: str
    expires: int  # Unix seconds
    uses_left: int
    revoked: bool
    created: float  # Unix seconds

    @property
    def state(self) -> str:
        if self.revoked:
            return "revoked"
        return "valid" if self.uses_left > 0 else "used up"

    def as_json(self) -> dict[str, Any]:
        """The `msctl token list --json` shape."""
        return {
            "id": self.id,
            "expires": self.expires,
            "uses_left": self.uses_left,
            "state": self.state,
            "created": self.created,
        }


def parse_token(text: str) -> JoinToken:
    """Raise ValidationError with one line naming the part at fault (never echoing the text,
    which may hold the secret)."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise ValidationError(f"join token: must start with {PREFIX!r}")
    parts = text.removeprefix(PREFIX).split(":")
    if len(parts) != 2:
        raise ValidationError(
            "join token: expected lb1:<CA fingerprint>:<id>.<secret> (two ':' separators)"
        )
    fingerprint, credentials = parts
    if len(fingerprint) != 64:
        raise ValidationError(
            f"join token: the CA fingerprint must be 64 hex characters, not {len(fingerprint)}"
        )
    if not _HEX64.fullmatch(fingerprint):
        raise ValidationError("join token: the CA fingerprint must be lowercase hex")
    token_id, dot, secret = credentials.partition(".")
    if not dot:
        raise ValidationError("join token: expected <id>.<secret> after the CA fingerprint")
    if not _ID.fullmatch(token_id):
        raise ValidationError("join token: the token id must be 8 lowercase hex characters")
    if not _SECRET.fullmatch(secret):
        raise ValidationError("join token: the secret must be 32 lowercase hex characters")
    return JoinToken(FINGERPRINT_PREFIX + fingerprint, token_id, secret)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


# KEYS: token hash, id set. ARGV: token id, secret hash, expires, uses, created.
# Returns 0 if the id is taken (the caller draws another), else 1.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'hash', ARGV[2], 'expires', ARGV[3], 'uses', ARGV[4],
           'created', ARGV[5])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
"""

# KEYS: token hash. ARGV: secret hash, holder ('' for none). Returns a TokenCheck value; only
# 'ok' changes anything. A holder that already used the token uses it again for nothing.
_CONSUME = """
local token = redis.call('HMGET', KEYS[1], 'hash', 'uses', 'revoked')
if not token[1] then return 'unknown' end
if token[1] ~= ARGV[1] then return 'bad_secret' end
if token[3] then return 'revoked' end
local holder = 'holder:' .. ARGV[2]
if ARGV[2] ~= '' and redis.call('HEXISTS', KEYS[1], holder) == 1 then return 'ok' end
if tonumber(token[2]) <= 0 then return 'used_up' end
redis.call('HINCRBY', KEYS[1], 'uses', -1)
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], holder, '1') end
return 'ok'
"""

# KEYS: token hash. ARGV: revoked at. Returns 0 for an unknown token. Keeps the TTL.
_REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'revoked', ARGV[1])
return 1
"""


async def create_token(
    redis: aioredis.Redis, keys: Keys, *, ttl_seconds: int, uses: int
) -> tuple[str, TokenInfo]:
    """A new token for the namespace's CA (created now if there is none): its string, shown
    once, and what may be shown of it later."""
    if not 1 <= ttl_seconds <= MAX_TTL_SECONDS:
        raise ValidationError(f"ttl: must be 1s to {MAX_TTL_SECONDS // 86400}d")
    if uses < 1:
        raise ValidationError("uses: must be at least 1")
    ca = await ensure_ca(redis, keys)
    script = redis.register_script(_CREATE)
    secret = secrets.token_hex(16)
    created = time.time()
    expires = int(created) + ttl_seconds
    while True:
        token_id = secrets.token_hex(4)
        args: list[str | float] = [token_id, _hash(secret), expires, uses, created]
        if await script(keys=[keys.token(token_id), keys.tokens], args=args):
            break
    # confirmed on a replica before it is shown: a token a failover lost would refuse every
    # agent given it
    await confirm_replicated(redis, keys, f"join token {token_id}")
    token = JoinToken(ca.fingerprint, token_id, secret)
    logger.info("join token %s created: %d use(s), expires at %d", token_id, uses, expires)
    return token.as_text(), TokenInfo(token_id, expires, uses, False, created)


async def list_tokens(redis: aioredis.Redis, keys: Keys) -> list[TokenInfo]:
    """The live tokens, oldest first (used up and revoked ones included, until they expire)."""
    ids = sorted(cast(set[str], await redis.smembers(keys.tokens)))
    async with redis.pipeline(transaction=False) as pipe:
        for token_id in ids:
            pipe.hgetall(keys.token(token_id))
        bodies = cast(list[dict[str, str]], await pipe.execute())
    gone = [token_id for token_id, body in zip(ids, bodies, strict=True) if not body]
    if gone:
        await redis.srem(keys.tokens, *gone)
    tokens = [
        TokenInfo(
            token_id,
            expires=int(body["expires"]),
            uses_left=int(body["uses"]),
            revoked="revoked" in body,
            created=float(body["created"]),
        )
        for token_id, body in zip(ids, bodies, strict=True)
        if body
    ]
    return sorted(tokens, key=lambda t: (t.created, t.id))


async def revoke_token(redis: aioredis.Redis, keys: Keys, token_id: str) -> None:
    """Mark the token revoked; it stays until its expiry, so a use of it is refused as revoked.
    Raises UnknownTokenError for an id that names no live token."""
    if _ID.fullmatch(token_id):
        script = redis.register_script(_REVOKE)
        if await script(keys=[keys.token(token_id)], args=[time.time()]):
            # a revocation a failover lost would make the token valid again
            await confirm_replicated(redis, keys, f"revocation of join token {token_id}")
            logger.info("join token %s revoked", token_id)
            return
    raise UnknownTokenError(f"no join token {token_id!r} (never created, or expired)")


async def consume_token(
    redis: aioredis.Redis, keys: Keys, token_id: str, secret: str, holder: str = ""
) -> TokenCheck:
    """Use the token once if its secret matches and it is neither revoked nor used up, all in
    one atomic step. The caller logs what it found (with the token id, never the secret).

    `holder` names who uses it (an enrollment: the guid and the hash of the CSR's public key):
    the same holder asking again (its agent retried after a lost reply or a crash, with the
    same pending key) is not charged another use, even when no use is left."""
    if not _ID.fullmatch(token_id):
        return TokenCheck.UNKNOWN
    # Not confirmed on a replica (an enrollment waits for no replica): a use a failover lost
    # leaves the token one more use (common.durability).
    script = redis.register_script(_CONSUME)
    found = await script(keys=[keys.token(token_id)], args=[_hash(secret), holder])
    return TokenCheck(found.decode() if isinstance(found, bytes) else found)
