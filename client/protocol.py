"""memcached's client protocol without I/O: requests to bytes, bytes to typed replies.

This module owns every byte the client, the prober, discovery and the cluster tooling send
and every reply they read, for the classic text protocol and the meta protocol. It never
touches a socket: ``Reader.feed(bytes)`` takes whatever arrived and ``Reader.next(kind)``
returns the next complete reply of the kind the caller expects, or ``NEED_DATA``. Replies are
not self-describing in memcached's protocol (``15`` answers ``incr``, ``VALUE`` blocks answer
``get``), so the caller, which knows what it sent, names the kind.

Error lines are replies, not exceptions: ``next`` returns a ``ReplyError`` (the connection is
still in step and the next reply follows), and raises ``ProtocolError`` only for bytes that
are not memcached's protocol (the connection cannot be trusted any more).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote_to_bytes

from .errors import (
    ClientError,
    ProtocolError,
    ReplyError,
    ServerError,
    UnknownCommandError,
)
from .ring import Server

__all__ = [
    "CONFIG",
    "LINE",
    "META",
    "NEED_DATA",
    "STATS",
    "STATUS",
    "VALUES",
    "ClusterConfig",
    "DumpEntry",
    "Meta",
    "Reader",
    "parse_metadump_line",
    "reply_error",
    "typed_stats",
]

# The kinds of reply a request can expect.
VALUES: Final = 0  # VALUE blocks then END → list of (key, flags, data, cas or None)
STATUS: Final = 1  # one line: STORED, DELETED, a number, VERSION …, OK → the line's bytes
STATS: Final = 2  # STAT (or ITEM) lines then END → {name: value}
META: Final = 3  # a meta reply (HD, VA + data, EN, NF, NS, EX, MN) → Meta
CONFIG: Final = 4  # CONFIG cluster … END → ClusterConfig
LINE: Final = 5  # any one line, as it is (metadump streams)


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()

# A reply line longer than this without CRLF is not memcached talking.
MAX_LINE: Final = 65536

_STATUS_WORDS = frozenset(
    (b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED", b"TOUCHED", b"OK")
)
_VALUE_LINE = re.compile(rb"VALUE (\S+) (\d+) (\d+)(?: (\d+))?\r\n")
_META_CODES = frozenset((b"HD", b"VA", b"EN", b"NF", b"NS", b"EX", b"MN"))


class Meta:
    """A meta reply: its code (``HD``, ``VA``, ``EN``, …), its flags, and the value of ``VA``.

    ``flags`` maps each returned flag letter to its token (``{"t": b"29", "c": b"7"}``;
    flags without a token, such as ``W``, map to ``b""``).
    """

    __slots__ = ("code", "flags", "value")

    def __init__(self, code: bytes, flags: dict[str, bytes], value: bytes | None = None) -> None:
        self.code = code
        self.flags = flags
        self.value = value

    @property
    def hit(self) -> bool:
        return self.code in (b"VA", b"HD")

    def number(self, flag: str) -> int | None:
        token = self.flags.get(flag)
        return None if token is None else int(token)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Meta):
            return NotImplemented
        return (self.code, self.flags, self.value) == (other.code, other.flags, other.value)

    def __repr__(self) -> str:
        return f"Meta({self.code!r}, {self.flags!r}, {self.value!r})"


@dataclass(frozen=True)
class ClusterConfig:
    """A ``config get cluster`` reply (ElastiCache's auto-discovery format)."""

    version: int
    servers: list[Server]


@dataclass(frozen=True)
class DumpEntry:
    """One line of ``lru_crawler metadump``: the key and its absolute expiry (-1 = never)."""

    key: bytes
    exp: int


def reply_error(line: bytes) -> ReplyError | None:
    """The error an ``ERROR`` / ``CLIENT_ERROR`` / ``SERVER_ERROR`` line stands for, or None."""
    if line.startswith(b"CLIENT_ERROR"):
        return ClientError(line[13:].decode(errors="replace"))
    if line.startswith(b"SERVER_ERROR"):
        return ServerError(line[13:].decode(errors="replace"))
    if line == b"ERROR" or line.startswith(b"ERROR "):
        return UnknownCommandError(line.decode(errors="replace"))
    return None


class Reader:
    """Replies out of a byte stream, fed as it arrives.

    Parsing resumes where it stopped: a large ``get`` reply that arrives in many pieces is
    scanned once, and nothing is parsed again until at least the bytes it is known to need
    have arrived.
    """

    __slots__ = ("_buf", "_chunks", "_need", "_partial", "_pos", "_size")

    def __init__(self) -> None:
        self._buf = b""
        self._pos = 0
        self._chunks: list[bytes] = []
        self._size = 0  # bytes from _pos on, unjoined chunks included
        self._need = 1  # no reply can be complete before _size reaches this
        self._partial: list[Any] | None = None  # VALUE blocks already read of the current reply

    def feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as replies."""
        return self._size

    def next(self, kind: int) -> Any:
        """The next reply, of ``kind``, or ``NEED_DATA``."""
        if self._size < self._need:
            return NEED_DATA
        if self._chunks:
            chunks = self._chunks
            if self._pos < len(self._buf):
                chunks.insert(0, self._buf[self._pos :])
            self._buf = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._pos = 0
            chunks.clear()
        if kind == VALUES:
            return self._values()
        if kind == STATUS:
            return self._status()
        if kind == META:
            return self._meta()
        if kind == STATS:
            return self._stats()
        if kind == CONFIG:
            return self._config()
        if kind == LINE:
            line = self._line(self._pos)
            return NEED_DATA if line is None else line
        raise ValueError(f"unknown reply kind {kind!r}")

    # -- helpers ---------------------------------------------------------------------------
    def _more(self, need: int) -> _NeedData:
        """Nothing complete yet: wait for ``need`` bytes (counted from the current reply)."""
        self._need = max(need, self._size + 1)
        return NEED_DATA

    def _done(self, end: int) -> None:
        """The reply ended at ``end`` in the buffer."""
        self._size -= end - self._pos
        self._pos = end
        self._need = 1

    def _eol(self, pos: int) -> int:
        eol = self._buf.find(b"\r\n", pos)
        if eol < 0 and len(self._buf) - pos > MAX_LINE:
            raise ProtocolError(f"reply line longer than {MAX_LINE} bytes")
        return eol

    def _line(self, pos: int) -> bytes | None:
        eol = self._eol(pos)
        if eol < 0:
            self._more(0)
            return None
        line = self._buf[pos:eol]
        self._done(eol + 2)
        return line

    def _end_or_error(self, line: bytes, eol: int) -> ReplyError:
        error = reply_error(line)
        if error is None:
            raise ProtocolError(f"unexpected reply {line[:60]!r}")
        self._partial = None
        self._done(eol + 2)
        return error

    # -- reply kinds -----------------------------------------------------------------------
    def _values(self) -> Any:
        buf = self._buf
        pos = self._pos
        found = self._partial if self._partial is not None else []
        match = _VALUE_LINE.match
        while True:
            m = match(buf, pos)
            if m is not None:
                key, flags, length, cas = m.groups()
                start = m.end()
                end = start + int(length)
                if len(buf) < end + 2:
                    # Resume at this block once all of it (and an END) can be here.
                    self._partial = found
                    self._size -= pos - self._pos
                    self._pos = pos
                    return self._more(end + 7 - pos)
                if buf[end : end + 2] != b"\r\n":
                    raise ProtocolError("VALUE data not followed by CRLF")
                found.append((key, int(flags), buf[start:end], cas))
                pos = end + 2
                continue
            if buf.startswith(b"END\r\n", pos):
                self._partial = None
                self._done(pos + 5)
                return found
            eol = self._eol(pos)
            if eol < 0:
                break
            return self._end_or_error(buf[pos:eol], eol)
        self._partial = found
        self._size -= pos - self._pos
        self._pos = pos
        return self._more(0)

    def _status(self) -> Any:
        pos = self._pos
        eol = self._buf.find(b"\r\n", pos)
        if eol < 0:
            self._eol(pos)  # raises for an endless line
            return self._more(0)
        line = self._buf[pos:eol]
        self._size -= eol + 2 - pos
        self._pos = eol + 2
        self._need = 1
        if line in _STATUS_WORDS:
            return line
        return reply_error(line) or line

    def _meta(self) -> Any:
        buf = self._buf
        pos = self._pos
        eol = self._eol(pos)
        if eol < 0:
            return self._more(0)
        tokens = buf[pos:eol].split()
        code = tokens[0] if tokens else b""
        if code not in _META_CODES:
            return self._end_or_error(buf[pos:eol], eol)
        value = None
        rest = tokens[1:]
        end = eol + 2
        if code == b"VA":
            if not rest or not rest[0].isdigit():
                raise ProtocolError(f"bad VA line {buf[pos:eol][:60]!r}")
            size = int(rest.pop(0))
            if len(buf) < end + size + 2:
                return self._more(end + size + 2 - pos)
            if buf[end + size : end + size + 2] != b"\r\n":
                raise ProtocolError("VA data not followed by CRLF")
            value = buf[end : end + size]
            end += size + 2
        flags = {chr(t[0]): t[1:] for t in rest}
        self._done(end)
        return Meta(code, flags, value)

    def _stats(self) -> Any:
        buf = self._buf
        pos = self._pos
        found: dict[bytes, bytes] = {}
        while True:
            eol = self._eol(pos)
            if eol < 0:
                return self._more(0)
            line = buf[pos:eol]
            if line == b"END":
                self._done(eol + 2)
                return found
            if line.startswith((b"STAT ", b"ITEM ")):
                _, name, value = (*line.split(b" ", 2), b"")[:3]
                found[name] = value
                pos = eol + 2
                continue
            return self._end_or_error(line, eol)

    def _config(self) -> Any:
        buf = self._buf
        pos = self._pos
        eol = self._eol(pos)
        if eol < 0:
            return self._more(0)
        head = buf[pos:eol].split()
        if len(head) != 4 or head[:2] != [b"CONFIG", b"cluster"] or not head[3].isdigit():
            return self._end_or_error(buf[pos:eol], eol)
        start = eol + 2
        end = start + int(head[3])
        if len(buf) < end + 7:
            return self._more(end + 7 - pos)
        if buf[end : end + 7] != b"\r\nEND\r\n":
            raise ProtocolError("CONFIG body not followed by END")
        config = parse_cluster_config(buf[start:end])
        self._done(end + 7)
        return config


def parse_cluster_config(body: bytes) -> ClusterConfig:
    """The body of a ``CONFIG cluster`` reply: a version line, then ``host|ip|port`` members."""
    lines = body.decode(errors="replace").split("\n")
    try:
        version = int(lines[0])
        servers = []
        for member in lines[1].split() if len(lines) > 1 else []:
            host, ip, port = member.split("|")
            where = ip if host and ip and ip != host else None  # a name and its address
            servers.append(Server(host=host or ip, port=int(port), ip=where))
    except ValueError as exc:
        raise ProtocolError(f"bad cluster config {body[:60]!r}") from exc
    return ClusterConfig(version, servers)


def parse_metadump_line(line: bytes) -> DumpEntry:
    """``key=<url-encoded> exp=<abs|-1> la=… cas=… fetch=… cls=… size=…`` as a ``DumpEntry``."""
    fields = dict(part.split(b"=", 1) for part in line.split(b" ") if b"=" in part)
    try:
        return DumpEntry(unquote_to_bytes(fields[b"key"]), int(fields[b"exp"]))
    except (KeyError, ValueError) as exc:
        raise ProtocolError(f"bad metadump line {line[:60]!r}") from exc


def typed_stats(stats: dict[bytes, bytes]) -> dict[bytes, Any]:
    """Stat values as numbers where they are numbers (as pymemcache's ``stats`` gives them)."""
    out: dict[bytes, Any] = {}
    for name, value in stats.items():
        if value.isdigit() or (value[:1] == b"-" and value[1:].isdigit()):
            out[name] = int(value)
        elif value.count(b".") == 1 and value.replace(b".", b"", 1).isdigit():
            out[name] = float(value)
        else:
            out[name] = value
    return out


# -- requests ----------------------------------------------------------------------------------
def get(keys: list[bytes], cas: bool = False) -> bytes:
    return (b"gets " if cas else b"get ") + b" ".join(keys) + b"\r\n"


def store(
    command: bytes,
    key: bytes,
    flags: int,
    exptime: int,
    data: bytes,
    cas: int | bytes | None = None,
    noreply: bool = False,
) -> bytes:
    """``set``/``add``/``replace``/``append``/``prepend``/``cas`` with its data block."""
    tail = b""
    if cas is not None:
        tail = b" " + (cas if isinstance(cas, bytes) else b"%d" % cas)
    if noreply:
        tail += b" noreply"
    return b"%s %s %d %d %d%s\r\n%s\r\n" % (command, key, flags, exptime, len(data), tail, data)


def delete(key: bytes, noreply: bool = False) -> bytes:
    return b"delete %s noreply\r\n" % key if noreply else b"delete %s\r\n" % key


def delta(command: bytes, key: bytes, amount: int, noreply: bool = False) -> bytes:
    return b"%s %s %d%s\r\n" % (command, key, amount, b" noreply" if noreply else b"")


def touch(key: bytes, exptime: int, noreply: bool = False) -> bytes:
    return b"touch %s %d%s\r\n" % (key, exptime, b" noreply" if noreply else b"")


def meta_get(key: bytes, flags: bytes = b"v f t c") -> bytes:
    """``mg``; by default the value, client flags, remaining TTL and CAS in one reply."""
    return b"mg %s %s\r\n" % (key, flags)


def meta_delete(key: bytes, flags: bytes = b"") -> bytes:
    return b"md %s %s\r\n" % (key, flags) if flags else b"md %s\r\n" % key


def stats(*args: str) -> bytes:
    return b" ".join([b"stats", *(a.encode() for a in args)]) + b"\r\n"


def flush_all(delay: int = 0, noreply: bool = False) -> bytes:
    return b"flush_all %d%s\r\n" % (delay, b" noreply" if noreply else b"")


VERSION: Final = b"version\r\n"
CONFIG_GET: Final = b"config get cluster\r\n"
METADUMP_ALL: Final = b"lru_crawler metadump all\r\n"


def config_set(version: int, members: list[Server]) -> bytes:
    """Publish a membership (ringcache nodes; refused from off loopback)."""
    entries = b" ".join(
        b"%s|%s|%d" % (m.host.encode(), (m.ip or m.host).encode(), m.port) for m in members
    )
    return b"config set cluster version=%d %s\r\n" % (version, entries)
