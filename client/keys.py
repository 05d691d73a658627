"""The rules of a request's arguments, checked before anything is sent.

This module owns memcached's key rules (at most 250 bytes, no spaces or control characters,
the client's ``key_prefix`` included) and the range checks of the integers a request carries
(flags, deltas, CAS tokens). A rule broken is an ``IllegalInputError`` that names the bad
value; the engine calls these, once per key, on every path.
"""

from __future__ import annotations

import re
from typing import Any

from .errors import IllegalInputError

KEY_MAX_LENGTH = 250
U64_MAX = 2**64 - 1
U32_MAX = 2**32 - 1

_BAD_KEY_BYTE = re.compile(rb"[\x00-\x20\x7f]")


def validate_key(key: str | bytes, key_prefix: bytes = b"") -> bytes:
    """The key as sent (``key_prefix`` first), or ``IllegalInputError`` naming the rule broken."""
    if type(key) is str:
        k = key.encode()
    elif type(key) is bytes:
        k = key
    elif isinstance(key, str | bytes):  # a subclass
        k = key.encode() if isinstance(key, str) else bytes(key)
    else:
        raise IllegalInputError(f"key must be str or bytes, not {type(key).__name__}")
    if key_prefix:
        k = key_prefix + k
    if 0 < len(k) <= KEY_MAX_LENGTH and not _BAD_KEY_BYTE.search(k):
        return k
    if not k:
        raise IllegalInputError("empty key")
    if len(k) > KEY_MAX_LENGTH:
        raise IllegalInputError(f"key is longer than 250 bytes: {k[:40]!r}...")
    raise IllegalInputError(f"key contains a space or control character: {k!r}")


def check_int(value: Any, what: str, low: int = 0, high: int = U64_MAX) -> int:
    """``value`` when it is an ``int`` in [``low``, ``high``], else ``IllegalInputError``."""
    if type(value) is not int or not low <= value <= high:
        raise IllegalInputError(f"{what} must be an integer in [{low}, {high}], not {value!r}")
    return value


def check_cas(cas: int | bytes) -> bytes:
    """A CAS token as sent: digits given as bytes, or an unsigned 64-bit integer."""
    if isinstance(cas, bytes) and cas.isdigit():
        return cas
    return b"%d" % check_int(cas, "cas")
