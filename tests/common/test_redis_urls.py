"""Redis URLs: `redacted` hides the password wherever a URL is shown, and `redis_from_url` takes
user:password and rediss:// URLs (parsed by redis-py) and redis+sentinel:// URLs (parsed by
common.sentinel). What a client of a sentinel URL does against real sentinels is in
tests/msctl/test_sentinel_cli.py and tests/msrv/test_sentinel_failover.py."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection
from redis.asyncio.sentinel import SentinelConnectionPool

from common.connection import redacted, redis_from_url
from common.errors import ValidationError


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@10.0.0.1:6379/0", "redis://:***@10.0.0.1:6379/0"),
        ("redis://admin:s3cret@10.0.0.1:6379/0", "redis://admin:***@10.0.0.1:6379/0"),
        ("rediss://:s3cret@redis.example:6380/0", "rediss://:***@redis.example:6380/0"),
        ("rediss://admin:s3cret@redis.example/2", "rediss://admin:***@redis.example/2"),
        ("redis://admin:s3cret@[2001:db8::1]:6379", "redis://admin:***@[2001:db8::1]:6379"),
        ("redis://admin:s3%40cret@h", "redis://admin:***@h"),  # percent-escaped
        ("redis://admin:s3@c/ret@h/0", "redis://admin:***@h/0"),  # unescaped '@' and '/'
        ("redis://admin:s3:cret@h", "redis://admin:***@h"),
        ("redis://s3cret@h:6379", "redis://***@h:6379"),  # one word: a password to redis-cli
        ("redis://h/0?password=s3cret&db=1", "redis://h/0?password=***&db=1"),
        ("unix://:s3cret@/run/redis.sock?db=1", "unix://:***@/run/redis.sock?db=1"),
        ("redis:/:s3cret@h", "redis:***@h"),  # malformed, still hidden
    ],
)
def test_redacted_hides_the_password_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert "s3" not in shown


@pytest.mark.parametrize(
    "url",
    ["redis://10.0.0.1:6379/0", "rediss://redis.example:6380", "unix:///run/redis.sock", "x"],
)
def test_a_url_without_a_password_is_shown_as_it_is(url: str) -> None:
    assert redacted(url) == url


@pytest.mark.parametrize(
    ("url", "tls"),
    [("redis://admin:s3cret@10.0.0.1:6379/2", False), ("rediss://admin:s3cret@10.0.0.1/2", True)],
)
def test_redis_from_url_takes_user_password_and_tls_urls(url: str, tls: bool) -> None:
    client = redis_from_url(url, max_connections=4)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("admin", "s3cret", 2)
    assert (client.connection_pool.connection_class is SSLConnection) == tls
    plain = redis_from_url(url)
    assert plain.connection_pool.connection_kwargs["password"] == "s3cret"


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:s3cret@10.0.0.1:6379/0",  # the scheme
        "redis://admin:s3cret@10.0.0.1:63x79/0",  # the port
        "redis://admin:s3/cret@10.0.0.1/0",  # an unescaped '/': urllib quotes "s3" as the port
    ],
)
def test_a_bad_url_is_refused_without_showing_its_password(url: str) -> None:
    with pytest.raises(ValidationError) as refused:
        redis_from_url(url)
    message = str(refused.value)
    assert message.startswith(f"redis url {redacted(url)!r}: ")
    assert "s3" not in message and "cret" not in message


# -- redis+sentinel:// ----------------------------------------------------------------------------

SENTINEL_URL = (
    "redis+sentinel://admin:s3cret@10.0.0.1:26379,sentinel.example,[2001:db8::1]:26380/lab/2"
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (SENTINEL_URL, SENTINEL_URL.replace("s3cret", "***")),
        (
            "redis+sentinel://:s3cret@h:26379/lab?sentinel_password=s3cret2",
            "redis+sentinel://:***@h:26379/lab?sentinel_password=***",
        ),
        (
            "redis+sentinel://h:1,h:2/lab/0?sentinel_username=ops&sentinel_password=s3%2Fcret",
            "redis+sentinel://h:1,h:2/lab/0?sentinel_username=ops&sentinel_password=***",
        ),
    ],
)
def test_redacted_hides_both_passwords_of_a_sentinel_url(url: str, shown: str) -> None:
    assert redacted(url) == shown
    assert "s3" not in shown


def test_a_sentinel_url_gives_a_client_of_the_master_with_both_passwords() -> None:
    url = "redis+sentinel://admin:s3%40cret@10.0.0.1,[2001:db8::1]:26380/lab/2?sentinel_password=p%2Fw"
    client = redis_from_url(url, timeout=4.0, retries=1, max_connections=4)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and isinstance(pool, BlockingConnectionPool)
    assert (pool.service_name, pool.max_connections, pool.timeout) == ("lab", 4, 4.0)
    kwargs = pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("admin", "s3@cret", 2)
    assert kwargs["decode_responses"] and kwargs["socket_timeout"] == 4.0
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [
        ("10.0.0.1", 26379),  # Sentinel's port by default
        ("2001:db8::1", 26380),
    ]
    # the sentinels get their own password, never the master's
    assert {(s["password"], s.get("username")) for s in sentinels} == {("p/w", None)}
    plain = redis_from_url("redis+sentinel://h:26379/lab").connection_pool
    assert isinstance(plain, SentinelConnectionPool)
    assert not isinstance(plain, BlockingConnectionPool)
    assert plain.connection_kwargs["password"] is None
    assert plain.connection_kwargs["db"] == 0


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:s3cret@/lab", "no sentinel given"),
        (
            "redis+sentinel://:s3cret@h:2637x/lab",
            "sentinel entry 1 'h:2637x': port '2637x' is not a",
        ),
        ("redis+sentinel://:s3cret@h:1,,h:2/lab", "sentinel entry 2 is empty"),
        ("redis+sentinel://:s3cret@h:1,h:1/lab", "sentinel entry 2 'h:1' repeats entry 1"),
        ("redis+sentinel://:s3cret@h:99999/lab", "port 99999 is out of range"),
        ("redis+sentinel://:s3cret@h:26379", "no service name"),
        ("redis+sentinel://:s3cret@h:26379/", "no service name"),
        ("redis+sentinel://:s3cret@h:26379/lab/x", "db 'x': give a number"),
        ("redis+sentinel://:s3cret@h:26379/lab/0/1", "db '0/1': give a number"),
        ("redis+sentinel://:s3cret@h:26379/lab?password=s3cret", "option 'password' not taken"),
        ("redis+sentinel://:s3/cret@h:x/lab", "port 'x' is not a number"),  # unescaped '/'
    ],
)
def test_a_bad_sentinel_url_is_refused_in_one_line_without_its_password(
    url: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        redis_from_url(url)
    message = str(refused.value)
    assert message.startswith(f"redis url {redacted(url)!r}: ")
    assert reason in message
    assert "\n" not in message and "s3" not in message and "cret" not in message
