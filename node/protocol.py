"""memcached's text protocol, sans-IO: bytes in → requests, replies → bytes.

This module owns framing (lines ending in ``\\n`` or ``\\r\\n``, data blocks, the 2048-byte
rule, swallowing the data of values that can never fit), the validation of storage command
lines (which decides the framing), and the reply constants and error types. It never imports
trio and never touches storage: ``commands`` executes what it parses.

The receive buffer is one ``bytearray`` with a read offset; consumed bytes are dropped in
bulk, and the search for the next newline resumes where the previous one stopped.
"""

from __future__ import annotations

from collections.abc import Callable

from .store import ADD, APPEND, CAS, KEY_MAX_LENGTH, PREPEND, REPLACE, SET, c_strtonum

MAX_TOKENS = 24
LINE_LIMIT = 2048
# memcached lets a multiget line grow without bound; we stop at 8 MB so that a client cannot
# grow the node's memory at will.  A line longer than that closes the connection.
MULTIGET_LIMIT = 8 * 1024 * 1024

STORAGE = {
    b"set": SET,
    b"add": ADD,
    b"replace": REPLACE,
    b"append": APPEND,
    b"prepend": PREPEND,
    b"cas": CAS,
}

# Replies.
R_STORED = b"STORED\r\n"
R_NOT_STORED = b"NOT_STORED\r\n"
R_EXISTS = b"EXISTS\r\n"
R_NOT_FOUND = b"NOT_FOUND\r\n"
R_DELETED = b"DELETED\r\n"
R_TOUCHED = b"TOUCHED\r\n"
R_END = b"END\r\n"
R_OK = b"OK\r\n"
R_RESET = b"RESET\r\n"
R_ERROR = b"ERROR\r\n"
R_TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"


class ProtocolError(Exception):
    """A request the node answers with an error line; ``reply()`` is that line."""

    prefix = b"ERROR"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def reply(self) -> bytes:
        if self.message:
            return b"%s %s\r\n" % (self.prefix, self.message.encode())
        return self.prefix + b"\r\n"


class CommandError(ProtocolError):
    """``ERROR``: unknown command or wrong number of tokens (a message may follow)."""

    prefix = b"ERROR"


class ClientError(ProtocolError):
    """``CLIENT_ERROR <message>``: a malformed request."""

    prefix = b"CLIENT_ERROR"


class ServerError(ProtocolError):
    """``SERVER_ERROR <message>``: the node could not do what was asked."""

    prefix = b"SERVER_ERROR"


# Replies used as constants; raise fresh instances (a re-raised instance keeps growing its
# traceback).
R_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
R_BAD_DATA_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"


def bad_format() -> ClientError:
    return ClientError("bad command line format")


class Close(Exception):
    """The connection must be closed (2048-byte rule, ``HTTP/`` probe, ``quit``)."""


class StorageRequest:
    """A storage command line that passed validation; ``data`` arrives after it."""

    __slots__ = ("cas", "data", "exptime", "fits", "flags", "key", "mode", "nbytes", "noreply")

    def __init__(self, mode, key, flags, exptime, nbytes, cas, noreply, fits) -> None:
        self.mode = mode
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.nbytes = nbytes  # value length + 2
        self.cas = cas
        self.noreply = noreply
        self.fits = fits
        self.data: bytes | None = None


def parse_storage(tokens: list[bytes], fits: Callable[[int, int, int], bool]):
    """Validate a storage line as memcached's ``process_update_command`` does.

    Returns a ``StorageRequest`` that expects a data block, or raises ``ProtocolError`` (the
    data block is then *not* read: memcached parses it as the next command).  The error's
    ``noreply`` attribute says whether the reply must be suppressed.
    """
    mode = STORAGE[tokens[0]]
    ntokens = min(len(tokens), MAX_TOKENS - 1) + 1
    if mode == CAS:
        if ntokens not in (7, 8):
            raise CommandError()
    elif ntokens not in (6, 7):
        raise CommandError()
    noreply = tokens[ntokens - 2] == b"noreply"
    key = tokens[1]
    try:
        if len(key) > KEY_MAX_LENGTH:
            raise bad_format()
        flags = c_strtonum(tokens[2], 32, False)
        exptime = c_strtonum(tokens[3], 32, True)
        vlen = c_strtonum(tokens[4], 32, True)
        if flags is None or exptime is None or vlen is None:
            raise bad_format()
        cas = 0
        if mode == CAS:
            cas = c_strtonum(tokens[5], 64, False)
            if cas is None:
                raise bad_format()
        if vlen < 0 or vlen > 0x7FFFFFFF - 2:
            raise bad_format()
    except ProtocolError as exc:
        exc.noreply = noreply  # type: ignore[attr-defined]
        raise
    nbytes = vlen + 2
    return StorageRequest(
        mode, key, flags, exptime, nbytes, cas, noreply, fits(len(key), flags, nbytes)
    )


class Parser:
    """Splits a byte stream into command lines and storage requests with their data."""

    __slots__ = ("buf", "fits", "pending", "pos", "scan", "swallow")

    def __init__(self, fits: Callable[[int, int, int], bool]) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.scan = 0
        self.pending: StorageRequest | None = None
        self.swallow = 0
        self.fits = fits

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.pos and self.pos >= len(self.buf) // 2:
            del self.buf[: self.pos]
            self.scan -= self.pos
            self.pos = 0
        if self.swallow:
            n = min(self.swallow, len(data))
            self.swallow -= n
            data = data[n:]
        self.buf += data

    def buffered(self) -> int:
        return len(self.buf) - self.pos

    def next(self):
        """The next complete request, or None when more bytes are needed.

        A request is a ``StorageRequest`` (with ``data`` set, or None when the value can never
        fit and its bytes are being swallowed) or a list of tokens. A line that must close the
        connection raises ``Close``; a storage line that fails validation raises
        ``ProtocolError``.
        """
        buf = self.buf
        pending = self.pending
        if pending is not None:
            end = self.pos + pending.nbytes
            if len(buf) < end:
                return None
            pending.data = bytes(buf[self.pos : end])
            self.pos = self.scan = end
            self.pending = None
            return pending
        el = buf.find(b"\n", self.scan)
        if el < 0:
            self.scan = len(buf)
            waiting = len(buf) - self.pos
            if waiting > LINE_LIMIT:
                head = bytes(buf[self.pos : self.pos + 110])
                stripped = head.lstrip(b" ")
                if (
                    len(head) - len(stripped) > 100
                    or not (stripped.startswith(b"get ") or stripped.startswith(b"gets "))
                    or waiting > MULTIGET_LIMIT
                ):
                    raise Close()
            return None
        start = self.pos
        cont = el + 1
        if el - start > 1 and buf[el - 1] == 13:
            el -= 1
        line = bytes(buf[start:el])
        self.pos = self.scan = cont
        nul = line.find(b"\0")
        if nul >= 0:
            line = line[:nul]  # memcached reads the line as a C string
        # Tokens are separated by spaces only: a tab is part of a token, as in memcached.
        tokens = [t for t in line.split(b" ") if t]
        if tokens and tokens[0] in STORAGE:
            req = parse_storage(tokens, self.fits)
            if not req.fits:
                # The value can never be stored: answer now and drop its bytes unbuffered.
                have = len(buf) - self.pos
                take = min(have, req.nbytes)
                self.pos += take
                self.scan = self.pos
                self.swallow = req.nbytes - take
                return req
            self.pending = req
            return self.next()
        return tokens
