"""Request scripts for the differential suite: the same bytes go to Debian's memcached and to a
node, and the replies must be the same bytes (CAS values compared by order of appearance,
volatile ``stats`` fields left out).

A script is a name and a list of steps; a step is ``bytes`` to send or a float, seconds to
sleep. Scripts use key names of their own so that they do not disturb each other.
"""

from __future__ import annotations

Script = tuple[str, list]

MODES = ["set", "add", "replace", "append", "prepend"]


def _storage_scripts() -> list[Script]:
    out: list[Script] = []
    for mode in MODES:
        for present in (False, True):
            for noreply in (False, True):
                k = f"st_{mode}_{int(present)}_{int(noreply)}".encode()
                pre = b"set %s 7 0 3\r\nold\r\n" % k if present else b""
                nr = b" noreply" if noreply else b""
                body = b"%s%s %s 9 0 3%s\r\nnew\r\nget %s\r\ngets %s\r\n" % (
                    pre,
                    mode.encode(),
                    k,
                    nr,
                    k,
                    k,
                )
                out.append((f"storage {mode} present={present} noreply={noreply}", [body]))
    return out


def _cas_scripts() -> list[Script]:
    return [
        ("cas missing key", [b"cas cas_a 0 0 1 1\r\nx\r\n"]),
        (
            "cas bad value",
            [b"set cas_b 0 0 1\r\nx\r\ncas cas_b 0 0 1 999999\r\ny\r\nget cas_b\r\n"],
        ),
        ("cas zero", [b"set cas_c 0 0 1\r\nx\r\ncas cas_c 0 0 1 0\r\ny\r\n"]),
        ("cas noreply missing", [b"cas cas_d 0 0 1 1 noreply\r\nx\r\nget cas_d\r\n"]),
        ("cas bad token", [b"cas cas_e 0 0 1 abc\r\nx\r\n"]),
        ("cas negative token", [b"cas cas_f 0 0 1 -1\r\nx\r\n"]),
        ("cas too few tokens", [b"cas cas_g 0 0 1\r\nx\r\n"]),
        ("cas too many tokens", [b"cas cas_h 0 0 1 1 noreply extra\r\nx\r\n"]),
        (
            "gets then cas changes cas",
            [b"set cas_i 0 0 1\r\nx\r\ngets cas_i\r\nset cas_i 0 0 1\r\ny\r\ngets cas_i\r\n"],
        ),
        (
            "incr changes cas",
            [b"set cas_j 0 0 2\r\n10\r\ngets cas_j\r\nincr cas_j 1\r\ngets cas_j\r\n"],
        ),
        (
            "touch keeps cas",
            [b"set cas_k 0 0 1\r\nx\r\ngets cas_k\r\ntouch cas_k 100\r\ngets cas_k\r\n"],
        ),
        (
            "append changes cas",
            [b"set cas_l 0 0 1\r\nx\r\ngets cas_l\r\nappend cas_l 0 0 1\r\ny\r\ngets cas_l\r\n"],
        ),
        (
            "failed add keeps cas",
            [b"set cas_m 0 0 1\r\nx\r\ngets cas_m\r\nadd cas_m 0 0 1\r\ny\r\ngets cas_m\r\n"],
        ),
    ]


def _cas_roundtrip() -> list[Script]:
    # The node and memcached number CAS differently over the whole run; the harness resolves
    # {CAS} to the value the server itself last returned on this connection.
    return [
        (
            "cas roundtrip match",
            [
                b"set cas_r1 0 0 1\r\nx\r\ngets cas_r1\r\n",
                b"cas cas_r1 3 0 1 {CAS}\r\ny\r\nget cas_r1\r\n",
            ],
        ),
        (
            "cas roundtrip stale",
            [
                b"set cas_r2 0 0 1\r\nx\r\ngets cas_r2\r\n",
                b"set cas_r2 0 0 1\r\nz\r\ncas cas_r2 0 0 1 {CAS}\r\ny\r\nget cas_r2\r\n",
            ],
        ),
        (
            "cas roundtrip deleted",
            [
                b"set cas_r3 0 0 1\r\nx\r\ngets cas_r3\r\n",
                b"delete cas_r3\r\ncas cas_r3 0 0 1 {CAS}\r\ny\r\n",
            ],
        ),
        (
            "cas roundtrip noreply",
            [
                b"set cas_r4 0 0 1\r\nx\r\ngets cas_r4\r\n",
                b"cas cas_r4 0 0 1 {CAS} noreply\r\ny\r\nget cas_r4\r\n",
            ],
        ),
    ]


def _retrieval_scripts() -> list[Script]:
    k250 = b"k" * 250
    k251 = b"k" * 251
    many = b" ".join(b"rt_m%d" % i for i in range(40))
    return [
        ("get missing", [b"get rt_none\r\n"]),
        (
            "get several with repeats",
            [b"set rt_a 1 0 1\r\na\r\nset rt_b 2 0 2\r\nbb\r\nget rt_a rt_x rt_b rt_a\r\n"],
        ),
        ("gets several", [b"set rt_c 1 0 1\r\nc\r\ngets rt_c rt_none rt_c\r\n"]),
        ("get 250-byte key", [b"set %s 0 0 1\r\nx\r\nget %s\r\n" % (k250, k250)]),
        ("get 251-byte key", [b"get %s\r\n" % k251]),
        ("get long key after hit", [b"set rt_d 0 0 1\r\nd\r\nget rt_d %s rt_d\r\n" % k251]),
        ("set 251-byte key", [b"set %s 0 0 1\r\nx\r\n" % k251]),
        ("set 251-byte key noreply", [b"set %s 0 0 1 noreply\r\nx\r\n" % k251]),
        ("get no key", [b"get\r\n"]),
        ("get trailing space", [b"get \r\n"]),
        ("gets no key", [b"gets\r\n"]),
        (
            "get 40 keys",
            [b"set rt_m3 0 0 1\r\n3\r\nset rt_m39 0 0 2\r\n39\r\nget " + many + b"\r\n"],
        ),
        ("bget", [b"set rt_e 0 0 1\r\ne\r\nbget rt_e\r\n"]),
        ("gat", [b"set rt_f 5 0 1\r\nf\r\ngat 100 rt_f rt_none\r\n"]),
        ("gats", [b"set rt_g 5 0 1\r\ng\r\ngats 100 rt_g\r\n"]),
        ("gat bad exptime", [b"gat abc rt_f\r\n"]),
        ("gat no key", [b"gat 10\r\n"]),
        ("gat nothing", [b"gat\r\n"]),
        ("gat negative expires", [b"set rt_h 0 0 1\r\nh\r\ngat -1 rt_h\r\nget rt_h\r\n"]),
        ("get multiple spaces", [b"set rt_i 0 0 1\r\ni\r\nget   rt_i    rt_i  \r\n"]),
        ("zero-length value", [b"set rt_j 0 0 0\r\n\r\nget rt_j\r\n"]),
        ("binary value", [b"set rt_k 0 0 6\r\n\x00\x01\r\n\xff\n\r\nget rt_k\r\n"]),
        ("key with control byte", [b"set rt_\x01l 0 0 1\r\nl\r\nget rt_\x01l\r\n"]),
        ("key with tab", [b"set rt\tm 0 0 1\r\nm\r\nget rt\tm\r\n"]),
    ]


def _error_scripts() -> list[Script]:
    lines = [
        b"",
        b"\r",
        b"x",
        b"GET a",
        b"Set a 0 0 1",
        b"bogus",
        b"set",
        b"set a",
        b"set a 0",
        b"set a 0 0",
        b"set a 0 0 1 noreply extra",
        b"add a 0 0",
        b"replace",
        b"append a",
        b"prepend a 0 0",
        b"delete",
        b"delete a 5",
        b"delete a 0 0",
        b"delete a noreply 0",
        b"delete a 1 2 3",
        b"incr",
        b"incr a",
        b"incr a 1 2 3",
        b"decr a",
        b"touch",
        b"touch a",
        b"touch a 1 2 3",
        b"verbosity",
        b"verbosity a",
        b"verbosity 1 2 3",
        b"flush_all a",
        b"flush_all 1 2 3",
        b"flush_all -1",
        b"stats bogus",
        b"stats detail",
        b"stats detail bogus",
        b"stats cachedump",
        b"stats cachedump a b",
        b"stats cachedump 99 0",
        b"slabs",
        b"slabs reassign",
        b"slabs reassign 1",
        b"slabs reassign a b",
        b"slabs reassign 1 1",
        b"slabs reassign 99 1",
        b"slabs reassign 1 2",
        b"slabs automove",
        b"slabs automove x",
        b"slabs automove 3",
        b"slabs automove 1",
        b"slabs automove ratio",
        b"slabs automove ratio 0.5 x",
        b"lru_crawler",
        b"lru_crawler bogus",
        b"lru_crawler tocrawl x",
        b"lru_crawler sleep 2000000",
        b"lru_crawler metadump",
        b"shutdown",
        b"shutdown graceful",
        b"version extra tokens",
        b"quitx",
        b"get_stuff a",
        b"mx",
        b"cache_memlimit",
        b"a b c d e f g h i j k l m n o p q r s t u v w x y z",
        b"set a b c d e f g h i j k l m n o p q r s t u v w x y z",
    ]
    return [(f"error {line!r}", [line + b"\r\n"]) for line in lines]


def _number_scripts() -> list[Script]:
    out: list[Script] = []
    for flags in [
        b"0",
        b"1",
        b"4294967295",
        b"4294967296",
        b"-1",
        b"+5",
        b"5x",
        b"007",
        b"-0",
        b"18446744073709551615",
        b"99999999999999999999",
    ]:
        out.append(
            (f"flags {flags!r}", [b"set nf 0 0 1\r\nx\r\nset nf %s 0 1\r\ny\r\nget nf\r\n" % flags])
        )
    # (A valid but huge length such as 2147483645 makes memcached swallow 2 GB before it
    # sends its reply; the node's swallowing is tested in test_protocol.py instead.)
    for vlen in [b"-1", b"abc", b"2147483646", b"1x"]:
        out.append((f"vlen {vlen!r}", [b"set nv 0 0 %s\r\nx\r\n" % vlen]))
    for exptime in [b"abc", b"4294967297", b"-2147483649", b"2592000", b"2592001", b"1000000000"]:
        out.append((f"exptime {exptime!r}", [b"set ne 0 %s 1\r\nx\r\nget ne\r\n" % exptime]))
    incr_cases = [
        (b"10", b"incr", b"5"),
        (b"18446744073709551615", b"incr", b"1"),
        (b"18446744073709551615", b"incr", b"2"),
        (b"5", b"decr", b"10"),
        (b"100", b"decr", b"1"),
        (b"100", b"decr", b"99"),
        (b"abc", b"incr", b"1"),
        (b"12abc", b"incr", b"1"),
        (b" 12", b"incr", b"1"),
        (b"-5", b"incr", b"1"),
        (b"+5", b"incr", b"1"),
        (b"18446744073709551616", b"incr", b"1"),
        (b"00000000000000000000000042", b"incr", b"1"),
        (b"1", b"incr", b"18446744073709551615"),
        (b"1", b"incr", b"18446744073709551616"),
        (b"1", b"incr", b"-1"),
        (b"1", b"incr", b"+3"),
        (b"1", b"incr", b"abc"),
        (b"1", b"decr", b"0"),
        (b"99", b"incr", b"1"),
    ]
    for value, op, delta in incr_cases:
        out.append(
            (
                f"{op.decode()} {value!r} by {delta!r}",
                [b"set ni 0 0 %d\r\n%s\r\n%s ni %s\r\nget ni\r\n" % (len(value), value, op, delta)],
            )
        )
    out += [
        ("incr missing", [b"incr ni_missing 1\r\ndecr ni_missing 1\r\n"]),
        ("incr empty value", [b"set ni_e 0 0 0\r\n\r\nincr ni_e 1\r\n"]),
        ("incr noreply", [b"set ni_n 0 0 1\r\n1\r\nincr ni_n 5 noreply\r\nget ni_n\r\n"]),
        ("incr long key", [b"incr %s 1\r\n" % (b"k" * 251)]),
        ("incr grows value", [b"set ni_g 3 0 1\r\n9\r\nincr ni_g 1\r\ngets ni_g\r\n"]),
    ]
    return out


def _data_chunk_scripts() -> list[Script]:
    return [
        ("data too long", [b"set dc_a 0 0 1\r\nabc\r\nget dc_a\r\n"]),
        ("data too short", [b"set dc_b 0 0 5\r\nab\r\n\r\nget dc_b\r\n"]),
        ("data with bare newline", [b"set dc_c 0 0 1\r\na\nget dc_c\r\n"]),
        ("data noreply bad chunk", [b"set dc_d 0 0 1 noreply\r\nabc\r\nget dc_d\r\n"]),
        (
            "bad chunk keeps old value",
            [b"set dc_e 0 0 1\r\na\r\nset dc_e 0 0 1\r\nbcd\r\nget dc_e\r\n"],
        ),
        ("bare newline line endings", [b"set dc_f 0 0 1\na\r\nget dc_f\nget dc_f\n"]),
        ("data arrives in pieces", [b"set dc_g 0 0 10\r\n01234", 0.05, b"56789\r\nget dc_g\r\n"]),
        ("line arrives in pieces", [b"se", 0.05, b"t dc_h 0 0 1\r", 0.05, b"\nh\r\nget dc_h\r\n"]),
        ("nul in command line", [b"set dc_i 0 0 1\x00 garbage\r\ni\r\nget dc_i\r\n"]),
    ]


def _big_scripts() -> list[Script]:
    one_meg = 1024 * 1024
    fits = one_meg - 48 - 8 - 1 - 1 - 2  # one-byte key, flags 0
    return [
        ("largest value that fits", [b"set b 0 0 %d\r\n%s\r\nget b\r\n" % (fits, b"v" * fits)]),
        (
            "one byte too large",
            [b"set b 0 0 %d\r\n%s\r\nget b\r\n" % (fits + 1, b"v" * (fits + 1))],
        ),
        (
            "too large with flags",
            [b"set b 1 0 %d\r\n%s\r\nget b\r\n" % (fits - 3, b"v" * (fits - 3))],
        ),
        (
            "too large set removes old",
            [
                b"set bg_o 0 0 1\r\no\r\nset bg_o 0 0 2000000\r\n"
                + b"x" * 2000000
                + b"\r\nget bg_o\r\n"
            ],
        ),
        (
            "too large add keeps old",
            [
                b"set bg_p 0 0 1\r\no\r\nadd bg_p 0 0 2000000\r\n"
                + b"x" * 2000000
                + b"\r\nget bg_p\r\n"
            ],
        ),
        (
            "too large noreply",
            [b"set bg_q 0 0 2000000 noreply\r\n" + b"x" * 2000000 + b"\r\nget bg_q\r\n"],
        ),
        (
            "chained 600 KB value",
            [
                b"set bg_r 5 0 600000\r\n"
                + bytes(range(256)) * 2343
                + b"\x00" * 192
                + b"\r\nget bg_r\r\n"
            ],
        ),
        (
            "append past limit",
            [
                b"set bg_s 0 0 600000\r\n"
                + b"a" * 600000
                + b"\r\nappend bg_s 0 0 600000\r\n"
                + b"b" * 600000
                + b"\r\nget bg_s\r\n"
            ],
        ),
        (
            "prepend to chained",
            [
                b"set bg_t 0 0 700000\r\n"
                + b"a" * 700000
                + b"\r\nprepend bg_t 0 0 3\r\nxyz\r\nget bg_t\r\n"
            ],
        ),
        (
            "big value pieces",
            [b"set bg_u 0 0 300000\r\n" + b"u" * 100000, 0.05, b"u" * 200000 + b"\r\nget bg_u\r\n"],
        ),
    ]


def _pipeline_scripts() -> list[Script]:
    many_sets = b"".join(b"set pl_%d 0 0 2\r\n%02d\r\n" % (i, i) for i in range(50))
    many_gets = b"".join(b"get pl_%d\r\n" % i for i in range(50))
    return [
        ("50 sets then 50 gets pipelined", [many_sets + many_gets]),
        (
            "mixed pipeline",
            [
                b"set pl_a 0 0 1\r\n1\r\nincr pl_a 5\r\nget pl_a\r\ndelete pl_a\r\nget pl_a\r\nbogus\r\n"
            ],
        ),
        (
            "noreply pipeline",
            [
                b"set pl_b 0 0 1 noreply\r\nb\r\nappend pl_b 0 0 1 noreply\r\nc\r\nincr pl_b 1 noreply\r\ndelete pl_c noreply\r\nget pl_b\r\n"
            ],
        ),
        (
            "flush then set pipelined",
            [
                b"set pl_d 0 0 1\r\nd\r\nflush_all\r\nget pl_d\r\nset pl_d 0 0 1\r\ne\r\nget pl_d\r\n"
            ],
        ),
        ("flush noreply", [b"set pl_e 0 0 1\r\ne\r\nflush_all noreply\r\nget pl_e\r\n"]),
        ("flush with delay", [b"set pl_f 0 0 1\r\nf\r\nflush_all 100\r\nget pl_f\r\n"]),
        ("flush zero", [b"set pl_g 0 0 1\r\ng\r\nflush_all 0\r\nget pl_g\r\n"]),
        ("verbosity", [b"verbosity 1\r\nverbosity 0 noreply\r\nverbosity 0\r\n"]),
        ("version", [b"version\r\n"]),
    ]


def _expiry_scripts() -> list[Script]:
    return [
        ("negative exptime", [b"set ex_a 0 -1 1\r\na\r\nget ex_a\r\n"]),
        ("absolute past exptime", [b"set ex_b 0 1000000000 1\r\nb\r\nget ex_b\r\n"]),
        ("absolute future exptime", [b"set ex_c 0 4000000000 1\r\nc\r\nget ex_c\r\n"]),
        (
            "expires after one second",
            [b"set ex_d 0 1 1\r\nd\r\nget ex_d\r\n", 2.1, b"get ex_d\r\n"],
        ),
        ("touch extends", [b"set ex_e 0 1 1\r\ne\r\ntouch ex_e 100\r\n", 2.1, b"get ex_e\r\n"]),
        ("gat extends", [b"set ex_f 0 1 1\r\nf\r\ngat 100 ex_f\r\n", 2.1, b"get ex_f\r\n"]),
        ("touch negative", [b"set ex_g 0 0 1\r\ng\r\ntouch ex_g -1\r\nget ex_g\r\n"]),
        ("touch missing", [b"touch ex_missing 10\r\n"]),
        ("touch bad exptime", [b"touch ex_g abc\r\n"]),
        ("touch noreply", [b"set ex_h 0 0 1\r\nh\r\ntouch ex_h 10 noreply\r\nget ex_h\r\n"]),
        ("add over expired", [b"set ex_i 0 -1 1\r\ni\r\nadd ex_i 0 0 1\r\nj\r\nget ex_i\r\n"]),
        (
            "append keeps exptime",
            [b"set ex_j 0 -1 1\r\nj\r\nappend ex_j 0 0 1\r\nk\r\nget ex_j\r\n"],
        ),
        ("delete expired", [b"set ex_k 0 -1 1\r\nk\r\ndelete ex_k\r\n"]),
    ]


def _close_scripts() -> list[Script]:
    return [
        ("quit", [b"set cl_a 0 0 1\r\na\r\nquit\r\nget cl_a\r\n"]),
        ("http probe", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"]),
        ("unknown command ending in HTTP", [b"bogus x HTTP/1.0\r\n"]),
        # The pause makes the read boundary (which decides memcached's rule) the same for both.
        ("2048 bytes without newline", [b"x" * 3000, 0.3, b"version\r\n"]),
        ("long multiget line", [b"get " + b" ".join(b"lk%d" % i for i in range(800)) + b"\r\n"]),
        ("long spaces before get", [b" " * 101 + b"get a" + b" b" * 1200, 0.3, b"\r\n"]),
        ("long get line without newline yet", [b"get a" + b" b" * 1200, 0.3, b"\r\n"]),
    ]


def _stats_scripts() -> list[Script]:
    return [
        ("stats", [b"stats\r\n"]),
        ("stats settings", [b"stats settings\r\n"]),
        (
            "stats slabs",
            [
                b"set ss_a 0 0 10\r\n0123456789\r\nset ss_b 0 0 500\r\n"
                + b"b" * 500
                + b"\r\nstats slabs\r\n"
            ],
        ),
        (
            # Overwrites of one key within its class (written over the old chunk once the
            # class has a free chunk), into another class and back, with set, cas and ms; the
            # slab and item counts, LRU order (metadump) and values must stay memcached's.
            "overwrites keep the slab and item counts",
            [
                b"set ow_a 1 0 100\r\n"
                + b"a" * 100
                + b"\r\nset ow_b 0 0 100\r\n"
                + b"b" * 100
                + b"\r\nset ow_a 2 0 90\r\n"
                + b"c" * 90
                + b"\r\nset ow_a 3 0 101\r\n"
                + b"d" * 101
                + b"\r\nset ow_b 0 0 3000\r\n"
                + b"e" * 3000
                + b"\r\nset ow_b 5 0 99\r\n"
                + b"f" * 99
                + b"\r\ngets ow_a ow_b\r\nms ow_a 95 F7 T100\r\n"
                + b"g" * 95
                + b"\r\nmg ow_a v f t\r\nset ow_c 0 0 100 noreply\r\n"
                + b"h" * 100
                + b"\r\nset ow_a 0 0 100\r\n"
                + b"i" * 100
                + b"\r\nget ow_a ow_b ow_c\r\nstats slabs\r\nstats items\r\n"
                + b"lru_crawler metadump all\r\n"
            ],
        ),
        ("stats items", [b"stats items\r\n"]),
        ("stats sizes", [b"stats sizes\r\n"]),
        ("stats detail on", [b"stats detail on\r\nstats detail off\r\n"]),
        ("stats reset", [b"stats reset\r\nstats\r\n"]),
        ("stats cachedump bad class", [b"stats cachedump 0 0\r\n"]),
        ("metadump after pipeline", [b"version\r\nlru_crawler metadump all\r\n"]),
        ("metadump bad class", [b"lru_crawler metadump 99\r\n"]),
    ]


def all_scripts() -> list[Script]:
    return (
        _storage_scripts()
        + _cas_scripts()
        + _cas_roundtrip()
        + _retrieval_scripts()
        + _error_scripts()
        + _number_scripts()
        + _data_chunk_scripts()
        + _big_scripts()
        + _pipeline_scripts()
        + _expiry_scripts()
        + _close_scripts()
        + _stats_scripts()
    )
