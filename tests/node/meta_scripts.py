"""Meta-protocol request scripts for the differential suite (mg, ms, md, ma, me, mn).

Each script uses keys of its own (``m<n>_…``); ``{CAS}`` is the CAS the server itself last
returned on the connection (a ``c`` flag or a ``gets`` value), as in scripts.py.
"""

from __future__ import annotations

import itertools

Script = tuple[str, list]

_ids = itertools.count()


def _k(name: str = "k") -> bytes:
    return b"m%d_%s" % (next(_ids), name.encode())


def _mg_flags() -> list[Script]:
    out = []
    for flags in [
        b"v",
        b"s",
        b"t",
        b"c",
        b"f",
        b"k",
        b"h",
        b"l",
        b"O123",
        b"q",
        b"u",
        b"v s t c f k h l",
        b"k v O9 c",
        b"c v",
        b"v q",
        b"q k O1",
        b"P",
        b"L",
    ]:
        k = _k()
        out.append(
            (
                f"mg hit {flags.decode()}",
                [b"ms %s 5 F7 T100\r\nhello\r\nmg %s %s\r\nmg %s v h l\r\n" % (k, k, flags, k)],
            )
        )
    for flags in [b"", b"v", b"k", b"O77", b"q", b"k O1 v", b"v c t s f", b"q k", b"N0"]:
        k = _k()
        out.append((f"mg miss {flags.decode()!r}", [b"mg %s %s\r\nmn\r\n" % (k, flags)]))
    k = _k()
    out.append(("mg no flags after classic set", [b"set %s 3 0 2\r\nhi\r\nmg %s\r\n" % (k, k)]))
    k = _k()
    out.append(("mg flags 0 prints f0", [b"set %s 0 0 2\r\nhi\r\nmg %s f v\r\n" % (k, k)]))
    k = _k()
    out.append(("mg large flags", [b"set %s 4294967295 0 2\r\nhi\r\nmg %s f v\r\n" % (k, k)]))
    k = _k()
    out.append(
        (
            "mg u does not mark fetched",
            [b"ms %s 1\r\nx\r\nmg %s v u\r\nmg %s h\r\nmg %s h\r\n" % (k, k, k, k)],
        )
    )
    k = _k()
    out.append(
        (
            "mg t before and after T",
            [b"ms %s 1 T100\r\nx\r\nmg %s t T50 t\r\nmg %s t\r\n" % (k, k, k)],
        )
    )
    k = _k()
    out.append(
        (
            "mg T counts as touch",
            [b"ms %s 1\r\nx\r\nmg %s T30\r\nmg nx%s T30\r\nstats\r\n" % (k, k, k)],
        )
    )
    k = _k()
    out.append(
        ("mg T0 makes immortal", [b"ms %s 1 T100\r\nx\r\nmg %s T0 t\r\nmg %s t\r\n" % (k, k, k)])
    )
    k = _k()
    out.append(("mg T-1 expires", [b"ms %s 1\r\nx\r\nmg %s T-1 t\r\nmg %s v\r\n" % (k, k, k)]))
    k = _k()
    out.append(
        ("mg chained value", [b"ms %s 600000\r\n%s\r\nmg %s s v\r\n" % (k, b"z" * 600000, k)])
    )
    return out


def _mg_errors() -> list[Script]:
    long_key = b"m_" + b"x" * 249
    cases = [
        b"mg",
        b"mg " + long_key + b" v",
        b"mg a b c d e f g h i j k l m n o p q r s t u",
        b"mg a v v",
        b"mg a z",
        b"mg a Tabc",
        b"mg a Nx",
        b"mg a R",
        b"mg a Fx",
        b"mg a Cx",
        b"mg a MSS",
        b"mg a Jx",
        b"mg a Dx",
        b"mg a O" + b"1" * 40,
        b"mg a Tabc zz",
        b"mg a \xff",
        b"mg a 5",
        b"mg a b",
        b"mg ZZZ b",
        b"mg a= b",
    ]
    return [(f"mg error {line[:40]!r}", [line + b"\r\nmn\r\n"]) for line in cases]


def _mg_leases() -> list[Script]:
    out = []
    k = _k()
    out.append(
        (
            "mg vivify win then Z then ms clears",
            [
                b"mg %s v c N30 t\r\nmg %s v c N30 t\r\nms %s 3 T60\r\nnew\r\nmg %s v t c\r\n"
                % (k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(("mg vivify t before N", [b"mg %s t N30 v\r\nmg %s t v\r\n" % (k, k)]))
    k = _k()
    out.append(("mg vivify counts a hit", [b"stats reset\r\nmg %s N30\r\nstats\r\n" % k]))
    k = _k()
    out.append(
        (
            "mg vivify then delete then vivify",
            [b"mg %s N30 c\r\nmd %s\r\nmg %s N30 c\r\n" % (k, k, k)],
        )
    )
    k = _k()
    out.append(("mg vivify k O q", [b"mg %s N30 k O5 q\r\nmg %s N30 k q\r\nmn\r\n" % (k, k)]))
    k = _k()
    out.append(
        (
            "mg recache win when ttl below",
            [
                b"ms %s 2 T10\r\nhi\r\nmg %s v R30 t\r\nmg %s v R30 t\r\nmg %s v R5\r\n"
                % (k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(("mg recache no win above", [b"ms %s 2 T100\r\nhi\r\nmg %s v R30\r\n" % (k, k)]))
    k = _k()
    out.append(("mg recache no ttl", [b"ms %s 2\r\nhi\r\nmg %s v R30\r\n" % (k, k)]))
    k = _k()
    out.append(
        (
            "md stale then readers",
            [
                b"ms %s 2 T60\r\nhi\r\nmd %s I\r\nmg %s v c\r\nmg %s v c\r\nmg %s v t\r\n"
                % (k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(
        (
            "md stale with T then ms replaces",
            [
                b"ms %s 2\r\nhi\r\nmd %s I T30\r\nmg %s t v\r\nms %s 3\r\nnew\r\nmg %s v t\r\n"
                % (k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(
        (
            "ms I with older cas writes stale",
            [
                b"ms %s 2 T60\r\nhi\r\nmg %s c\r\nms %s 2 C1 I T5\r\nho\r\nmg %s v t c\r\nmg %s v\r\n"
                % (k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(
        (
            "ms I keeps token sent",
            [
                b"ms %s 2\r\nhi\r\nmd %s I\r\nmg %s v\r\nms %s 2 C1 I\r\nho\r\nmg %s v\r\n"
                % (k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(
        (
            "ms I with matching cas",
            [b"ms %s 2 c\r\nhi\r\n" % k, b"ms %s 2 I C{CAS} c\r\nho\r\nmg %s v\r\n" % (k, k)],
        )
    )
    k = _k()
    out.append(
        (
            "ms I with newer cas",
            [b"ms %s 2\r\nhi\r\nms %s 2 I C99999999\r\nho\r\nmg %s v\r\n" % (k, k, k)],
        )
    )
    k = _k()
    out.append(
        ("ms I without cas", [b"ms %s 2\r\nhi\r\nms %s 2 I\r\nho\r\nmg %s v\r\n" % (k, k, k)])
    )
    k = _k()
    out.append(
        (
            "stale then win then win again after md I",
            [
                b"ms %s 1\r\na\r\nmd %s I\r\nmg %s\r\nmd %s I\r\nmg %s\r\nmg %s\r\n"
                % (k, k, k, k, k, k)
            ],
        )
    )
    return out


def _ms_modes() -> list[Script]:
    out = []
    for mode in b"EAPRS":
        for present in (False, True):
            for quiet in (False, True):
                k = _k()
                pre = b"ms %s 3 F3 T100\r\nold\r\n" % k if present else b""
                q = b" q" if quiet else b""
                body = b"%sms %s 3 M%c F9%s k c\r\nnew\r\nmn\r\nmg %s v f t\r\n" % (
                    pre,
                    k,
                    mode,
                    q,
                    k,
                )
                out.append((f"ms mode {chr(mode)} present={present} q={quiet}", [body]))
    for mode in b"EAPRS":
        for match in (False, True):
            k = _k()
            cas = b"{CAS}" if match else b"12345678"
            out.append(
                (
                    f"ms mode {chr(mode)} with cas match={match}",
                    [
                        b"ms %s 3 c\r\nold\r\n" % k,
                        b"ms %s 3 M%c C%s c\r\nnew\r\nmg %s v\r\n" % (k, mode, cas, k),
                    ],
                )
            )
    for mode in b"EAPRS":
        k = _k()
        out.append(
            (
                f"ms mode {chr(mode)} with cas missing key",
                [b"ms %s 3 M%c C5\r\nnew\r\nmg %s v\r\nstats\r\n" % (k, mode, k)],
            )
        )
    k = _k()
    out.append(("ms C0 on existing", [b"ms %s 1\r\na\r\nms %s 1 C0\r\nb\r\n" % (k, k)]))
    k = _k()
    out.append(("ms lowercase mode", [b"ms %s 1 Ms\r\na\r\n" % k]))
    k = _k()
    out.append(("ms zero length", [b"ms %s 0\r\n\r\nmg %s v s\r\n" % (k, k)]))
    k = _k()
    out.append(("ms flags ignored on ms", [b"ms %s 1 v s t f h l u N5 R5 D1 J1 P L\r\na\r\n" % k]))
    k = _k()
    out.append(
        ("ms then get and gets", [b"ms %s 3 F5 T0\r\nabc\r\nget %s\r\ngets %s\r\n" % (k, k, k)])
    )
    k = _k()
    out.append(
        (
            "ms append keeps flags and ttl",
            [b"set %s 6 100 1\r\na\r\nms %s 1 MA F1 T5\r\nb\r\nmg %s v f t\r\n" % (k, k, k)],
        )
    )
    return out


def _ms_errors() -> list[Script]:
    long_key = b"m_" + b"y" * 249
    cases = [
        b"ms\r\n",
        b"ms foo\r\nxx\r\n",
        b"ms " + long_key + b" 2\r\nhi\r\n",
        b"ms a x\r\nhi\r\n",
        b"ms a -1\r\nhi\r\n",
        b"ms a 2147483647\r\nhi\r\n",
        b"ms a T5\r\nhi\r\n",
        b"ms a 2 a b c d e f g h i j k l m n o p q r\r\nhi\r\n",
        b"ms a 2 T1 T2\r\nhi\r\n",
        b"ms a 2 z\r\nhi\r\n",
        b"ms a 2 Tx\r\nhi\r\n",
        b"ms a 2 Fx\r\nhi\r\n",
        b"ms a 2 Cx\r\nhi\r\n",
        b"ms a 2 MEE\r\nhi\r\n",
        b"ms a 2 MX O" + b"2" * 40 + b"\r\nhi\r\n",
        b"ms a 2 O" + b"2" * 40 + b"\r\nhi\r\n",
        b"ms a 2 q O" + b"2" * 40 + b"\r\nhi\r\n",
        b"ms a 2\r\nhix\r\n",
        b"ms a 2 q\r\nhix\r\n",
        b"ms a 2 b\r\nhi\r\n",
        b"ms a 2 Tx zz\r\nhi\r\n",
        b"ms a 2 Fx Tx\r\nhi\r\n",
        b"ms a 2 Tx Fx\r\nhi\r\n",
        b"ms a 2 Jx\r\nhi\r\n",
    ]
    out = [(f"ms error {c[:40]!r}", [c + b"mn\r\n"]) for c in cases]
    k = _k()
    out.append(
        (
            "ms too large drops the key",
            [b"ms %s 1\r\na\r\nms %s 2000000 ME\r\n%s\r\nmg %s v\r\n" % (k, k, b"q" * 2000000, k)],
        )
    )
    k = _k()
    out.append(
        (
            "ms too large with q",
            [b"ms %s 2000000 q\r\n%s\r\nmn\r\n" % (k, b"q" * 2000000)],
        )
    )
    return out


def _md_scripts() -> list[Script]:
    out = []
    for flags in [
        b"",
        b"q",
        b"k",
        b"O5 k",
        b"k O5 q",
        b"C1",
        b"I",
        b"I T30",
        b"T30",
        b"x",
        b"C",
        b"q q",
    ]:
        k = _k()
        out.append(
            (
                f"md hit {flags.decode()!r}",
                [b"ms %s 2 T100\r\nhi\r\nmd %s %s\r\nmg %s v t\r\nmn\r\n" % (k, k, flags, k)],
            )
        )
        k = _k()
        out.append((f"md miss {flags.decode()!r}", [b"md %s %s\r\nmn\r\n" % (k, flags)]))
    k = _k()
    out.append(
        ("md cas match", [b"ms %s 2 c\r\nhi\r\n" % k, b"md %s C{CAS}\r\nmg %s v\r\n" % (k, k)])
    )
    k = _k()
    out.append(("md cas zero", [b"ms %s 2\r\nhi\r\nmd %s C0\r\n" % (k, k)]))
    k = _k()
    out.append(("md stale cas changes", [b"ms %s 2 c\r\nhi\r\nmd %s I\r\nmg %s c\r\n" % (k, k, k)]))
    k = _k()
    out.append(
        (
            "md counts",
            [
                b"stats reset\r\nms %s 2\r\nhi\r\nmd %s\r\nmd %s\r\nmd %s I\r\nstats\r\n"
                % (k, k, k, k)
            ],
        )
    )
    out.append(("md too long key", [b"md " + b"z" * 251 + b"\r\n"]))
    out.append(("md no key", [b"md\r\n"]))
    out.append(("md too many flags", [b"md a b c d e f g h i j k l m n o p q r s t\r\n"]))
    out.append(("md opaque too long", [b"md a O" + b"3" * 40 + b"\r\n"]))
    return out


def _ma_scripts() -> list[Script]:
    out = []
    for flags in [
        b"",
        b"v",
        b"q",
        b"v q",
        b"D5 v",
        b"MD D3 v",
        b"M- v",
        b"M+ D2 v",
        b"MI v",
        b"Mx",
        b"MII",
        b"t v",
        b"T30 t v",
        b"t T30 v",
        b"c v",
        b"k O7 v",
        b"C1 v",
        b"N30 v",
        b"Dx",
        b"Jx",
        b"D18446744073709551615 v",
        b"MD D20 v",
    ]:
        k = _k()
        out.append(
            (
                f"ma hit {flags.decode()!r}",
                [b"set %s 0 100 2\r\n10\r\nma %s %s\r\nmg %s v t\r\nmn\r\n" % (k, k, flags, k)],
            )
        )
    for flags in [
        b"",
        b"q",
        b"v",
        b"N0 v",
        b"N0 J13 v t",
        b"N30 J5 v t c",
        b"N30 q",
        b"k O1",
        b"MD N0 J7 v",
        b"J5 v",
    ]:
        k = _k()
        out.append(
            (f"ma miss {flags.decode()!r}", [b"ma %s %s\r\nmg %s v t\r\nmn\r\n" % (k, flags, k)])
        )
    k = _k()
    out.append(
        (
            "ma grows past length",
            [b"set %s 0 100 2\r\n99\r\nma %s T30 t v\r\nmg %s t v\r\n" % (k, k, k)],
        )
    )
    k = _k()
    out.append(("ma non numeric", [b"ms %s 3\r\nabc\r\nma %s\r\nma %s q\r\n" % (k, k, k)]))
    k = _k()
    out.append(("ma empty value", [b"ms %s 0\r\n\r\nma %s v\r\n" % (k, k)]))
    k = _k()
    out.append(
        (
            "ma cas match",
            [b"set %s 0 0 1\r\n5\r\nmg %s c\r\n" % (k, k), b"ma %s C{CAS} v c\r\n" % k],
        )
    )
    k = _k()
    out.append(
        (
            "ma counts",
            [
                b"stats reset\r\nset %s 0 0 1\r\n5\r\nma %s\r\nma %s MD\r\nma nx%s\r\nma nx%s MD\r\nma nx%s N0\r\nstats\r\n"
                % (k, k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(("ma wraps", [b"set %s 0 0 20\r\n18446744073709551615\r\nma %s v\r\n" % (k, k)]))
    out.append(("ma no key", [b"ma\r\n"]))
    out.append(("ma too long key", [b"ma " + b"z" * 251 + b"\r\n"]))
    out.append(("ma opaque too long", [b"ma a N0 O" + b"4" * 40 + b"\r\nmg a v\r\n"]))
    return out


def _me_scripts() -> list[Script]:
    out = []
    k = _k()
    out.append(("me hit", [b"ms %s 5 T100 F3\r\nhello\r\nme %s\r\n" % (k, k)]))
    k = _k()
    out.append(("me after fetch", [b"set %s 0 0 2\r\nhi\r\nget %s\r\nme %s\r\n" % (k, k, k)]))
    k = _k()
    out.append(("me miss", [b"me %s\r\n" % k]))
    out.append(("me no key", [b"me\r\n"]))
    out.append(("me long key", [b"me " + b"q" * 251 + b"\r\n"]))
    out.append(("me bad base64", [b"me !!! b\r\n"]))
    out.append(("me base64", [b"ms bWVfYjY0 2 b\r\nhi\r\nme bWVfYjY0 b\r\nme me_b64\r\n"]))
    out.append(("me counts cmd_meta", [b"stats reset\r\nme zz\r\nme zz\r\nstats\r\n"]))
    return out


def _pipelines() -> list[Script]:
    out = []
    ks = [_k() for _ in range(4)]
    out.append(
        (
            "quiet pipeline of gets ends with mn",
            [
                b"".join(b"ms %s 1 q\r\n%d\r\n" % (k, i) for i, k in enumerate(ks[:2]))
                + b"".join(b"mg %s v q k\r\n" % k for k in ks)
                + b"mn\r\n"
            ],
        )
    )
    ks = [_k() for _ in range(3)]
    out.append(
        (
            "quiet deletes and sets",
            [
                b"".join(
                    b"ms %s 1 q O%d\r\nx\r\nmd %s q\r\nmd %s q O%d\r\n" % (k, i, k, k, i)
                    for i, k in enumerate(ks)
                )
                + b"mn\r\n"
            ],
        )
    )
    k = _k()
    out.append(
        (
            "mixed classic and meta",
            [
                b"set %s 1 0 1\r\na\r\nmg %s v f c\r\nms %s 1 F2\r\nb\r\ngets %s\r\nincr %s 1\r\nma %s v\r\n"
                % (k, k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(
        (
            "cas across classic and meta",
            [b"ms %s 1 c\r\na\r\n" % k, b"cas %s 0 0 1 {CAS}\r\nb\r\nmg %s v c\r\n" % (k, k)],
        )
    )
    k = _k()
    out.append(
        (
            "gets cas used by ms",
            [
                b"set %s 0 0 1\r\na\r\ngets %s\r\n" % (k, k),
                b"ms %s 1 C{CAS}\r\nb\r\nget %s\r\n" % (k, k),
            ],
        )
    )
    k = _k()
    out.append(
        (
            "touch then mg t",
            [
                b"ms %s 1\r\na\r\ntouch %s 100\r\nmg %s t\r\ngat 0 %s\r\nmg %s t\r\n"
                % (k, k, k, k, k)
            ],
        )
    )
    k = _k()
    out.append(
        ("flush_all then mg", [b"ms %s 1\r\na\r\nflush_all\r\nmg %s v\r\nme %s\r\n" % (k, k, k)])
    )
    out.append(("mn alone", [b"mn\r\n"]))
    out.append(("mn with junk", [b"mn a b c\r\n"]))
    out.append(("unknown meta commands", [b"mz foo\r\nmx\r\nm\r\nmgg a\r\nmz foo HTTP/1.1\r\n"]))
    out.append(
        (
            "mg pipelined with ms data containing a command",
            [b"ms pl_a 13\r\nmg pl_a v\r\nxx\r\nmg pl_a v\r\n"],
        )
    )
    return out


def _base64_keys() -> list[Script]:
    return [
        ("b64 ms mg k", [b"ms YjY0X2E= 2 b k\r\nhi\r\nmg YjY0X2E= b k v\r\nmg b64_a k v\r\n"]),
        (
            "b64 binary bytes key",
            [
                b"ms AAEC/w== 1 b\r\nz\r\nmg AAEC/w== b v k s\r\nmd AAEC/w== b k\r\nmg AAEC/w== b v\r\n"
            ],
        ),
        ("b64 miss with k", [b"mg bm9wZQ== b k v\r\n"]),
        ("b64 bad padding", [b"mg YQ=== b v\r\nmg Y=== b\r\nmg ==== b\r\n"]),
        ("b64 junk characters skipped", [b"ms YjY0!X2I= 1 b\r\nz\r\nmg b64_b v\r\n"]),
        ("b64 not multiple of four", [b"mg YWJ b v\r\nms YWJ 1 b\r\nz\r\n"]),
        ("b64 ma and md", [b"ma YjY0X2M= b N0 J3 v k\r\nmd YjY0X2M= b q\r\nmd YjY0X2M= b k\r\n"]),
        ("b64 padding in the middle", [b"mg YQ==YWJj b v k\r\nms YQ==YWJj 1 b\r\nz\r\nmg a v\r\n"]),
    ]


def _ttl_scripts() -> list[Script]:
    out = []
    k = _k()
    out.append(("ms T-1 is expired", [b"ms %s 1 T-1\r\na\r\nmg %s v\r\n" % (k, k)]))
    k = _k()
    out.append(("ms absolute past", [b"ms %s 1 T1000000000\r\na\r\nmg %s v\r\n" % (k, k)]))
    k = _k()
    out.append(("ms T2592000 relative", [b"ms %s 1 T2592000\r\na\r\nmg %s t\r\n" % (k, k)]))
    k = _k()
    out.append(
        (
            "ms T expires after sleep",
            [b"ms %s 1 T1\r\na\r\nmg %s v t\r\n" % (k, k), 2.2, b"mg %s v\r\nme %s\r\n" % (k, k)],
        )
    )
    k = _k()
    out.append(
        (
            "mg N vivify with short ttl expires",
            [b"mg %s N1 v\r\n" % k, 2.2, b"mg %s v c N30\r\n" % k],
        )
    )
    k = _k()
    out.append(("mg N negative", [b"mg %s N-1 v\r\nmg %s v\r\n" % (k, k)]))
    k = _k()
    out.append(
        ("md I T-1 expires stale", [b"ms %s 1\r\na\r\nmd %s I T-1\r\nmg %s v\r\n" % (k, k, k)])
    )
    return out


def meta_scripts() -> list[Script]:
    return (
        _mg_flags()
        + _mg_errors()
        + _mg_leases()
        + _ms_modes()
        + _ms_errors()
        + _md_scripts()
        + _ma_scripts()
        + _me_scripts()
        + _pipelines()
        + _base64_keys()
        + _ttl_scripts()
    )
