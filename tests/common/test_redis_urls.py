"""Redis URLs: `redacted` hides the password wherever a URL is shown, and `redis_from_url` takes
user:password and rediss:// URLs (parsed by redis-py only)."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import SSLConnection

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
