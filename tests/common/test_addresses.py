import pytest

from common.addresses import Address, format_address_list, parse_address, parse_address_list
from common.errors import ValidationError


def test_the_design_example_is_normalised():
    parsed = parse_address_list("10.0.0.1, 10.0.0.2:8251,[2001:db8::1]:8250")
    assert format_address_list(parsed) == "10.0.0.1,10.0.0.2:8251,[2001:db8::1]:8250"
    assert parsed[2] == Address("2001:db8::1", 8250)


@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("MS-1.Example.COM", "ms-1.example.com"),
        ("ms1.example.com.", "ms1.example.com"),
        ("[2001:DB8:0:0::1]", "[2001:db8::1]"),
        ("[::1]:9", "[::1]:9"),
        (" 10.1.1.1:65535 ", "10.1.1.1:65535"),
        ("localhost:1", "localhost:1"),
    ],
)
def test_entries_are_normalised(text, normal):
    assert str(parse_address(text)) == normal


@pytest.mark.parametrize(
    ("csv", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a,,b", "entry 2 is empty"),
        ("a,", "entry 2 is empty"),
        ("a,a", "entry 2 'a' repeats entry 1"),
        ("a, A.", "entry 2 'A.' repeats entry 1"),
        ("a,a:8250", "repeats entry 1"),
        ("[::1],[0:0::1]", "repeats entry 1"),
        ("a:0", "port 0 is out of range"),
        ("a:70000", "port 70000 is out of range"),
        ("a:x", "port 'x' is not a number"),
        ("bad host", "'bad host': not a valid hostname"),
        ("[::1", "missing closing bracket"),
        ("::1", "must be in brackets"),
        ("[::1]:", "port '' is not a number"),
        ("[zz::1]", "not a valid IPv6 address"),
        ("300.1.1.1", "not a valid IPv4 address"),
        ("-a.example", "not a valid hostname"),
        ("a" * 64, "not a valid hostname"),
    ],
)
def test_bad_lists_name_the_entry_at_fault(csv, fragment):
    with pytest.raises(ValidationError) as info:
        parse_address_list(csv)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_distinct_ports_of_one_host_are_not_duplicates():
    assert len(parse_address_list("a:8250,a:8251")) == 2


def test_endpoint_uses_the_default_port_only_when_none_is_given():
    assert Address("a").endpoint(9000) == ("a", 9000)
    assert Address("a", 1).endpoint(9000) == ("a", 1)
