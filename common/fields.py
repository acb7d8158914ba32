"""What a host may call itself: the one rule for guid, name, type, zone and cluster.

The agent checks its agent.properties with it, the server checks every `startup` with it at the
protocol edge, so nothing longer than WORD_MAX or holding control characters, spaces or
non-ASCII ever reaches Redis or an operator's terminal.
"""

from __future__ import annotations

import re

from common.errors import ValidationError

WORD_MAX = 128
WORD_RE = re.compile(rf"[A-Za-z0-9_.:-]{{1,{WORD_MAX}}}")
WORD_CHARS = "letters, digits, _.:-"


def word_fault(value: str, *, required: bool) -> str | None:
    """Why `value` is not a valid host field (None when it is). Empty is a fault only when
    `required`."""
    if not value:
        return "is empty" if required else None
    if len(value) > WORD_MAX:
        return f"is {len(value)} characters long; the limit is {WORD_MAX}"
    if not WORD_RE.fullmatch(value):
        return f"{_shown(value)} has characters other than {WORD_CHARS}"
    return None


def check_word(name: str, value: str, *, required: bool) -> str:
    """`value`, or ValidationError naming the field."""
    fault = word_fault(value, required=required)
    if fault is not None:
        raise ValidationError(f"{name}: {fault}")
    return value


def _shown(value: str) -> str:
    """A short, printable rendering of a bad value for an error message."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."
