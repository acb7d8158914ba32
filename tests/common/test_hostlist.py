import pytest

from common.errors import ValidationError
from common.hostlist import format_host_value, parse_host_value


def test_list_with_algorithm_round_trips():
    value = "10.0.0.2,10.0.0.3:8251,[::1]@roundrobin"
    parsed = parse_host_value(value)
    assert parsed.algorithm == "roundrobin"
    assert parsed.entries == ["10.0.0.2", "10.0.0.3:8251", "[::1]"]
    assert str(parsed.preferred) == "10.0.0.2"
    assert format_host_value(parsed) == value


def test_bare_list_means_algorithm_unknown():
    parsed = parse_host_value("a, b")
    assert parsed.algorithm is None
    assert format_host_value(parsed) == "a,b"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("@", "holds no addresses"),
        ("@static@", "holds no addresses"),
        ("@static", "the list is empty"),
        ("a,b@", "bad algorithm name ''"),
        ("a@Round Robin", "bad algorithm name"),
        ("a,,b@static", "entry 2 is empty"),
        ("a,a@static", "repeats entry 1"),
    ],
)
def test_bad_values_are_refused(value, fragment):
    with pytest.raises(ValidationError) as info:
        parse_host_value(value)
    assert fragment in str(info.value)
