"""Join tokens: the string form, and their life in Redis (create, list, revoke, consume, expiry),
against fakeredis; the race for a last use also against a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

import fakeredis
import pytest

from common.ca import load_ca
from common.connection import redis_from_url
from common.errors import ValidationError
from common.keys import Keys
from common.tokens import (
    JoinToken,
    TokenCheck,
    UnknownTokenError,
    consume_token,
    create_token,
    list_tokens,
    parse_token,
    revoke_token,
)

KEYS = Keys("unit")
FP = "ab" * 32
GOOD = f"lb1:{FP}:0123abcd.{'5' * 32}"


def test_parse_a_good_token() -> None:
    token = parse_token(f"  {GOOD}\n")
    assert token == JoinToken(f"sha256:{FP}", "0123abcd", "5" * 32)
    assert token.as_text() == GOOD
    assert "5" * 32 not in repr(token) and "5" * 32 not in str(token)


SECRET = "f" * 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "must start with 'lb1:'"),
        (f"lb2:{FP}:0123abcd.{SECRET}", "must start with 'lb1:'"),
        (f"LB1:{FP}:0123abcd.{SECRET}", "must start with 'lb1:'"),
        (f"{FP}:0123abcd.{SECRET}", "must start with 'lb1:'"),
        (f"lb1:{FP}0123abcd.{SECRET}", "two ':' separators"),
        (f"lb1:{FP}:0123abcd:{SECRET}", "two ':' separators"),
        (f"lb1:sha256:{FP}:0123abcd.{SECRET}", "two ':' separators"),
        (f"lb1:{FP[:-2]}:0123abcd.{SECRET}", "64 hex characters, not 62"),
        (f"lb1:{FP}00:0123abcd.{SECRET}", "64 hex characters, not 66"),
        (f"lb1::0123abcd.{SECRET}", "64 hex characters, not 0"),
        (f"lb1:{'g' * 64}:0123abcd.{SECRET}", "fingerprint must be lowercase hex"),
        (f"lb1:{FP.upper()}:0123abcd.{SECRET}", "fingerprint must be lowercase hex"),
        (f"lb1:{FP}:0123abcd{SECRET}", "expected <id>.<secret>"),
        (f"lb1:{FP}:", "expected <id>.<secret>"),
        (f"lb1:{FP}:0123abc.{SECRET}", "token id must be 8 lowercase hex"),
        (f"lb1:{FP}:0123abcde.{SECRET}", "token id must be 8 lowercase hex"),
        (f"lb1:{FP}:0123ABCD.{SECRET}", "token id must be 8 lowercase hex"),
        (f"lb1:{FP}:.{SECRET}", "token id must be 8 lowercase hex"),
        (f"lb1:{FP}:0123abcd.", "secret must be 32 lowercase hex"),
        (f"lb1:{FP}:0123abcd.{SECRET[:-1]}", "secret must be 32 lowercase hex"),
        (f"lb1:{FP}:0123abcd.{SECRET}f", "secret must be 32 lowercase hex"),
        (f"lb1:{FP}:0123abcd.{SECRET.upper()}", "secret must be 32 lowercase hex"),
        (f"lb1:{FP}:0123abcd.{SECRET[:-1]}z", "secret must be 32 lowercase hex"),
        (f"lb1:{FP}:0123abcd.{SECRET}.{SECRET}", "secret must be 32 lowercase hex"),
        (f"lb1:{FP}:0123abcd.{SECRET[:16]} {SECRET[16:]}", "secret must be 32 lowercase hex"),
    ],
)
def test_a_malformed_token_is_refused_with_one_line_that_never_shows_the_secret(
    text: str, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_token(text)
    shown = str(caught.value)
    assert message in shown and "\n" not in shown
    assert SECRET[:16] not in shown and SECRET.upper()[:16] not in shown


def run(work: object) -> None:
    """Run `work(redis)` against a fresh fakeredis."""

    async def main() -> None:
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        try:
            await work(redis)  # type: ignore[operator]
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_create_makes_the_ca_and_keeps_only_a_hash_of_the_secret() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        assert await load_ca(redis, KEYS) is None
        text, info = await create_token(redis, KEYS, ttl_seconds=3600, uses=1)
        token = parse_token(text)
        ca = await load_ca(redis, KEYS)
        assert ca is not None and token.ca_fingerprint == ca.fingerprint
        assert token.id == info.id and info.uses_left == 1 and info.state == "valid"
        assert abs(info.expires - (time.time() + 3600)) < 5
        stored = await redis.hgetall(KEYS.token(token.id))
        assert stored["hash"] == hashlib.sha256(token.secret.encode()).hexdigest()
        assert token.secret not in str(stored)
        assert await redis.expiretime(KEYS.token(token.id)) == info.expires
        assert await redis.smembers(KEYS.tokens) == {token.id}
        # a second token: the same CA, another id and secret
        other = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=2))[0])
        assert other.ca_fingerprint == token.ca_fingerprint
        assert (other.id, other.secret) != (token.id, token.secret)

    run(work)


@pytest.mark.parametrize(("ttl", "uses"), [(0, 1), (-5, 1), (366 * 86400, 1), (60, 0)])
def test_create_refuses_a_bad_ttl_or_uses(ttl: int, uses: int) -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        with pytest.raises(ValidationError):
            await create_token(redis, KEYS, ttl_seconds=ttl, uses=uses)
        assert await redis.keys("*") == []  # not even the CA

    run(work)


def test_a_token_is_single_use_by_default() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=1))[0])
        assert await consume_token(redis, KEYS, token.id, token.secret) == TokenCheck.OK
        assert await consume_token(redis, KEYS, token.id, token.secret) == TokenCheck.USED_UP
        [info] = await list_tokens(redis, KEYS)
        assert (info.uses_left, info.state) == (0, "used up")

    run(work)


def test_the_same_holder_asking_again_spends_no_other_use() -> None:
    """An agent that retries its enrollment (a lost reply, a crash) with the same pending key."""

    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=1))[0])
        agent = "guid-1:" + "ab" * 32
        assert await consume_token(redis, KEYS, token.id, token.secret, agent) == TokenCheck.OK
        assert await consume_token(redis, KEYS, token.id, token.secret, agent) == TokenCheck.OK
        other = "guid-2:" + "cd" * 32
        assert await consume_token(redis, KEYS, token.id, token.secret, other) == "used_up"
        assert await consume_token(redis, KEYS, token.id, "0" * 32, agent) == "bad_secret"
        [info] = await list_tokens(redis, KEYS)
        assert info.uses_left == 0

    run(work)


def test_a_token_with_n_uses_serves_n_agents() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=3))[0])
        results = [await consume_token(redis, KEYS, token.id, token.secret) for _ in range(4)]
        assert results == [TokenCheck.OK] * 3 + [TokenCheck.USED_UP]

    run(work)


def test_a_wrong_secret_or_unknown_id_uses_nothing() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=1))[0])
        wrong = "0" * 32 if token.secret != "0" * 32 else "1" * 32
        assert await consume_token(redis, KEYS, token.id, wrong) == TokenCheck.BAD_SECRET
        assert await consume_token(redis, KEYS, token.id, "") == TokenCheck.BAD_SECRET
        unknown = "ffffffff" if token.id != "ffffffff" else "eeeeeeee"
        assert await consume_token(redis, KEYS, unknown, token.secret) == TokenCheck.UNKNOWN
        # an id in capitals (an id of digits only has none: one made up)
        capitals = token.id.upper() if token.id.upper() != token.id else "A" + token.id[1:]
        for bad_id in ("", "x", "*", f"{token.id}:x", capitals):
            assert await consume_token(redis, KEYS, bad_id, token.secret) == TokenCheck.UNKNOWN
        assert await consume_token(redis, Keys("other"), token.id, token.secret) == "unknown"
        assert await consume_token(redis, KEYS, token.id, token.secret) == TokenCheck.OK

    run(work)


def test_a_revoked_token_is_refused_as_revoked_until_it_expires() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=600, uses=5))[0])
        expires = await redis.expiretime(KEYS.token(token.id))
        await revoke_token(redis, KEYS, token.id)
        await revoke_token(redis, KEYS, token.id)  # again: no harm
        assert await consume_token(redis, KEYS, token.id, token.secret) == TokenCheck.REVOKED
        # a wrong secret is told as such, revoked or not: the id alone tells nothing more
        assert await consume_token(redis, KEYS, token.id, "0" * 32) == TokenCheck.BAD_SECRET
        assert await redis.expiretime(KEYS.token(token.id)) == expires  # TTL kept
        [info] = await list_tokens(redis, KEYS)
        assert (info.revoked, info.uses_left, info.state) == (True, 5, "revoked")

    run(work)


@pytest.mark.parametrize("token_id", ["0123abcd", "nothex!!", "", "a:b"])
def test_revoking_an_unknown_token_is_a_validation_error(token_id: str) -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        with pytest.raises(UnknownTokenError, match="no join token"):
            await revoke_token(redis, KEYS, token_id)
        assert await redis.keys("*") == []

    run(work)


def test_an_expired_token_is_gone_and_dropped_from_the_list() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        old = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=1))[0])
        new = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=1))[0])
        await redis.expireat(KEYS.token(old.id), int(time.time()) - 1)  # its time has come
        assert await consume_token(redis, KEYS, old.id, old.secret) == TokenCheck.UNKNOWN
        assert [t.id for t in await list_tokens(redis, KEYS)] == [new.id]
        assert await redis.smembers(KEYS.tokens) == {new.id}
        with pytest.raises(UnknownTokenError):
            await revoke_token(redis, KEYS, old.id)

    run(work)


def test_a_one_second_token_expires_by_redis_ttl() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=1, uses=1))[0])
        assert 0 < await redis.pttl(KEYS.token(token.id)) <= 1000 + 1000  # EXPIREAT: whole s
        await redis.pexpire(KEYS.token(token.id), 1)
        await asyncio.sleep(0.01)
        assert await consume_token(redis, KEYS, token.id, token.secret) == TokenCheck.UNKNOWN
        assert await list_tokens(redis, KEYS) == []

    run(work)


def test_two_racing_for_the_last_use_one_wins() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        token = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=1))[0])
        results = await asyncio.gather(
            consume_token(redis, KEYS, token.id, token.secret),
            consume_token(redis, KEYS, token.id, token.secret),
        )
        assert sorted(results) == [TokenCheck.OK, TokenCheck.USED_UP]

    run(work)


def test_many_clients_of_a_real_redis_race_for_three_uses(redis_url: str, namespace: str) -> None:
    keys = Keys(namespace)

    async def main() -> None:
        clients = [redis_from_url(redis_url) for _ in range(12)]
        try:
            text, _ = await create_token(clients[0], keys, ttl_seconds=60, uses=3)
            token = parse_token(text)
            results = await asyncio.gather(
                *(consume_token(c, keys, token.id, token.secret) for c in clients)
            )
            assert results.count(TokenCheck.OK) == 3
            assert results.count(TokenCheck.USED_UP) == 9
            [info] = await list_tokens(clients[0], keys)
            assert info.uses_left == 0
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(main())


def test_nothing_shown_or_logged_holds_the_secret_or_its_hash(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def work(redis: fakeredis.FakeAsyncRedis) -> None:
        with caplog.at_level(logging.DEBUG):
            token = parse_token((await create_token(redis, KEYS, ttl_seconds=60, uses=2))[0])
            await consume_token(redis, KEYS, token.id, token.secret)
            await consume_token(redis, KEYS, token.id, "0" * 32)
            await revoke_token(redis, KEYS, token.id)
            shown = repr(await list_tokens(redis, KEYS))
        shown += str([t.as_json() for t in await list_tokens(redis, KEYS)])
        digest = hashlib.sha256(token.secret.encode()).hexdigest()
        assert token.id in caplog.text and token.id in shown
        for secret in (token.secret, digest):
            assert secret not in caplog.text and secret not in shown

    run(work)
