"""Names the node's layers share: key limits, storage modes, result codes, C number parsing.

It imports nothing of the node, so every layer can: ``protocol`` imports only this module
(framing never reaches storage), and ``store``, ``meta``, ``commands`` and ``auth`` share its
names instead of importing each other's.
"""

from __future__ import annotations

import enum

KEY_MAX_LENGTH = 250
REALTIME_MAXDELTA = 60 * 60 * 24 * 30
U64 = (1 << 64) - 1


class Mode(enum.IntEnum):
    """A storage command (memcached's ``NREAD_*``)."""

    SET = 0
    ADD = 1
    REPLACE = 2
    APPEND = 3
    PREPEND = 4
    CAS = 5


class Result(enum.IntEnum):
    """What a store operation did (memcached's ``store_item_type`` and delta results)."""

    STORED = 1
    NOT_STORED = 2
    EXISTS = 3
    NOT_FOUND = 4
    TOO_LARGE = 5
    NO_MEMORY = 6
    NON_NUMERIC = 7
    DELTA_OK = 8


SET, ADD, REPLACE, APPEND, PREPEND, CAS = Mode
STORED = Result.STORED
NOT_STORED = Result.NOT_STORED
EXISTS = Result.EXISTS
NOT_FOUND = Result.NOT_FOUND
TOO_LARGE = Result.TOO_LARGE
NO_MEMORY = Result.NO_MEMORY
NON_NUMERIC = Result.NON_NUMERIC
DELTA_OK = Result.DELTA_OK

_SPACE = b" \t\n\v\f\r"


def c_strtonum(text: bytes, bits: int, signed: bool) -> int | None:
    """C's strtol/strtoul (base 10) plus memcached's ``safe_strto*`` checks, then the C cast to
    ``bits`` bits.  Returns None where memcached's parser says false."""
    if len(text) < 10 and text.isdigit():
        return int(text)  # the common case: plain digits that fit every width
    n = len(text)
    i = 0
    while i < n and text[i] in _SPACE:
        i += 1
    neg = False
    if i < n and text[i] in b"+-":
        neg = text[i] == 45
        i += 1
    j = i
    while j < n and 48 <= text[j] <= 57:
        j += 1
    if j == i:
        return None
    if j < n and text[j] not in _SPACE and text[j] != 0:
        return None
    magnitude = int(text[i:j])
    if signed:
        # strtol/strtoll on a 64-bit long: ERANGE outside the long range.
        value = -magnitude if neg else magnitude
        if value > (1 << 63) - 1 or value < -(1 << 63):
            return None
        if bits == 32:
            value &= 0xFFFFFFFF
            if value >= 1 << 31:
                value -= 1 << 32
        return value
    if magnitude > U64:
        return None
    value = (-magnitude) & U64 if neg else magnitude
    if value >= 1 << 63 and neg:
        # safe_strtoul(l): a huge result that came from a '-' sign is refused.
        return None
    return value & ((1 << bits) - 1)


def parse_u64(data: bytes) -> int | None:
    """memcached's ``safe_strtoull`` on a stored value (leading space, sign and trailing
    whitespace rules included); None when it is not a number."""
    return c_strtonum(data, 64, False)
