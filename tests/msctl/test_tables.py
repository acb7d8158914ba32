"""msctl.tables: what a terminal gets from Redis strings."""

from __future__ import annotations

import pytest

from msctl.tables import CELL_LIMIT, WIDE_LIMIT, format_table, printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("kvm-01.example", "kvm-01.example"),
        ("hôte ✓ 主机", "hôte ✓ 主机"),
        ("a\x1b[2Jb", "a\\x1b[2Jb"),
        ("\x00\x07\x7f\x9b", "\\x00\\x07\\x7f\\x9b"),
        ("tab\there\nnew\rret", "tab\\there\\nnew\\rret"),
        ("\udcff\ud800", "\\udcff\\ud800"),
        ("rtl\u202eoverride\u00a0nbsp", "rtl\\u202eoverride\\xa0nbsp"),
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_printable_escapes_what_a_terminal_would_act_on(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable(text).encode()  # no lone surrogate left


def test_printable_cuts_long_values_on_whole_escapes() -> None:
    assert printable("a" * CELL_LIMIT) == "a" * CELL_LIMIT
    assert printable("a" * (CELL_LIMIT + 1)) == "a" * (CELL_LIMIT - 3) + "..."
    assert printable("g" * 10_000_000) == "g" * (CELL_LIMIT - 3) + "..."
    cut = printable("a" * 59 + "\x1b" * 3)
    assert cut == "a" * 59 + "..."
    assert printable("x" * 300, limit=None) == "x" * 300
    assert printable("\x1b" * 3, limit=None) == "\\x1b" * 3


def test_format_table_escapes_and_cuts_every_cell() -> None:
    rows = [("NAME", "LIST"), ("n\x1b" * 100, "10.0.0.1:8250," * 10)]
    lines = format_table(rows, wide=(1,)).splitlines()
    name, hosts = lines[1].split("  ", 1)
    assert name == ("n\\x1b" * 12) + "n..."  # 61 characters kept
    assert len(name) <= CELL_LIMIT
    assert hosts.strip() == "10.0.0.1:8250," * 10
    assert len(format_table([("A",), ("b" * 1000,)], wide=(0,)).splitlines()[1]) == WIDE_LIMIT
