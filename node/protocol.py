"""memcached's text protocol, sans-IO: bytes in → requests, replies → bytes.

This module owns framing (lines ending in ``\\n`` or ``\\r\\n``, data blocks, the 2048-byte
rule, swallowing the data of values that can never fit — answered, as memcached answers them,
once swallowed), the validation of storage command lines (which decides the framing), and the
reply constants and error types. It never imports
trio and never touches storage: ``commands`` executes what it parses.

The receive buffer is one ``bytearray`` with a read offset; consumed bytes are dropped in
bulk, and the search for the next newline resumes where the previous one stopped.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from .defs import ADD, APPEND, CAS, KEY_MAX_LENGTH, PREPEND, REPLACE, SET, Mode, c_strtonum

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

_DATA_COMMANDS = frozenset([*STORAGE, b"ms"])  # command lines followed by a data block

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
R_TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
R_NO_MEMORY = b"SERVER_ERROR out of memory storing object\r\n"


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


class MetaError(ProtocolError):
    """A meta command's error line, given whole (``CLIENT_ERROR …`` or ``SERVER_ERROR …``)."""

    def reply(self) -> bytes:
        return self.message.encode() + b"\r\n"


class StorageRequest:
    """A storage command line that passed validation; ``data`` arrives after it.

    For ``ms``, ``meta`` holds the parsed flags and ``tokens`` the line (replies echo flags
    in the order they were given); ``error`` is a reply that is sent instead of storing,
    while the data block is swallowed.
    """

    __slots__ = (
        "cas",
        "data",
        "error",
        "exptime",
        "fits",
        "flags",
        "key",
        "meta",
        "mode",
        "nbytes",
        "noreply",
        "tokens",
    )

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
        self.meta: MetaFlags | None = None
        self.error: MetaError | None = None
        self.tokens: list[bytes] = []


# -- meta commands ---------------------------------------------------------------------------
# memcached's MFLAG_MAX_OPT_LENGTH (a meta line has at most this many tokens, counting the
# terminal one) and MFLAG_MAX_OPAQUE_LENGTH.
META_MAX_TOKENS = 20
META_MAX_OPAQUE = 32
E_BAD_FORMAT = "CLIENT_ERROR bad command line format"
E_BAD_TOKEN = "CLIENT_ERROR bad token in command line format"
E_OPAQUE = "CLIENT_ERROR opaque token too long"


class MetaFlags:
    """The flags of one meta command as memcached's ``_meta_flag_preparse`` reads them.

    Times (``T``, ``N``, ``R``) are the client's numbers, not yet relative; ``error`` is the
    error line when the flags are refused; ``key`` is the key, base64-decoded with ``b``.
    """

    __slots__ = (
        "autoviv",
        "client_flags",
        "delta",
        "error",
        "exptime",
        "has_cas",
        "initial",
        "key",
        "key_binary",
        "locked",
        "mode",
        "new_ttl",
        "no_reply",
        "no_update",
        "recache",
        "req_cas",
        "set_stale",
        "value",
        "vivify",
    )

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.error: str | None = None
        self.no_update = self.locked = self.vivify = self.value = False
        self.set_stale = self.no_reply = self.has_cas = self.new_ttl = self.key_binary = False
        self.mode = 0
        self.exptime = self.autoviv = self.recache = 0
        self.client_flags = self.req_cas = self.initial = 0
        self.delta = 1


def parse_meta_flags(tokens: list[bytes], start: int, errstr: str = E_BAD_FORMAT) -> MetaFlags:
    """Read the flag tokens from ``tokens[start]`` on; ``errstr`` is the error line used when
    a flag's number is bad and no more specific message applies (as in memcached)."""
    of = MetaFlags(tokens[1])
    seen = set()
    failed = False
    for tok in tokens[start:]:
        o = tok[0]
        if o >= 127 or o in seen:
            of.error = "CLIENT_ERROR duplicate flag"
            return of
        seen.add(o)
        if o == 98:  # b
            key = b64decode(of.key)
            if key is None:
                errstr = "CLIENT_ERROR error decoding key"
                failed = True
                key = b""
            of.key = key
            of.key_binary = True
        elif o in b"NTR":
            n = c_strtonum(tok[1:], 32, True)
            of.locked = True
            if n is None:
                errstr = E_BAD_TOKEN
                failed = True
            elif o == 78:  # N
                of.vivify = True
                of.autoviv = n
            elif o == 84:  # T
                of.exptime = n
                of.new_ttl = True
            else:
                of.recache = n
        elif o in b"lh":
            of.locked = True  # the LRU bump waits until fetched/last-access are read
        elif o in b"OPLkstcf":
            pass
        elif o == 118:  # v
            of.value = True
        elif o == 117:  # u
            of.no_update = True
        elif o == 113:  # q
            of.no_reply = True
        elif o == 70:  # F
            n = c_strtonum(tok[1:], 32, False)
            if n is None:
                failed = True
            else:
                of.client_flags = n
        elif o in b"CJD":
            n = c_strtonum(tok[1:], 64, False)
            if n is None:
                errstr = {
                    67: E_BAD_TOKEN,
                    74: "CLIENT_ERROR invalid numeric initial value",
                    68: "CLIENT_ERROR invalid numeric delta value",
                }[o]
                failed = True
            elif o == 67:  # C
                of.req_cas = n
                of.has_cas = True
            elif o == 74:  # J
                of.initial = n
            else:
                of.delta = n
        elif o == 77:  # M
            if len(tok) != 2:
                errstr = "CLIENT_ERROR incorrect length for M token"
                failed = True
            else:
                of.mode = tok[1]
        elif o == 73:  # I
            of.set_stale = True
        else:
            of.error = "CLIENT_ERROR invalid flag"
            return of
    if failed:
        of.error = errstr
    return of


_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALID = frozenset(_B64 + b"=")


def b64decode(text: bytes) -> bytes | None:
    """memcached's base64_decode: characters outside the alphabet are skipped, the rest must
    come in blocks of four, decoding stops after the first padded block; None on failure."""
    chars = bytes(c for c in text if c in _B64_VALID)
    if not chars or len(chars) % 4:
        return None
    pad = chars.find(b"=")
    if pad >= 0:
        end = (pad // 4 + 1) * 4  # the block holding the first '='
        block = chars[pad // 4 * 4 : end]
        npad = block.count(b"=")
        if npad > 2:
            return None
        # memcached reads '=' as zero bits wherever it stands in the block.
        chars = chars[: end - 4] + block.replace(b"=", b"A")
        out = binascii.a2b_base64(chars)
        return out[: len(out) - npad] or None
    return binascii.a2b_base64(chars)


def b64encode(key: bytes) -> bytes:
    return base64.b64encode(key)


def parse_mset(tokens: list[bytes], fits: Callable[[int, int, int], bool]) -> StorageRequest:
    """Validate an ``ms`` line as ``process_mset_command`` does.

    Errors found before the data length is known raise ``ProtocolError`` (the data block is
    then read as commands, as memcached does); later ones come back in ``req.error`` and the
    data block is swallowed.
    """
    ntokens = min(len(tokens), MAX_TOKENS - 1) + 1
    if ntokens < 3:
        raise CommandError()
    if len(tokens[1]) > KEY_MAX_LENGTH or ntokens == 3:
        raise MetaError(E_BAD_FORMAT)
    if ntokens > META_MAX_TOKENS:
        raise MetaError("CLIENT_ERROR options flags too long")
    vlen = c_strtonum(tokens[2], 32, True)
    if vlen is None or vlen < 0 or vlen > 0x7FFFFFFF - 2:
        raise MetaError(E_BAD_FORMAT)
    of = parse_meta_flags(tokens, 3)
    error = of.error
    mode = SET
    if error is None:
        if any(t[0] == 79 and len(t) > META_MAX_OPAQUE for t in tokens[2:]):
            error = E_OPAQUE
        m = of.mode
        if m:
            mode = _MS_MODES.get(m)
            if mode is None:
                error = "CLIENT_ERROR invalid mode for ms M token"
                mode = SET
        if of.has_cas and mode in (SET, REPLACE):
            mode = CAS
    key = of.key
    nbytes = vlen + 2
    req = StorageRequest(
        mode,
        key,
        of.client_flags,
        of.exptime,
        nbytes,
        of.req_cas,
        of.no_reply,
        error is None and fits(len(key), of.client_flags, nbytes),
    )
    req.meta = of
    req.tokens = tokens
    if error is not None:
        req.error = MetaError(error)
    return req


_MS_MODES: dict[int, Mode] = {69: ADD, 65: APPEND, 80: PREPEND, 82: REPLACE, 83: SET}


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

    __slots__ = ("buf", "fits", "line", "oversized", "pending", "pos", "scan", "swallow")

    def __init__(self, fits: Callable[[int, int, int], bool]) -> None:
        self.buf = bytearray()
        self.pos = 0
        self.scan = 0
        self.pending: StorageRequest | None = None
        self.swallow = 0
        # A store whose value can never fit, answered (as memcached answers it) only once its
        # data block has been swallowed.
        self.oversized: StorageRequest | None = None
        self.fits = fits
        # The command line of the request ``next`` returned or failed on last, as memcached's
        # ``-vv`` prints it (the C string: up to a NUL, without the line end).
        self.line = b""

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
        if self.oversized is not None:
            if self.swallow:
                return None
            req, self.oversized = self.oversized, None
            return req
        pending = self.pending
        if pending is not None:
            end = self.pos + pending.nbytes
            if len(buf) < end:
                return None
            pending.data = bytes(memoryview(buf)[self.pos : end])  # one copy, not two
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
        if 0 in line:  # an int needle: memchr, without a TypeError inside bytes.__contains__
            line = line[: line.find(b"\0")]  # memcached reads the line as a C string
        self.line = line
        # Tokens are separated by spaces only: a tab is part of a token, as in memcached.
        tokens = line.split(b" ")
        if b"" in tokens:
            tokens = [t for t in tokens if t]
            if not tokens:
                return tokens
        first = tokens[0]
        if first in _DATA_COMMANDS:
            if first == b"ms":
                req = parse_mset(tokens, self.fits)
            else:
                req = parse_storage(tokens, self.fits)
            if not req.fits:
                # The value can never be stored: drop its bytes unbuffered, and answer once
                # the last of them has arrived, as memcached does.
                have = len(buf) - self.pos
                take = min(have, req.nbytes)
                self.pos += take
                self.scan = self.pos
                self.swallow = req.nbytes - take
                if self.swallow:
                    self.oversized = req
                    return None
                return req
            self.pending = req
            return self.next()
        return tokens
