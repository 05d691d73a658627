"""Text-protocol authentication (``-Y <authfile>``), as memcached 1.6.18 does it.

This module owns the authfile (read with memcached's rules: ``user:password`` lines of at most
255 bytes, at most 8 entries, a line without ``:`` makes the whole file malformed; a reload
that fails keeps the entries already loaded) and the gate every connection passes before its
first real command: the first request must be ``set <any> <any> <any> <len>`` whose data is
``<user> <password>``. The gate works on the session's parser buffer and gives back reply
bytes; it never does I/O.
"""

from __future__ import annotations

import hmac

from .defs import c_strtonum
from .protocol import R_STORED

MAX_ENTRIES = 8
MAX_LINE = 255  # memcached reads entries with fgets(…, 256)
# memcached closes a connection whose first line has no newline within this many bytes ...
LINE_LIMIT = 2048
# ... and one whose credentials cannot fit its 16 KB read buffer.
PAYLOAD_LIMIT = 16384

R_UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
R_AUTH_FAILURE = b"CLIENT_ERROR authentication failure\r\n"
R_BAD_TOKEN_FORMAT = b"CLIENT_ERROR bad authentication token format\r\n"
R_BAD_TERMINATION = b"CLIENT_ERROR bad command line termination\r\n"


class AuthFileError(ValueError):
    """The authfile cannot be used; the message is memcached's."""


def parse_authfile(data: bytes, path: str = "") -> tuple[tuple[bytes, bytes], ...]:
    """The ``(user, password)`` entries of an authfile's bytes, read as memcached reads them."""
    entries: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(data) and len(entries) < MAX_ENTRIES:
        end = data.find(b"\n", pos, pos + MAX_LINE)
        chunk = data[pos : end + 1] if end >= 0 else data[pos : pos + MAX_LINE]
        pos += len(chunk)
        user, colon, rest = chunk.partition(b":")
        if not colon or b"\0" in user:
            raise AuthFileError(
                f"Authfile [{path}] has a malformed entry. Should be 'user:password'"
            )
        for stop in (b"\n", b"\r", b"\0"):
            rest = rest.split(stop, 1)[0]
        entries.append((user, rest))
    return tuple(entries)


def load_authfile(path: str) -> tuple[tuple[bytes, bytes], ...]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise AuthFileError(
            f"Could not open authfile [{path}] for reading, error {exc.strerror}"
        ) from None
    return parse_authfile(data, path)


class AuthFile:
    """The loaded entries of ``-Y``; ``reload()`` on SIGHUP, as memcached does."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries = load_authfile(path)

    def reload(self) -> None:
        """Read the file again; on failure the entries already loaded stay (and it raises)."""
        self.entries = load_authfile(self.path)

    def check(self, user: bytes, password: bytes) -> bool:
        found = False
        for u, p in self.entries:
            # Compare every entry in constant time, as memcached's safe_memcmp does.
            found |= hmac.compare_digest(u, user) & hmac.compare_digest(p, password)
        return found


def _tokens(text: bytes) -> list[bytes]:
    """memcached's tokenizer as far as the gate reads: a C string split on spaces (only the
    first five tokens matter, so memcached's cap of MAX_TOKENS never does)."""
    if b"\0" in text:
        text = text[: text.find(b"\0")]
    return [t for t in text.split(b" ") if t]


class AuthGate:
    """One connection's progress through authentication (memcached's asciiauth reader)."""

    __slots__ = ("authfile", "expect")

    def __init__(self, authfile: AuthFile) -> None:
        self.authfile = authfile
        self.expect = -1  # bytes of credentials expected after a good ``set`` line

    def step(self, buf: bytearray, pos: int, stats) -> tuple[int, bytes | None, bool, bool]:
        """Read one auth request at ``buf[pos:]``: ``(new_pos, reply, authenticated, close)``.

        ``reply`` is None when more bytes are needed.
        """
        avail = len(buf) - pos
        if self.expect < 0:
            if avail < 2:
                return pos, None, False, False
            el = buf.find(b"\n", pos)
            if el < 0:
                return pos, None, False, avail > LINE_LIMIT
            tokens = _tokens(bytes(buf[pos:el]))
            pos = el + 1
            size = c_strtonum(tokens[4], 32, False) if len(tokens) >= 5 else None
            if len(tokens) < 5 or tokens[0] != b"set" or size is None:
                return pos, R_UNAUTHENTICATED, False, False
            self.expect = (size + 2) & 0xFFFFFFFF  # a uint32_t in memcached
            avail = len(buf) - pos
        if self.expect > PAYLOAD_LIMIT and avail >= PAYLOAD_LIMIT:
            # memcached's read buffer is 16 KB: credentials that cannot fit it close the
            # connection once it is full.
            return pos, None, False, True
        if avail < self.expect:
            return pos, None, False, False
        data = bytes(buf[pos : pos + self.expect])
        pos += self.expect
        self.expect = -1
        if data[-2:] != b"\r\n":
            return pos, R_BAD_TERMINATION, False, False
        tokens = _tokens(data[:-2])
        if len(tokens) < 2:
            return pos, R_BAD_TOKEN_FORMAT, False, False
        stats.auth_cmds += 1
        if self.authfile.check(tokens[0], tokens[1]):
            return pos, R_STORED, True, False
        stats.auth_errors += 1
        return pos, R_AUTH_FAILURE, False, False
