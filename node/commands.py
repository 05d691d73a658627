"""One connection's request handling, sans-IO: parsed requests in, reply bytes out.

This module owns command dispatch and the rules that decide each reply (token counts,
``noreply``, the order of checks, which error a bad request gets) following memcached 1.6.18's
proto_text.c. It is the one place where a ``ProtocolError`` becomes reply bytes. It calls the
store and renders ``stats`` through ``stats``; it never does I/O, so it is tested with bytes in
and bytes out, and the reactor (``reactor``) feeds it what each connection receives and sends
what it answers. With ``-vv`` it prints each command line and hands each reply to
``transcript`` (which decides what memcached would print of it); a reply that ``noreply``
swallows is still said (``_quiet``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from . import stats as stats_text
from .auth import AuthGate
from .config import VERSION
from .defs import (
    DELTA_OK,
    EXISTS,
    KEY_MAX_LENGTH,
    NO_MEMORY,
    NON_NUMERIC,
    NOT_FOUND,
    NOT_STORED,
    SET,
    STORED,
    TOO_LARGE,
    c_strtonum,
)
from .meta import MetaCommands
from .protocol import (
    MAX_TOKENS,
    R_BAD_DATA_CHUNK,
    R_BAD_FORMAT,
    R_DELETED,
    R_END,
    R_ERROR,
    R_EXISTS,
    R_NO_MEMORY,
    R_NOT_FOUND,
    R_NOT_STORED,
    R_OK,
    R_RESET,
    R_STORED,
    R_TOO_LARGE,
    R_TOUCHED,
    ClientError,
    Close,
    Parser,
    ProtocolError,
    ServerError,
    StorageRequest,
    bad_format,
)
from .transcript import reply_lines

if TYPE_CHECKING:
    from .state import NodeState

R_BAD_EXPTIME = ClientError("invalid exptime argument").reply()
_STORE_REPLIES = {
    STORED: R_STORED,
    NOT_STORED: R_NOT_STORED,
    EXISTS: R_EXISTS,
    NOT_FOUND: R_NOT_FOUND,
    TOO_LARGE: R_TOO_LARGE,
    NO_MEMORY: R_NO_MEMORY,
}

# A multiget with more keys than this is answered in chunks between sends, so that one
# request cannot make the node build an unbounded reply in memory.
GET_SLICE = 8
STREAM_CHUNK = 256 * 1024


# One "get <key>\r\n" line with no other space (Session.receive also refuses a NUL or a
# newline in the key: a one-character class keeps the regex's scan of the key fast).
_LONE_GET = re.compile(rb"get ([^ ]+)\r\n")
# The line of one "set <key> <flags> <exptime> <bytes>\r\n" whose numbers are plain digits
# that fit every width (Session.receive, which also refuses a NUL or newline in the key); its
# data block follows.
_LONE_SET = re.compile(
    rb"set ([^ ]{1,%d}) ([0-9]{1,9}) ([0-9]{1,9}) ([0-9]{1,9})\r\n" % KEY_MAX_LENGTH
)


class DropPending(Exception):
    """Discard the replies of this batch that were not sent yet, then send ``reply``."""

    def __init__(self, reply: bytes) -> None:
        super().__init__()
        self.reply = reply


# Unknown commands whose first letter memcached dispatches on answer ERROR without the
# "HTTP/" probe that closes the connection (as do unknown two-letter "m" commands).
_DISPATCHED_LETTERS = frozenset(b"gsacidt")


class Session(MetaCommands):
    """The protocol state of one client connection."""

    def __init__(self, node: NodeState, peer: str = "127.0.0.1:0", fd: int | None = None) -> None:
        self.node = node
        self.store = node.store
        self.stats = node.store.stats
        self.parser = Parser(self.store.item_size_ok)
        self.peer = peer
        # memcached names a connection by its descriptor (in -vv and ``stats conns``).
        node.next_id += 1
        self.id = node.next_id if fd is None else fd
        self.negotiated = False  # the first bytes arrived (memcached's protocol negotiation)
        self._command_word = b""  # of the last command line -vv printed
        self.last_cmd = self.store.clock.now
        self.stream: Iterator[bytes] | None = None
        self.closing = False
        # Until it has passed ``-Y``'s gate (then None) a session answers nothing else.
        self.gate = None if node.authfile is None else AuthGate(node.authfile)
        # Nothing buffered, pending, swallowed or streamed, and past the gate: ``receive`` may
        # answer a read by itself. Cleared by ``feed``, recomputed at the end of ``step``.
        self.settled = self.gate is None
        # A peer whose TLS client certificate was verified against ``ssl_ca_cert``.
        self.verified_cert = False
        self._dispatch = {
            b"get": self._get,
            b"gets": self._gets,
            b"bget": self._get,
            b"gat": self._gat,
            b"gats": self._gats,
            b"delete": self._delete,
            b"incr": self._incr,
            b"decr": self._decr,
            b"touch": self._touch,
            b"stats": self._stats,
            b"flush_all": self._flush_all,
            b"version": self._version,
            b"verbosity": self._verbosity,
            b"quit": self._quit,
            b"shutdown": self._shutdown,
            b"slabs": self._slabs,
            b"lru_crawler": self._lru_crawler,
            b"cache_memlimit": self._cache_memlimit,
            b"config": self._config,
            b"refresh_certs": self._refresh_certs,
            b"mg": self._mg,
            b"md": self._md,
            b"ma": self._ma,
            b"me": self._me,
            b"mn": self._mn,
        }

    # -- driving ---------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self.settled = False
        if not self.negotiated:
            self.negotiated = True
            if self.node.verbosity > 1:
                self.node.log(f"{self.id}: Client using the ascii protocol")
        self.parser.feed(data)
        self.stats.bytes_read += len(data)

    def receive(self, buf: bytearray, n: int, max_requests: int = 20) -> tuple[bytes, bool]:
        """``feed(buf[:n])`` then ``step(max_requests)``: what a server does with each read.

        The commonest reads of all, on a connection with nothing buffered, are answered here
        without the parser: one ``get <key>\\r\\n`` (the line has no other space, no NUL and
        no other newline, and the key is not too long, so the parser would have made the tokens
        ``[b"get", key]`` of it), and one ``set <key> <flags> <exptime> <bytes>\\r\\n`` with
        exactly its data block and ``\\r\\n`` (plain digits that ``c_strtonum`` reads as they
        are, a key that is not too long, a value that fits), which ``step`` would have stored
        and answered exactly so.
        """
        if self.settled and self.node.verbosity <= 1:
            reply = None
            first = buf[0]
            if first == 103:  # g
                if (
                    0 < n - 6 <= KEY_MAX_LENGTH
                    and (line := _LONE_GET.fullmatch(buf, 0, n))
                    and 10 not in (key := line[1])  # an int: bytes look for it with memchr
                    and 0 not in key
                ):
                    reply = self._get_one(key)
            elif first == 115 and (line := _LONE_SET.match(buf, 0, n)):  # s
                start = line.end()
                nbytes = int(line[4]) + 2
                if (
                    start + nbytes == n
                    and buf[n - 2] == 13
                    and buf[n - 1] == 10
                    and nbytes <= self.store.always_fits
                    and 10 not in (key := line[1])
                    and 0 not in key
                ):
                    data = bytes(memoryview(buf)[start:n])
                    reply = self._store(SET, key, int(line[2]), int(line[3]), data, 0, False)
            if reply is not None:
                self.last_cmd = self.store.clock.now
                stats = self.stats
                stats.bytes_read += n
                stats.bytes_written += len(reply)
                return reply, False
        self.feed(memoryview(buf)[:n])
        return self.step(max_requests)

    def step(self, max_requests: int = 20, max_bytes: int = 4 * 1024 * 1024) -> tuple[bytes, bool]:
        """Answer up to ``max_requests`` buffered requests: ``(reply_bytes, more)``.

        ``more`` is true when buffered requests or a streamed reply remain; the caller sends
        the bytes, yields to other connections, and calls ``step`` again. ``self.closing``
        says the connection must be closed after the bytes are sent.
        """
        if self.gate is not None:
            return self._authenticate(max_requests)
        out: list[bytes] = []
        size = 0
        parser = self.parser
        verbose = self.node.verbosity > 1
        starved = False  # the parser needs more bytes before it can go on
        for _ in range(max_requests):
            if self.stream is not None:
                try:
                    for chunk in self.stream:
                        out.append(self._log_out(chunk) if verbose else chunk)
                        size += len(chunk)
                        if size >= max_bytes:
                            break
                    else:
                        self.stream = None
                except DropPending as exc:
                    self.stream = None
                    out.clear()
                    out.append(self._log_out(exc.reply) if verbose else exc.reply)
                if self.stream is not None:
                    break
            if parser.pos == len(parser.buf) and (parser.oversized is None or parser.swallow):
                starved = True  # nothing buffered (the common end of a batch)
                break
            try:
                req = parser.next()
            except Close:
                self.closing = True
                break
            except ProtocolError as exc:
                if verbose:
                    self._log_in(parser.line)
                if getattr(exc, "noreply", False):
                    self._quiet(exc.reply())
                else:
                    out.append(self._log_out(exc.reply()) if verbose else exc.reply())
                continue
            if req is None:
                starved = True
                break
            if verbose:
                self._log_in(parser.line)
            self.last_cmd = self.store.clock.now
            try:
                if type(req) is list:
                    reply = self._command(req, out)
                else:
                    reply = self._storage(req)
            except ProtocolError as exc:
                reply = exc.reply()
            except DropPending as exc:
                out.clear()
                size = 0
                reply = exc.reply
            except Close:
                self.closing = True
                break
            verbose = self.node.verbosity > 1  # ``verbosity`` may have changed it
            if reply:
                out.append(self._log_out(reply) if verbose else reply)
                size += len(reply)
            if self.closing or size >= max_bytes:
                break
        data = b"".join(out)
        self.stats.bytes_written += len(data)
        more = not self.closing and (
            self.stream is not None or (not starved and parser.pos < len(parser.buf))
        )
        self.settled = (
            parser.pos == len(parser.buf)
            and parser.pending is None
            and not parser.swallow
            and self.stream is None
        )
        return data, more

    def _authenticate(self, max_requests: int) -> tuple[bytes, bool]:
        """``step`` before ``-Y``'s gate is passed. As in memcached, the replies the gate gives
        within one batch share one reply slot: each replaces the one before it."""
        gate = self.gate
        assert gate is not None
        parser = self.parser
        reply = b""
        for done in range(1, max_requests + 1):
            pos, answer, passed, close = gate.step(parser.buf, parser.pos, self.stats)
            parser.pos = parser.scan = pos
            if close:
                self.closing = True
                break
            if answer is None:
                break
            self.last_cmd = self.store.clock.now
            reply = answer
            if passed:
                self.gate = None
                self.stats.bytes_written += len(reply)
                if done < max_requests:
                    rest, more = self.step(max_requests - done)
                else:
                    rest, more = b"", parser.pos < len(parser.buf)
                return reply + rest, more
        self.stats.bytes_written += len(reply)
        more = not self.closing and answer is not None and parser.pos < len(parser.buf)
        return reply, more

    @property
    def trusted(self) -> bool:
        """May change the node's cluster membership: a loopback peer, or one that proved who it
        is (``-Y`` credentials or a verified TLS client certificate)."""
        return (
            _is_loopback(self.peer)
            or (self.node.authfile is not None and self.gate is None)
            or self.verified_cert
        )

    # -- the -vv transcript (transcript.py decides which reply lines memcached prints) --------
    def _log_in(self, line: bytes) -> None:
        self.node.log(f"<{self.id} {line.decode('latin-1')}")
        self._command_word = line.lstrip(b" ").split(b" ", 1)[0]

    def _log_out(self, reply: bytes) -> bytes:
        for line in reply_lines(self._command_word, reply):
            self.node.log(f">{self.id} {line.decode('latin-1')}")
        return reply

    def _quiet(self, reply: bytes) -> bytes:
        """A reply that ``noreply`` swallows: nothing is sent; ``-vv`` still says it."""
        if self.node.verbosity > 1:
            line = reply.split(b"\r\n", 1)[0]
            self.node.log(f">{self.id} NOREPLY {line.decode('latin-1')}")
        return b""

    # -- storage ---------------------------------------------------------------------------
    def _storage(self, req: StorageRequest) -> bytes:
        if req.meta is not None:
            return self._mset(req)
        if req.data is None:
            self.store.oversized(req.mode, req.key)
            return self._quiet(R_TOO_LARGE) if req.noreply else R_TOO_LARGE
        if req.data[-2:] != b"\r\n":
            self.store.count_set(len(req.key), req.flags, req.nbytes)
            return self._quiet(R_BAD_DATA_CHUNK) if req.noreply else R_BAD_DATA_CHUNK
        return self._store(
            req.mode, req.key, req.flags, req.exptime, req.data, req.cas, req.noreply
        )

    def _store(self, mode, key, flags, exptime, data, cas, noreply) -> bytes:
        """Store a value that arrived whole (``exptime`` as the client gave it): the reply."""
        store = self.store
        result, _ = store.store(mode, key, flags, store.clock.realtime(exptime), data, cas)
        if noreply:
            return self._quiet(_STORE_REPLIES[result]) if self.node.verbosity > 1 else b""
        return _STORE_REPLIES[result]

    # -- other commands --------------------------------------------------------------------
    def _command(self, tokens: list[bytes], out: list[bytes]) -> bytes:
        ntokens = len(tokens) + 1 if len(tokens) < MAX_TOKENS else MAX_TOKENS
        if ntokens < 2 or len(tokens[0]) < 2:
            return R_ERROR
        handler = self._dispatch.get(tokens[0])
        if handler is None:
            first = tokens[0][0]
            if first in _DISPATCHED_LETTERS or (first == 109 and len(tokens[0]) == 2):
                return R_ERROR
            if tokens[-1].startswith(b"HTTP/") or tokens[min(len(tokens), 23) - 1].startswith(
                b"HTTP/"
            ):
                raise Close()
            return R_ERROR
        return handler(tokens, ntokens, out)

    def _noreply(self, tokens: list[bytes], ntokens: int) -> bool:
        return tokens[ntokens - 2] == b"noreply"

    def _get(self, tokens, ntokens, out):
        if ntokens == 3:
            return self._get_one(tokens[1])
        return self._retrieve(tokens, ntokens, False, None)

    def _gets(self, tokens, ntokens, out):
        return self._retrieve(tokens, ntokens, True, None)

    def _gat(self, tokens, ntokens, out):
        return self._touch_retrieve(tokens, ntokens, False)

    def _gats(self, tokens, ntokens, out):
        return self._touch_retrieve(tokens, ntokens, True)

    def _touch_retrieve(self, tokens, ntokens, with_cas):
        if ntokens < 3:
            return R_ERROR
        exptime = c_strtonum(tokens[1], 32, True)
        if exptime is None:
            raise ClientError("invalid exptime argument")
        return self._answer(tokens[2:], with_cas, self.store.clock.realtime(exptime))

    def _retrieve(self, tokens, ntokens, with_cas, touch):
        if ntokens < 3:
            return R_ERROR
        return self._answer(tokens[1:], with_cas, touch)

    def _answer(self, keys, with_cas, touch):
        if len(keys) > GET_SLICE:
            self.stream = self._retrieve_stream(keys, with_cas, touch)
            return b""
        return self._retrieve_keys(keys, with_cas, touch)

    def _retrieve_stream(self, keys, with_cas, touch) -> Iterator[bytes]:
        """A long multiget answered in chunks of about STREAM_CHUNK bytes (the node never holds
        more than a chunk and one value of its reply), the last ending with END."""
        start = 0
        while start < len(keys):
            parts: list[bytes] = []
            start = self._retrieve_into(parts, keys, start, with_cas, touch, STREAM_CHUNK)
            if start == len(keys):
                parts.append(R_END)
            yield b"".join(parts)

    def _get_one(self, key: bytes) -> bytes:
        """The reply to ``get <key>``: ``_retrieve_keys`` for one key, without its loop."""
        if len(key) > KEY_MAX_LENGTH:
            raise DropPending(R_BAD_FORMAT)
        hit = self.store.get(key)
        st = self.stats
        st.cmd_get += 1
        if hit is None:
            st.get_misses += 1
            return R_END
        flags, data, _, lruid = hit
        st.lru_hits[lruid] += 1
        return b"VALUE %s %d %d\r\n%sEND\r\n" % (key, flags, len(data) - 2, data)

    def _retrieve_keys(self, keys, with_cas, touch) -> bytes:
        parts: list[bytes] = []
        self._retrieve_into(parts, keys, 0, with_cas, touch, 1 << 62)
        parts.append(R_END)
        return b"".join(parts)

    def _retrieve_into(self, parts, keys, start, with_cas, touch, budget) -> int:
        """Append the VALUE blocks of ``keys[start:]`` to ``parts`` until they reach ``budget``
        bytes; the index of the first key not looked up."""
        get = self.store.get
        counters = self.stats.cls
        lru_hits = self.stats.lru_hits
        looked_up = misses = size = 0
        try:
            for key in keys[start:] if start else keys:
                if len(key) > KEY_MAX_LENGTH:
                    # memcached drops every reply not yet sent and answers with this alone
                    # (its -vv has told of the keys it was sending).
                    if self.node.verbosity > 1:
                        self._log_out(b"".join(parts))
                    raise DropPending(R_BAD_FORMAT)
                looked_up += 1
                hit = get(key, touch)
                if hit is None:
                    misses += 1
                    continue
                flags, data, cas, lruid = hit
                if touch is None:
                    lru_hits[lruid] += 1
                else:
                    counters[lruid & 63].touch_hits += 1
                if with_cas:
                    head = b"VALUE %s %d %d %d\r\n" % (key, flags, len(data) - 2, cas)
                else:
                    head = b"VALUE %s %d %d\r\n" % (key, flags, len(data) - 2)
                parts.append(head)
                parts.append(data)
                size += len(head) + len(data)
                if size >= budget:
                    break
        finally:
            st = self.stats
            if touch is None:
                st.cmd_get += looked_up
                st.get_misses += misses
            else:
                st.cmd_touch += looked_up
                st.touch_misses += misses
        return start + looked_up

    def _delete(self, tokens, ntokens, out):
        if not 3 <= ntokens <= 5:
            return R_ERROR
        noreply = False
        if ntokens > 3:
            hold_is_zero = tokens[2] == b"0"
            noreply = self._noreply(tokens, ntokens)
            valid = (ntokens == 4 and (hold_is_zero or noreply)) or (
                ntokens == 5 and hold_is_zero and noreply
            )
            if not valid:
                error = ClientError("bad command line format.  Usage: delete <key> [noreply]")
                if noreply:
                    return self._quiet(error.reply())
                raise error
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return self._quiet(R_BAD_FORMAT) if noreply else R_BAD_FORMAT
        reply = R_DELETED if self.store.delete(tokens[1]) else R_NOT_FOUND
        return self._quiet(reply) if noreply else reply

    def _incr(self, tokens, ntokens, out):
        return self._arith(tokens, ntokens, True)

    def _decr(self, tokens, ntokens, out):
        return self._arith(tokens, ntokens, False)

    def _arith(self, tokens, ntokens, incr):
        if ntokens not in (4, 5):
            return R_ERROR
        noreply = self._noreply(tokens, ntokens)
        if len(tokens[1]) > KEY_MAX_LENGTH:
            error = bad_format()
        else:
            delta = c_strtonum(tokens[2], 64, False)
            if delta is None:
                error = ClientError("invalid numeric delta argument")
            else:
                result, digits, _, _ = self.store.delta(tokens[1], incr, delta)
                if result == DELTA_OK:
                    return self._quiet(digits + b"\r\n") if noreply else digits + b"\r\n"
                if result == NOT_FOUND:
                    return self._quiet(R_NOT_FOUND) if noreply else R_NOT_FOUND
                if result == NON_NUMERIC:
                    error = ClientError("cannot increment or decrement non-numeric value")
                else:
                    error = ServerError("out of memory")
        return self._quiet(error.reply()) if noreply else error.reply()

    def _touch(self, tokens, ntokens, out):
        if ntokens not in (4, 5):
            return R_ERROR
        noreply = self._noreply(tokens, ntokens)
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return self._quiet(R_BAD_FORMAT) if noreply else R_BAD_FORMAT
        exptime = c_strtonum(tokens[2], 32, True)
        if exptime is None:
            return self._quiet(R_BAD_EXPTIME) if noreply else R_BAD_EXPTIME
        found = self.store.touch(tokens[1], self.store.clock.realtime(exptime))
        reply = R_TOUCHED if found else R_NOT_FOUND
        return self._quiet(reply) if noreply else reply

    def _flush_all(self, tokens, ntokens, out):
        if not 2 <= ntokens <= 4:
            return R_ERROR
        noreply = self._noreply(tokens, ntokens)
        delay = 0
        if ntokens != (3 if noreply else 2):
            delay = c_strtonum(tokens[1], 32, True)
            if delay is None:
                self.stats.cmd_flush += 1
                return self._quiet(R_BAD_EXPTIME) if noreply else R_BAD_EXPTIME
        self.store.flush_all(delay)
        return self._quiet(R_OK) if noreply else R_OK

    def _version(self, tokens, ntokens, out):
        return b"VERSION %s\r\n" % VERSION.encode()

    def _verbosity(self, tokens, ntokens, out):
        if ntokens not in (3, 4):
            return R_ERROR
        noreply = self._noreply(tokens, ntokens)
        level = c_strtonum(tokens[1], 32, False)
        if level is None:
            return self._quiet(R_BAD_FORMAT) if noreply else R_BAD_FORMAT
        self.node.verbosity = min(level, 2)
        return self._quiet(R_OK) if noreply else R_OK

    def _quit(self, tokens, ntokens, out):
        raise Close()

    def _shutdown(self, tokens, ntokens, out):
        # Like memcached without -A; with -A the server stops (handled by server.py).
        if not self.node.cfg.shutdown_command:
            return b"ERROR: shutdown not enabled\r\n"
        if ntokens == 2 or (ntokens == 3 and tokens[1] == b"graceful"):
            self.node.shutdown_requested = True
            self.node.graceful_stop = ntokens == 3
            raise Close()
        raise ClientError("invalid shutdown mode")

    def _cache_memlimit(self, tokens, ntokens, out):
        if ntokens not in (3, 4):
            return R_ERROR
        raise ClientError("cache_memlimit is not supported: restart the node with another -m")

    def _config(self, tokens, ntokens, out):
        """``config get cluster`` and the admin's ``config set cluster [version=N] MEMBER...``.

        A member is ``host|ip|port``. Setting is accepted only from a trusted peer (loopback,
        ``-Y`` authenticated, or a verified TLS client certificate); the version goes up by
        one, or to N when N is newer than the current one.
        """
        if len(tokens) == 3 and tokens[1] == b"get" and tokens[2] == b"cluster":
            return self.node.cluster_config()
        if len(tokens) >= 3 and tokens[1] == b"set" and tokens[2] == b"cluster":
            if not self.trusted:
                raise ClientError(
                    "config set cluster is only accepted from loopback or an authenticated "
                    "connection"
                )
            members = tokens[3:]
            version = self.node.cluster_version + 1
            if members and members[0].startswith(b"version="):
                wanted = c_strtonum(members.pop(0)[8:], 64, False)
                if wanted is None or wanted <= self.node.cluster_version:
                    raise ClientError(f"version must be above {self.node.cluster_version}")
                version = wanted
            for member in members:
                parts = member.split(b"|")
                port = c_strtonum(parts[-1], 32, False) if len(parts) == 3 else None
                if port is None or not 0 < port < 65536 or not (parts[0] or parts[1]):
                    raise ClientError(f"bad cluster member {member.decode(errors='replace')!r}")
            self.node.cluster_version = version
            self.node.cluster_members = members
            return R_OK
        return R_ERROR

    def _refresh_certs(self, tokens, ntokens, out):
        """Load the TLS certificate files again (memcached built with TLS has it always)."""
        tls = self.node.tls
        if tls is None:
            return b"Error TLS not enabled\r\n"
        reply = tls.refresh()
        return b"" if reply == R_OK and self._noreply(tokens, ntokens) else reply

    def _stats(self, tokens, ntokens, out):
        store = self.store
        node = self.node
        if ntokens == 2:
            tls = node.tls.stats() if node.tls is not None else []
            return stats_text.general(store, node.cfg, len(node.connections), tls)
        sub = tokens[1]
        if sub == b"reset":
            self.stats.reset()
            return R_RESET
        if sub == b"detail":
            if ntokens >= 4 and tokens[2] in (b"on", b"off"):
                return R_OK
            if ntokens >= 4 and tokens[2] == b"dump":
                return R_END
            raise ClientError("usage: stats detail on|off|dump")
        if sub == b"settings":
            return stats_text.settings(store, node.cfg, node.verbosity)
        if sub == b"cachedump":
            if ntokens < 5:
                raise ClientError("bad command line")
            clsid = c_strtonum(tokens[2], 32, False)
            limit = c_strtonum(tokens[3], 32, False)
            if clsid is None or limit is None:
                raise bad_format()
            if clsid >= 64:
                raise ClientError("Illegal slab id")
            return stats_text.cachedump(store, clsid, limit)
        if sub == b"conns":
            return stats_text.conns(node.connections, node.listen_addr, store.clock.now)
        if sub == b"items":
            return stats_text.items(store)
        if sub == b"slabs":
            return stats_text.slabs(store)
        if sub == b"sizes":
            return stats_text.sizes()
        return R_ERROR

    def _slabs(self, tokens, ntokens, out):
        if ntokens == 5 and tokens[1] == b"reassign":
            src = c_strtonum(tokens[2], 32, True)
            dst = c_strtonum(tokens[3], 32, True)
            if src is None or dst is None:
                raise bad_format()
            word = self.store.reassign(src, dst)
            return {
                "OK": R_OK,
                "BUSY": b"BUSY currently processing reassign request\r\n",
                "BADCLASS": b"BADCLASS invalid src or dst class id\r\n",
                "NOSPARE": b"NOSPARE source class has no spare pages\r\n",
                "SAME": b"SAME src and dst class are identical\r\n",
            }[word]
        if ntokens >= 4 and tokens[1] == b"automove":
            noreply = self._noreply(tokens, ntokens)
            if tokens[2] == b"ratio":
                ratio = _c_strtod(tokens[3]) if ntokens >= 5 else None
                if ratio is None:
                    return self._quiet(R_ERROR) if noreply else R_ERROR
                self.store.automove_ratio = ratio
                return self._quiet(R_OK) if noreply else R_OK
            level = c_strtonum(tokens[2], 32, False)
            if level is None:
                return self._quiet(R_BAD_FORMAT) if noreply else R_BAD_FORMAT
            if level > 2:
                return self._quiet(R_ERROR) if noreply else R_ERROR
            self.store.automove = level
            return self._quiet(R_OK) if noreply else R_OK
        return R_ERROR

    def _lru_crawler(self, tokens, ntokens, out):
        if ntokens == 4 and tokens[1] == b"metadump":
            if out:
                return b"ERROR cannot pipeline other commands before metadump\r\n"
            which = tokens[2]
            if which == b"all":
                classes = None
            else:
                classes = set()
                for part in which.split(b","):
                    clsid = c_strtonum(part, 32, False)
                    if clsid is None or not 1 <= clsid <= self.store.slabs.largest:
                        return b"BADCLASS invalid class id\r\n"
                    classes.add(clsid)
            self.stream = _chunked(self.store.metadump(classes))
            return b""
        if ntokens == 4 and tokens[1] == b"crawl":
            self.store.stats.lru_crawler_starts += 1
            self.node.request_crawl()
            return R_OK
        if ntokens == 4 and tokens[1] in (b"tocrawl", b"sleep"):
            value = c_strtonum(tokens[2], 32, False)
            if value is None:
                raise bad_format()
            if tokens[1] == b"sleep" and value > 1_000_000:
                raise ClientError("sleep must be one second or less")
            return R_OK
        if ntokens == 3 and tokens[1] in (b"enable", b"disable"):
            return R_OK
        return R_ERROR


def _chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Reply parts joined into chunks of about STREAM_CHUNK bytes, ending with END."""
    chunk: list[bytes] = []
    size = 0
    for part in parts:
        chunk.append(part)
        size += len(part)
        if size >= STREAM_CHUNK:
            yield b"".join(chunk)
            chunk = []
            size = 0
    chunk.append(R_END)
    yield b"".join(chunk)


def _is_loopback(peer: str) -> bool:
    host = peer.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


def _c_strtod(text: bytes) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
