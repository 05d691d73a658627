"""memcached's meta commands (mg, ms, md, ma, me, mn) as 1.6.18's proto_text.c answers them.

This module owns what a meta command does with its flags and how its reply line is built:
flags are echoed in the order the client gave them, ``q`` hides only the nominal replies,
and errors are never hidden. It is a part of ``commands.Session`` (a mixin): the flags are
parsed by ``protocol`` and items are read and changed through ``store``; nothing here does
I/O.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .defs import (
    DELTA_OK,
    EXISTS,
    KEY_MAX_LENGTH,
    NO_MEMORY,
    NON_NUMERIC,
    NOT_FOUND,
    NOT_STORED,
    STORED,
    TOO_LARGE,
)
from .items import M_KEY_BINARY, M_STALE, M_TOKEN_SENT
from .protocol import (
    E_BAD_FORMAT,
    E_OPAQUE,
    META_MAX_OPAQUE,
    META_MAX_TOKENS,
    R_BAD_DATA_CHUNK,
    R_ERROR,
    R_NO_MEMORY,
    R_TOO_LARGE,
    MetaError,
    MetaFlags,
    StorageRequest,
    b64decode,
    b64encode,
    parse_meta_flags,
)
from .slabs import F_FETCHED, LRU_BITS, NONE

if TYPE_CHECKING:
    from .counters import Stats
    from .store import Store

R_MN = b"MN\r\n"
R_EN = b"EN\r\n"
_MS_STATUS = {STORED: b"HD", EXISTS: b"EX", NOT_FOUND: b"NF", NOT_STORED: b"NS"}
_O, _K, _C, _T, _N, _R, _S, _SMALL_T, _F, _L, _H = b"OkcTNRstflh"


def _key_flag(key: bytes, binary: bool) -> bytes:
    """`` k<key>``, or `` k<base64> b`` for a key that arrived in base64."""
    if binary:
        return b" k" + b64encode(key) + b" b"
    return b" k" + key


def _echo(tokens: list[bytes], key: bytes, binary: bool) -> list[bytes]:
    """The `` O…`` and `` k…`` parts that every reply carries, even a miss."""
    parts = []
    for tok in tokens:
        c = tok[0]
        if c == _O:
            if len(tok) > META_MAX_OPAQUE:
                raise MetaError(E_OPAQUE)
            parts.append(b" " + tok)
        elif c == _K:
            parts.append(_key_flag(key, binary))
    return parts


class MetaCommands:
    """The meta command handlers of a session (``commands.Session`` mixes this in)."""

    store: Store
    stats: Stats

    def _mn(self, tokens, ntokens, out):
        return R_MN

    def _flags(self, tokens: list[bytes], ntokens: int, too_long: str) -> MetaFlags:
        if len(tokens[1]) > KEY_MAX_LENGTH:
            raise MetaError(E_BAD_FORMAT)
        if ntokens > META_MAX_TOKENS:
            raise MetaError(too_long)
        return parse_meta_flags(tokens, 2)

    # -- mg --------------------------------------------------------------------------------
    def _mg(self, tokens, ntokens, out):
        if ntokens < 3:
            return R_ERROR
        of = self._flags(tokens, ntokens, "CLIENT_ERROR options flags are too long")
        if of.error:
            raise MetaError(of.error)
        store = self.store
        st = self.stats
        flags_tokens = tokens[2 : ntokens - 1]
        key = of.key
        hd = store.fetch(key)  # bumped below, once its flags are read
        created = False
        if hd == NONE and of.vivify:
            hd = store.create(key)
            created = hd != NONE
        if hd == NONE:
            # memcached counts a meta miss as a get miss even with T.
            st.get_misses += 1
            st.cmd_get += 1
            echo = _echo(flags_tokens, key, of.key_binary)
            if of.no_reply:
                return b""
            return b"EN" + b"".join(echo) + b"\r\n"
        exptime, itime, nbytes, flags, iflags, mflags, cas, clsid = store.fields(hd)
        now = store.clock.now
        realtime = store.clock.realtime
        parts = [b"VA %d" % (nbytes - 2) if of.value else b"HD"]
        won = ttl_set = False
        for tok in flags_tokens:
            c = tok[0]
            if c == _T:
                ttl_set = True
                exptime = realtime(of.exptime)
                store.set_exptime(hd, exptime)
            elif c == _N:
                if created:
                    exptime = realtime(of.autoviv)
                    store.set_exptime(hd, exptime)
                    won = True
            elif c == _R:
                if (
                    not mflags & M_TOKEN_SENT
                    and not created
                    and exptime
                    and exptime < realtime(of.recache)
                ):
                    won = True
            elif c == _S:
                parts.append(b" s%d" % (nbytes - 2))
            elif c == _SMALL_T:
                parts.append(b" t-1" if exptime == 0 else b" t%d" % ((exptime - now) & 0xFFFFFFFF))
            elif c == _C:
                parts.append(b" c%d" % cas)
            elif c == _F:
                parts.append(b" f%d" % flags)
            elif c == _L:
                parts.append(b" l%d" % ((now - itime) & 0xFFFFFFFF))
            elif c == _H:
                parts.append(b" h1" if iflags & F_FETCHED else b" h0")
            elif c == _O:
                if len(tok) > META_MAX_OPAQUE:
                    raise MetaError(E_OPAQUE)
                parts.append(b" " + tok)
            elif c == _K:
                parts.append(_key_flag(store.key_of(hd), bool(mflags & M_KEY_BINARY)))
        if mflags & M_TOKEN_SENT:
            parts.append(b" Z")
        if mflags & M_STALE:
            parts.append(b" X")
            if not mflags & M_TOKEN_SENT:
                won = True
        if won:
            parts.append(b" W")
            store.set_mflags(hd, mflags | M_TOKEN_SENT)
        parts.append(b"\r\n")
        if of.value:
            parts.append(store.value(hd))
        if not of.no_update and (of.locked or not created):
            store.bump(hd)
        if ttl_set:
            st.cmd_touch += 1
            st.cls[clsid].touch_hits += 1
        else:
            st.lru_hits[clsid | iflags & LRU_BITS] += 1  # the LRU it was hit on
            st.cmd_get += 1
        return b"".join(parts)

    # -- ms (the data block has been read; protocol parsed the line) ------------------------
    def _mset(self, req: StorageRequest) -> bytes:
        if req.error is not None:
            return req.error.reply()
        store = self.store
        of = req.meta
        assert of is not None
        if req.data is None:
            store.oversized(req.mode, req.key, meta=True)
            return R_TOO_LARGE
        if req.data[-2:] != b"\r\n":
            store.count_set(len(req.key), req.flags, req.nbytes)
            return R_BAD_DATA_CHUNK
        result, cas = store.store(
            req.mode,
            req.key,
            req.flags,
            store.clock.realtime(req.exptime),
            req.data,
            req.cas,
            set_stale=of.set_stale,
            mflags=M_KEY_BINARY if of.key_binary else 0,
            meta=True,
        )
        if result == TOO_LARGE:
            return R_TOO_LARGE
        if result == NO_MEMORY:
            return R_NO_MEMORY
        if result == STORED and of.no_reply:
            return b""
        parts = [_MS_STATUS[result]]
        for tok in req.tokens[2:]:
            c = tok[0]
            if c == _O:
                parts.append(b" " + tok)
            elif c == _K:
                parts.append(_key_flag(req.key, of.key_binary))
            elif c == _C:
                parts.append(b" c%d" % cas)
        parts.append(b"\r\n")
        return b"".join(parts)

    # -- md --------------------------------------------------------------------------------
    def _md(self, tokens, ntokens, out):
        if ntokens < 3:
            return R_ERROR
        of = self._flags(tokens, ntokens, "CLIENT_ERROR options flags too long")
        if of.error:
            raise MetaError("CLIENT_ERROR invalid or duplicate flag")
        echo = _echo(tokens[2 : ntokens - 1], of.key, of.key_binary)
        exptime = self.store.clock.realtime(of.exptime) if of.new_ttl else None
        result = self.store.meta_delete(
            of.key, of.req_cas if of.has_cas else None, of.set_stale, exptime
        )
        if result == STORED:
            if of.no_reply:
                return b""
            return b"HD" + b"".join(echo) + b"\r\n"
        return (b"EX" if result == EXISTS else b"NF") + b"".join(echo) + b"\r\n"

    # -- ma --------------------------------------------------------------------------------
    def _ma(self, tokens, ntokens, out):
        if ntokens < 3:
            return R_ERROR
        of = self._flags(tokens, ntokens, "CLIENT_ERROR options flags too long")
        if of.error:
            raise MetaError("CLIENT_ERROR invalid or duplicate flag")
        incr = True
        if of.mode:
            if of.mode in b"I+":
                incr = True
            elif of.mode in b"D-":
                incr = False
            else:
                raise MetaError("CLIENT_ERROR invalid mode for ma M token")
        store = self.store
        key = of.key
        flags_tokens = tokens[2 : ntokens - 1]
        result, digits, hd, in_place = store.delta(
            key, incr, of.delta, of.req_cas, count_miss=not of.vivify
        )
        created = False
        skip = False
        if result == DELTA_OK:
            skip = of.no_reply
        elif result == NON_NUMERIC:
            raise MetaError("CLIENT_ERROR cannot increment or decrement non-numeric value")
        elif result == NO_MEMORY:
            raise MetaError("SERVER_ERROR out of memory")
        elif result == NOT_FOUND and of.vivify:
            digits = b"%d" % of.initial
            hd = store.create(key, digits + b"\r\n")
            if hd == NONE:
                raise MetaError("SERVER_ERROR Out of memory allocating new item")
            created = in_place = True
        if hd == NONE:
            status = b"EX" if result == EXISTS else b"NF"
            return status + b"".join(_echo(flags_tokens, key, of.key_binary)) + b"\r\n"
        exptime, _, _, _, _, _, cas, _ = store.fields(hd)
        now = store.clock.now
        parts = [b"VA %d" % len(digits) if of.value else b"HD"]
        for tok in flags_tokens:
            c = tok[0]
            if c == _C:
                parts.append(b" c%d" % cas)
            elif c == _SMALL_T:
                parts.append(b" t-1" if exptime == 0 else b" t%d" % ((exptime - now) & 0xFFFFFFFF))
            elif c == _T or (c == _N and created):
                exptime = store.clock.realtime(of.exptime if c == _T else of.autoviv)
                if in_place:
                    store.set_exptime(hd, exptime)
            elif c == _O:
                if len(tok) > META_MAX_OPAQUE:
                    raise MetaError(E_OPAQUE)
                parts.append(b" " + tok)
            elif c == _K:
                parts.append(_key_flag(key, of.key_binary))
        if skip:
            return b""
        parts.append(b"\r\n")
        if of.value:
            parts.append(digits + b"\r\n")
        return b"".join(parts)

    # -- me --------------------------------------------------------------------------------
    def _me(self, tokens, ntokens, out):
        if ntokens < 3 or len(tokens[1]) > KEY_MAX_LENGTH:
            raise MetaError(E_BAD_FORMAT)
        key = tokens[1]
        if ntokens >= 4 and tokens[2] == b"b":
            decoded = b64decode(key)
            if decoded is None:
                raise MetaError(E_BAD_FORMAT)
            key = decoded
        store = self.store
        self.stats.cmd_meta += 1
        hd = store.fetch(key)
        if hd == NONE:
            return R_EN
        exptime, itime, _, _, iflags, mflags, cas, clsid = store.fields(hd)
        now = store.clock.now
        shown = store.key_of(hd)
        if mflags & M_KEY_BINARY:
            shown = b64encode(shown)
        exp = -1 if exptime == 0 else _c_int(now - exptime)
        return b"ME %s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
            shown,
            exp,
            (now - itime) & 0xFFFFFFFF,
            cas,
            b"yes" if iflags & F_FETCHED else b"no",
            clsid,
            store.item_size(hd),
        )


def _c_int(value: int) -> int:
    """An unsigned 32-bit difference printed with ``%d``, as memcached's ``me`` does."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value >= 1 << 31 else value
