"""Differential suite: every script of scripts.py is replayed byte for byte against Debian's
memcached 1.6.18 and against a ringcache node, and the replies are compared.

Normalisation is limited to what must differ: CAS values are compared by order of first
appearance (the two servers have numbered different histories), and ``stats`` values that
depend on time, process or implementation (pid, uptime, rusage, thread count, LRU segment
figures) are left out — their names and order are still compared.
"""

from __future__ import annotations

import re
import time

import pytest

from tests.conftest import MEMCACHED, RawClient, start_memcached, start_node
from tests.node.meta_scripts import meta_scripts
from tests.node.scripts import all_scripts

META_SCRIPTS = meta_scripts()
SCRIPTS = all_scripts() + META_SCRIPTS
# Sent after each script's bytes; its reply is what no script produces, so reading up to it
# reads exactly the script's replies.
SENTINEL = b"set __sentinel__ 0 0 14\r\nSENTINEL-7f3a9\r\nget __sentinel__\r\n"
SENTINEL_REPLY = b"STORED\r\nVALUE __sentinel__ 0 14\r\nSENTINEL-7f3a9\r\nEND\r\n"

VOLATILE_STATS = re.compile(
    rb"^(pid|uptime|time|libevent|rusage_\w+|threads|total_connections|curr_connections|"
    rb"connection_structures|response_obj_\w+|read_buf_\w+|bytes_read|bytes_written|"
    rb"lru_maintainer_juggles|lru_crawler_starts|hash_\w+|reserved_fds|time_in_listen_\w+|"
    rb"log_\w+|malloc_fails|moves_\w+|num_threads\w*|hash_algorithm|"
    rb"binding_protocol|time_since_server_cert_refresh|ssl_handshake_errors|\d+:(addr|listen_addr|state|secs_since_last_cmd)|"
    rb"items:\d+:(number_hot|number_warm|number_cold|age_hot|age_warm|age|moves_\w+|"
    rb"hits_to_\w+)|tcpport|inter|crawler_items_checked|evicted_active|"
    rb"slab_global_page_pool|oldest|conn_yields|get_expired|crawler_reclaimed|reclaimed|expired_unfetched|items:\d+:(reclaimed|"
    rb"expired_unfetched|crawler_reclaimed|crawler_items_checked|evicted_time|"
    rb"lrutail_reflocked)|lrutail_reflocked|stat_key_prefix|ext_\w+|slab_automove_freeratio|"
    rb"lru_bumps_dropped|direct_reclaims)$"
)
# Settings that exist in memcached for features a node does not have (extstore, NAPI).
ABSENT_SETTINGS = re.compile(rb"^(ext_\w+|slab_automove_freeratio)$")
CAS_IN_VALUE = re.compile(rb"^(VALUE \S+ \d+ \d+) (\d+)$")
CAS_IN_METADUMP = re.compile(rb" cas=(\d+) ")
TIME_IN_METADUMP = re.compile(rb" (exp|la)=(-?\d+) ")
# Meta replies: a CAS is a "c<n>" flag (and "cas=<n>" in "me"); remaining TTL and last access
# ("t<n>", "l<n>", "exp=", "la=") may differ by one second between two servers whose clocks
# tick at different moments, so they are compared with that tolerance.
META_REPLY = re.compile(rb"^(VA \d+|HD|EN|NS|EX|NF|ME) ")
META_CAS = re.compile(rb"(?<= )(c|cas=)(\d+)\b")
TIME_TOKEN = re.compile(rb"^(t|l|exp=|la=)(-?\d+)$")


def normalise(reply: bytes) -> list[bytes]:
    lines = reply.split(b"\r\n")
    cas_ids: dict[bytes, int] = {}
    out = []
    in_value = 0
    for line in lines:
        if in_value:
            # Value bytes are compared verbatim (they may contain anything).
            out.append(line)
            in_value -= 1
            continue
        m = CAS_IN_VALUE.match(line)
        if m:
            ident = cas_ids.setdefault(m.group(2), len(cas_ids))
            out.append(m.group(1) + b" cas#%d" % ident)
            continue
        if META_REPLY.match(line):
            line = META_CAS.sub(
                lambda m: m.group(1) + b"#%d" % cas_ids.setdefault(m.group(2), len(cas_ids)), line
            )
            out.append(line)
            continue
        if line.startswith(b"STAT "):
            parts = line.split(b" ", 2)
            name = parts[1]
            if ABSENT_SETTINGS.match(name):
                continue
            if VOLATILE_STATS.match(name):
                out.append(b"STAT " + name + b" <volatile>")
                continue
        if line.startswith(b"key="):
            line = CAS_IN_METADUMP.sub(b" cas=# ", line)
            line = TIME_IN_METADUMP.sub(rb" \1=# ", line)
        out.append(line)
    return out


def same_lines(actual: list[bytes], expected: list[bytes]) -> bool:
    """Equal, except that time tokens may differ by one second."""
    if len(actual) != len(expected):
        return False
    for a, e in zip(actual, expected, strict=True):
        if a == e:
            continue
        ta, te = a.split(b" "), e.split(b" ")
        if len(ta) != len(te) or not META_REPLY.match(e):
            return False
        for x, y in zip(ta, te, strict=True):
            if x == y:
                continue
            mx, my = TIME_TOKEN.match(x), TIME_TOKEN.match(y)
            if not (mx and my and mx.group(1) == my.group(1)):
                return False
            if abs(int(mx.group(2)) - int(my.group(2))) > 1:
                return False
    return True


def last_cas(reply: bytes) -> bytes | None:
    found = None
    for line in reply.split(b"\r\n"):
        m = CAS_IN_VALUE.match(line)
        if m:
            found = m.group(2)
        elif META_REPLY.match(line):
            for m in META_CAS.finditer(line):
                found = m.group(2)
    return found


def run_script(port: int, steps: list, tls=None) -> bytes:
    """Send each step; before a pause and at the end, read up to the sentinel's reply."""
    client = RawClient(port, tls=tls)
    replies = b""
    try:
        for i, step in enumerate(steps):
            if isinstance(step, float):
                time.sleep(step)
                continue
            try:
                client.send(step.replace(b"{CAS}", last_cas(replies) or b"0"))
                if i == len(steps) - 1 or not isinstance(steps[i + 1], float):
                    client.send(SENTINEL)
            except (BrokenPipeError, ConnectionResetError):
                replies += b"<closed>"
                break
            if i == len(steps) - 1 or not isinstance(steps[i + 1], float):
                replies += read_until_sentinel(client)
        return replies
    finally:
        client.close()


def read_until_sentinel(client: RawClient, timeout: float = 10.0) -> bytes:
    client.sock.settimeout(timeout)
    buf = b""
    while not buf.endswith(SENTINEL_REPLY):
        try:
            chunk = client.sock.recv(1 << 20)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        buf += chunk
    return buf


@pytest.fixture(scope="module")
def servers():
    if MEMCACHED is None:
        pytest.skip("Debian's memcached binary is not installed; CI always installs it")
    reference = start_memcached()
    node = start_node()
    yield reference, node
    reference.stop()
    node.stop()


def test_there_are_enough_scripts():
    assert len(SCRIPTS) - len(META_SCRIPTS) >= 150
    assert len(META_SCRIPTS) >= 120


@pytest.mark.parametrize("name,steps", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_same_replies(servers, name, steps):
    reference, node = servers
    expected = run_script(reference.port, steps)
    actual = run_script(node.port, steps)
    if not same_lines(normalise(actual), normalise(expected)):
        assert normalise(actual) == normalise(expected)


@pytest.mark.skipif(MEMCACHED is None, reason="Debian's memcached binary is not installed")
@pytest.mark.parametrize("header", [b"set big 0 0 %d\r\n", b"ms big %d T0\r\n"])
def test_a_value_too_large_is_answered_after_its_data_block(header):
    """memcached swallows the data block of a value that can never fit and only then answers;
    so does the node (the same bytes, split at the same place, the same replies at each)."""
    size = 2 * 1024 * 1024
    seen = []
    for start in (start_memcached, start_node):
        server = start()
        try:
            raw = RawClient(server.port)
            raw.send(header % size)
            before = raw.read_for(quiet=0.3, limit=1.0)
            raw.send(b"x" * size + b"\r\nmn\r\n")
            after = raw.read_until(b"MN\r\n")
            raw.close()
            seen.append((before, after))
        finally:
            server.stop()
    assert seen[0] == seen[1] == (b"", b"SERVER_ERROR object too large for cache\r\nMN\r\n")
