"""Plain-text tables and lines for human output, safe for a terminal whatever Redis holds.

Every string msctl prints for a human from Redis data goes through `printable` (tables do it
for each cell in `format_table`): Redis may hold junk an agent sent (names with ESC, NUL or BEL,
a guid of kilobytes), and a terminal must neither receive control sequences nor scroll through
megabytes. `--json` output is left to `json.dumps`, whose default `ensure_ascii` escapes every
control character and lone surrogate, so it stays lossless and pure ASCII.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

CELL_LIMIT = 64
"""The most characters a table cell shows: room for a hostname, a guid or an address with its
port; anything longer is cut and ends in `...`."""

WIDE_LIMIT = 256
"""The same for columns that hold a list of server addresses (a `host` value), which a real
setup makes longer than one name."""

ELLIPSIS = "..."  # ASCII: prints on any terminal encoding

_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    if char.isprintable():
        return char
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, limit: int | None = CELL_LIMIT) -> str:
    """`text` with every non-printable character shown as a visible escape (ESC as `\\x1b`, a
    lone surrogate as `\\udcff`, U+202E as `\\u202e`; tab, newline and return as `\\t`, `\\n`,
    `\\r`): C0 and C1 controls, DEL, format and private-use characters, separators other than
    the space, unassigned code points, lone surrogates (what `str.isprintable` refuses). A
    backslash already in the text is shown as is.

    With a `limit`, the result is at most `limit` characters: a longer one keeps its first
    `limit - 3` (whole escapes) and ends in `...`. Only what is shown is examined, so a huge
    value costs little.
    """
    if limit is None:
        return "".join(map(_escape, text))
    shown: list[str] = []
    length = 0
    for char in text:
        piece = _escape(char)
        if length + len(piece) > limit:
            break
        shown.append(piece)
        length += len(piece)
    else:
        return "".join(shown)
    keep = max(0, limit - len(ELLIPSIS))
    while shown and length > keep:  # whole escapes only: never half of `\x1b`
        length -= len(shown.pop())
    return "".join(shown) + ELLIPSIS


def format_table(rows: Sequence[Sequence[str]], wide: Collection[int] = ()) -> str:
    """Left-aligned columns separated by two spaces; the first row is the header.

    Every cell goes through `printable`, cut at `CELL_LIMIT` characters, or `WIDE_LIMIT` in the
    columns whose indexes are in `wide`.
    """
    cells = [
        [printable(cell, WIDE_LIMIT if i in wide else CELL_LIMIT) for i, cell in enumerate(row)]
        for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def format_age(timestamp: float, now: float) -> str:
    """`12s ago`, `5m ago`, `3h ago`; `-` for never."""
    if timestamp <= 0:
        return "-"
    seconds = max(0, int(now - timestamp))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
