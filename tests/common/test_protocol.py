import asyncio

import pytest

from common import protocol
from common.errors import ProtocolError
from common.protocol import ErrorCode, MsList, Startup, UnknownMessage, decode, encode

STARTUP = Startup(
    guid="g-1",
    name="hv1",
    host_type="routing",
    zone="z1",
    cluster="c1",
    ms_list=["a", "b"],
    algorithm=None,
    dialled="a",
)


@pytest.mark.parametrize(
    "message",
    [
        STARTUP,
        protocol.Ready(1, "a", 5, 3, 0),
        MsList(["b", "a"], "roundrobin", 10, 7, 5, 3),
        MsList(["b", "a"], "roundrobin", 10, 7, 5, 3, delay=1.25),
        protocol.Ack(7, ["b", "a"], "roundrobin"),
        protocol.Ping(3),
        protocol.Pong(3),
        protocol.Error("unavailable", "redis is down", retryable=True),
        protocol.Ca("-----BEGIN CERTIFICATE-----\n..."),
        protocol.Enroll("g-1", "0a1b2c3d", "f" * 32, "-----BEGIN CERTIFICATE REQUEST-----"),
        protocol.Enrolled("cert", "ca"),
        protocol.Renew("csr"),
        protocol.Renewed("cert", "ca"),
    ],
)
def test_every_message_round_trips_as_one_line(message):
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == message


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"\xff\xfe garbage", ErrorCode.BAD_JSON),
        (b"{not json", ErrorCode.BAD_JSON),
        (b"[1, 2]", ErrorCode.BAD_MESSAGE),
        (b'{"no": "type"}', ErrorCode.BAD_MESSAGE),
        (b'{"type": "ack"}', ErrorCode.BAD_MESSAGE),
        (b'{"type": "ack", "version": "7"}', ErrorCode.BAD_MESSAGE),
        (b'{"type": "ack", "version": true}', ErrorCode.BAD_MESSAGE),
        (
            b'{"type": "ms_list", "ms_list": ["a", 1], "algorithm": "s",'
            b' "check_interval": 0, "version": 1}',
            ErrorCode.BAD_MESSAGE,
        ),
        (b'{"type": "startup", "name": "x"}', ErrorCode.BAD_MESSAGE),
        (b"x" * (protocol.MAX_LINE + 1), ErrorCode.LINE_TOO_LONG),
    ],
)
def test_malformed_lines_raise_with_a_code(line, code):
    with pytest.raises(ProtocolError) as info:
        decode(line)
    assert info.value.code == code


OLD_MS_LIST = (
    b'{"type":"ms_list","ms_list":["b","a"],"algorithm":"static","check_interval":0,'
    b'"version":4,"ping_interval":5,"ping_timeout":3'
)


def test_an_ms_list_without_a_delay_decodes_with_delay_0():
    assert decode(OLD_MS_LIST + b"}") == MsList(["b", "a"], "static", 0, 4, 5, 3, delay=0.0)
    assert decode(OLD_MS_LIST + b',"delay":2}').delay == 2


@pytest.mark.parametrize("delay", [b"-0.5", b"true", b'"1"', b"NaN", b"Infinity", b"1e300"])
def test_an_ms_list_delay_is_a_finite_number_not_below_zero(delay):
    with pytest.raises(ProtocolError) as info:
        decode(OLD_MS_LIST + b',"delay":' + delay + b"}")
    assert info.value.code == ErrorCode.BAD_MESSAGE


def test_an_enroll_keeps_its_secret_out_of_repr_and_its_guid_within_a_certificate_name():
    enroll = protocol.Enroll("g-1", "0a1b2c3d", "s3cr3t" * 5, "csr")
    assert "s3cr3t" not in repr(enroll)
    too_long = encode(protocol.Enroll("g" * 65, "0a1b2c3d", "f" * 32, "csr"))
    with pytest.raises(ProtocolError, match="longer than 64 characters") as info:
        decode(too_long)
    assert info.value.code == ErrorCode.BAD_MESSAGE


def test_startup_without_guid_names_the_field():
    body = encode(STARTUP).replace(b'"guid":"g-1",', b"")
    with pytest.raises(ProtocolError, match="missing field 'guid'"):
        decode(body)


def test_unknown_types_are_returned_for_logging_not_raised():
    assert decode(b'{"type": "future.thing", "x": 1}') == UnknownMessage(
        "future.thing", {"type": "future.thing", "x": 1}
    )


def test_read_message_enforces_the_line_limit():
    async def scenario(data: bytes):
        reader = asyncio.StreamReader(limit=protocol.READER_LIMIT)
        reader.feed_data(data)
        reader.feed_eof()
        return [await protocol.read_message(reader) for _ in range(2)]

    exact = b'{"type":"ping","seq":1,"pad":"' + b"x" * (protocol.MAX_LINE - 32) + b'"}'
    assert len(exact) == protocol.MAX_LINE
    first, end = asyncio.run(scenario(exact + b"\n"))
    assert first == protocol.Ping(1) and end is None
    with pytest.raises(ProtocolError) as info:
        asyncio.run(scenario(b"x" * (1 << 20) + b"\n"))
    assert info.value.code == ErrorCode.LINE_TOO_LONG
