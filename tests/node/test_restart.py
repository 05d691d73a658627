"""Warm restarts (``-e <file>``, SIGUSR1) of the node, side by side with Debian's memcached
1.6.18 given the same flags and the same bytes: what comes back after a graceful stop, the
CAS counter and the clock going on, and memcached's messages where a restart is refused
(other settings, no metadata, damaged metadata, a clock that did not move on).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    MEMCACHED,
    RawClient,
    ServerProcess,
    free_port,
    next_second,
    start_memcached,
    start_node,
)

KINDS = ["node", pytest.param("memcached", marks=pytest.mark.skipif(
    MEMCACHED is None, reason="Debian's memcached binary is not installed"))]  # fmt: skip
CLEAN = "[restart] no metadata save file, starting with a clean cache"
FAILED = "[restart] failed to validate metadata, starting with a clean cache"

WRITES = (
    b"set long 5 1000 5\r\nvalue\r\n"
    b"set short 0 1 1\r\nx\r\n"  # expires while the server is down
    b"set forever 4294967295 0 2\r\nhi\r\n"
    b"set big 7 0 600000\r\n" + b"b" * 600000 + b"\r\n"  # a chained item
    b"set gone 0 0 1\r\ny\r\n"
    b"delete gone\r\n"
    b"set counter 0 0 2\r\n10\r\n"
    b"incr counter 5\r\n"
    b"ms meta 3 T500 F9\r\nabc\r\n"
    b"append long 0 0 1\r\n!\r\n"
    b"mn\r\n"
)
READS = b"gets long short forever big gone counter meta\r\nmg meta v c f s\r\nmn\r\n"
T_FLAG = re.compile(rb" t(-?\d+)")


def start(kind: str, *args: str) -> ServerProcess:
    return start_node(*args) if kind == "node" else start_memcached(*args)


def graceful_stop(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGUSR1)
    assert server.proc.wait(timeout=30) == 0
    assert "Gracefully stopping" in server.stderr()


def restart_lines(server: ServerProcess) -> list[str]:
    return [line for line in server.stderr().splitlines() if line.startswith("[restart]")]


def call(server: ServerProcess, data: bytes, end: bytes = b"MN\r\n") -> bytes:
    client = RawClient(server.port)
    try:
        return client.call(data, end)
    finally:
        client.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_graceful_stop_and_a_start_with_the_same_flags_bring_every_item_back(kind, tmp_path):
    memory = str(tmp_path / "memory")
    first = start(kind, "-e", memory, "-m", "64")
    try:
        assert restart_lines(first) == [CLEAN]
        assert call(first, WRITES).count(b"STORED") == 7
        before = call(first, READS)
        assert b"VALUE short 0 1 2\r\nx\r\n" in before
        ttl_before = int(T_FLAG.search(call(first, b"mg long t\r\nmn\r\n")).group(1))
        time.sleep(1.2)  # "short" (1 s) expires meanwhile
    finally:
        graceful_stop(first)
    assert Path(memory + ".meta").exists()
    next_second()
    second = start(kind, "-e", memory, "-m", "64")
    try:
        assert restart_lines(second) == []  # a warm start says nothing
        assert not Path(memory + ".meta").exists()  # read once, then gone
        after = call(second, READS)
        # Every item as it was (value, flags, CAS), but the one whose TTL ran out.
        assert after == before.replace(b"VALUE short 0 1 2\r\nx\r\n", b"")
        assert b"VALUE big 7 600000" in after and b"VALUE short" not in after
        # The remaining TTL went on counting while the server was down.
        ttl_after = int(T_FLAG.search(call(second, b"mg long t\r\nmn\r\n")).group(1))
        assert ttl_before - 5 <= ttl_after < ttl_before
        # The CAS counter goes on: memcached saved the next one, the next item gets one more.
        assert call(second, b"set new 0 0 1\r\nn\r\ngets new\r\n", b"END\r\n").endswith(
            b"VALUE new 0 1 11\r\nn\r\nEND\r\n"
        )
    finally:
        second.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_the_clock_goes_on_across_a_warm_restart(kind, tmp_path):
    memory = str(tmp_path / "memory")
    first = start(kind, "-e", memory)
    try:
        stats = dict(
            line.split()[1:3] for line in call(first, b"stats\r\n", b"END\r\n").decode().split(
                "\r\n") if line.startswith("STAT ")
        )  # fmt: skip
        started = int(stats["time"]) - int(stats["uptime"])
        assert 0 <= int(stats["uptime"]) < 10  # memcached's uptime starts at 0
    finally:
        graceful_stop(first)
    next_second()
    second = start(kind, "-e", memory)
    try:
        text = call(second, b"stats\r\n", b"END\r\n").decode()
        stats = dict(line.split()[1:3] for line in text.split("\r\n") if line.startswith("STAT "))
        assert int(stats["time"]) - int(stats["uptime"]) == started  # the same start
        assert int(stats["uptime"]) >= 1
    finally:
        second.stop()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("flags", "refused"),
    [
        (["-m", "128"], "[restart] restart incompatible due to setting for [maxbytes] "
                        "[old value: 67108864]"),
        (["-f", "1.5"], "[restart] restart incompatible due to setting for [slab_config] "
                        "[old value: 1.25]"),
        (["-n", "64"], "[restart] restart incompatible due to setting for [chunk_size] "
                       "[old value: 48]"),
        (["-I", "2m"], "[restart] restart incompatible due to setting for [item_size_max] "
                       "[old value: 1048576]"),
    ],
)  # fmt: skip
def test_other_settings_start_empty_with_memcacheds_message(kind, flags, refused, tmp_path):
    memory = str(tmp_path / "memory")
    first = start(kind, "-e", memory)
    try:
        call(first, WRITES)
    finally:
        graceful_stop(first)
    next_second()
    second = start(kind, "-e", memory, *flags)
    try:
        assert restart_lines(second) == [refused, "[restart] missing some metadata lines", FAILED]
        assert call(second, b"get long counter\r\n", b"END\r\n") == b"END\r\n"
    finally:
        second.stop()


def test_another_lru_policy_starts_empty(tmp_path):
    """The items carry the LRU they are on; a node started with another policy starts empty
    (memcached's message; memcached itself does not compare its LRU settings)."""
    memory = str(tmp_path / "memory")
    first = start("node", "-e", memory)
    try:
        call(first, WRITES)
    finally:
        graceful_stop(first)
    next_second()
    second = start("node", "-e", memory, "-o", "lru_policy=sieve")
    try:
        refused = (
            "[restart] restart incompatible due to setting for [lru_policy] [old value: segmented]"
        )
        assert restart_lines(second) == [refused, FAILED]
        assert call(second, b"get long counter\r\n", b"END\r\n") == b"END\r\n"
    finally:
        second.stop()


def _damage_lines(meta: Path, change) -> None:
    lines = meta.read_text().splitlines()
    meta.write_text("\n".join(change(lines)) + "\n")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("damage", "said"),
    [
        ("truncated", ["[restart] missing some metadata lines", FAILED]),
        ("bad_cas", ["[restart] restart incompatible due to setting for [current_cas] "
                     "[old value: many]", "[restart] missing some metadata lines", FAILED]),
        ("stopped_later", ["[restart] restart incompatible due to setting for [stop_time] "
                           "[old value: {future}]", "[restart] missing some metadata lines",
                           FAILED]),
        ("killed", [CLEAN]),
    ],
)  # fmt: skip
def test_damaged_or_missing_metadata_starts_empty_with_memcacheds_message(
    kind, damage, said, tmp_path
):
    memory = str(tmp_path / "memory")
    meta = Path(memory + ".meta")
    first = start(kind, "-e", memory)
    try:
        call(first, WRITES)
    finally:
        if damage == "killed":
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
        else:
            graceful_stop(first)
    future = int(time.time()) + 3600
    if damage == "truncated":
        _damage_lines(meta, lambda lines: lines[:10])
    elif damage == "bad_cas":
        _damage_lines(
            meta,
            lambda lines: [
                "Kcurrent_cas many" if line.startswith("Kcurrent_cas ") else line for line in lines
            ],
        )
    elif damage == "stopped_later":  # as if the clock went back: memcached's sanity check
        _damage_lines(
            meta,
            lambda lines: [
                f"Kstop_time {future}" if line.startswith("Kstop_time ") else line for line in lines
            ],
        )
    next_second()
    second = start(kind, "-e", memory)
    try:
        assert restart_lines(second) == [line.format(future=future) for line in said]
        assert call(second, b"get long counter\r\n", b"END\r\n") == b"END\r\n"
        # ... and it works as a clean cache.
        assert call(second, b"set k 0 0 1\r\nv\r\nget k\r\n", b"END\r\n").endswith(
            b"VALUE k 0 1\r\nv\r\nEND\r\n"
        )
    finally:
        second.stop()


def test_a_damaged_memory_file_starts_empty(tmp_path):
    """Beyond memcached (which trusts the file): item memory that is not what was saved."""
    memory = tmp_path / "memory"
    first = start_node("-e", str(memory))
    try:
        call(first, WRITES)
    finally:
        graceful_stop(first)
    with open(memory, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff" * 16)
    next_second()
    second = start_node("-e", str(memory))
    try:
        lines = restart_lines(second)
        assert lines[-1] == FAILED and "does not match its metadata" in lines[0]
        assert call(second, b"get long\r\n", b"END\r\n") == b"END\r\n"
    finally:
        second.stop()


@pytest.mark.skipif(MEMCACHED is None, reason="Debian's memcached binary is not installed")
def test_memcacheds_file_and_ours_refuse_each_other(tmp_path):
    """Their memory is laid out otherwise: each starts empty on the other's file."""
    theirs, ours = str(tmp_path / "theirs"), str(tmp_path / "ours")
    for server in (start_memcached("-e", theirs), start_node("-e", ours)):
        call(server, WRITES)
        graceful_stop(server)
    next_second()
    node, memcached = start_node("-e", theirs), start_memcached("-e", ours)
    try:
        assert restart_lines(node)[0].startswith(
            "[restart] restart incompatible due to setting for [mmap_oldbase] [old value: 0x"
        )
        assert restart_lines(memcached)[:2] == [
            "[restart] failed to parse mmap_oldbase: ringcache",
            "[restart] restart incompatible due to setting for [mmap_oldbase] "
            "[old value: ringcache]",
        ]
        for server in (node, memcached):
            assert restart_lines(server)[-1] == FAILED
            assert call(server, b"get long\r\n", b"END\r\n") == b"END\r\n"
    finally:
        node.stop()
        memcached.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_graceful_is_a_graceful_stop(kind, tmp_path):
    memory = str(tmp_path / "memory")
    first = start(kind, "-e", memory, "-A")
    call(first, WRITES)
    client = RawClient(first.port)
    client.send(b"shutdown graceful\r\n")
    assert client.closed(10)
    client.close()
    assert first.proc.wait(timeout=30) == 0
    assert "Gracefully stopping" in first.stderr()
    next_second()
    second = start(kind, "-e", memory)
    try:
        assert call(second, b"get counter\r\n", b"END\r\n") == b"VALUE counter 0 2\r\n15\r\nEND\r\n"
    finally:
        second.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_too_little_memory_for_a_memory_file(kind, tmp_path):
    """-e preallocates a page for every class: memcached's message and status 1."""
    flags = ["-l", "127.0.0.1", "-p", str(free_port()), "-U", "0", "-e", str(tmp_path / "m")]
    if kind == "node":
        argv = [sys.executable, "-m", "ringcache.node", *flags, "-m", "32"]
    else:
        argv = [MEMCACHED, *flags, "-m", "32", *(["-u", "root"] if os.geteuid() == 0 else [])]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-2:] == [
        "Error while preallocating slab memory!",
        "If using -L or other prealloc options, max memory must be at least 39 megabytes.",
    ]


class Wall:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


def _contents(store) -> dict[int, list[tuple[bytes, tuple, bytes]]]:
    """Every class's items in LRU order: key, header fields, value."""
    return {
        clsid: [(store.key_of(hd), store.fields(hd), store.value(hd)) for hd in store.items(clsid)]
        for clsid in range(1, store.slabs.largest + 1)
    }


def _slab_state(store) -> list:
    slabs = store.slabs
    state = [
        list(slabs.page_class),
        list(slabs.free_pages),
        slabs.mem_malloced,
        slabs.limit_reached,
    ]
    for cls in slabs.classes[1:]:
        state.append([cls.pages, cls.free_head, cls.free_count, cls.end_handle, cls.end_left,
                      cls.heads, cls.tails, cls.lru_counts, cls.lru_bytes, cls.used, cls.hand])  # fmt: skip
    return state


def _workload(store, rng, model: dict, count: int) -> None:
    from ringcache.node.defs import SET

    for i in range(count):
        key = b"k%d" % rng.randrange(4000)
        roll = rng.random()
        if roll < 0.7:
            size = rng.choice([rng.randrange(1, 100), rng.randrange(100, 5000), 700_000])
            value = bytes([65 + i % 26]) * size + b"\r\n"
            exptime = rng.choice([0, 0, store.clock.now + rng.randrange(1, 30)])
            store.store(SET, key, i % 7, exptime, value)
            model[key] = value
        elif roll < 0.8:
            store.delete(key)
            model.pop(key, None)
        else:
            store.get(key)
        if i % 500 == 0:  # a page moved to another class (slabs reassign)
            store.reassign(-1, rng.randrange(1, store.slabs.largest + 1))


def test_a_restored_store_is_the_saved_one_and_goes_on_working(tmp_path):
    """In one process, past evictions and page moves: the restored store holds the same items
    in the same LRU order with the same fields, and takes more writes and evictions."""
    import random

    from ringcache.node import restart
    from ringcache.node.config import parse_args
    from ringcache.node.slabs import MemoryFile
    from ringcache.node.store import Clock, Store

    cfg = parse_args(["-m", "64", "-e", str(tmp_path / "memory")])
    wall = Wall()
    rng = random.Random(7)
    memory = MemoryFile(cfg.memory_file, cfg.memory_limit, cfg.slab_page_size)
    store = Store(cfg, Clock(wall), memory=memory)
    said: list[str] = []
    assert not restart.restore(store, cfg, memory, said.append)
    store.slabs.preallocate()
    model: dict[bytes, bytes] = {}
    _workload(store, rng, model, 20_000)
    # Memory ran out: items were evicted and pages moved between classes.
    assert store.stats.class_sum("evicted") > 0 and store.stats.slabs_moved > 0
    saved, saved_cas, items = _contents(store), store.cas_id, store.curr_items
    slabs = _slab_state(store)
    restart.save(store, cfg, memory)
    wall.t += 5
    memory = MemoryFile(cfg.memory_file, cfg.memory_limit, cfg.slab_page_size)
    again = Store(cfg, Clock(wall), memory=memory)
    assert restart.restore(again, cfg, memory, said.append), said
    assert said == [CLEAN]  # the first start only
    assert _contents(again) == saved
    assert _slab_state(again) == slabs
    assert again.curr_items == items and again.cas_id == saved_cas + 1
    assert again.bytes == store.bytes
    for key, value in model.items():
        hit = again.get(key)
        assert hit is None or hit[1] == value  # gone (evicted, expired) or the same
    _workload(again, rng, model, 20_000)
    for key, value in model.items():
        hit = again.get(key)
        assert hit is None or hit[1] == value
    assert again.curr_items == sum(c.count for c in again.slabs.classes)
    memory.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges (-u) needs root")
def test_the_memory_file_belongs_to_the_user_the_node_runs_as():
    """As memcached, which creates the file once it runs as -u's user: that user can write the
    metadata at the graceful stop and read both files at the next start."""
    import pwd
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="ringcache-shm-", dir="/tmp")  # reachable by nobody
    os.chmod(folder, 0o777)
    memory = os.path.join(folder, "memory")
    nobody = pwd.getpwnam("nobody")
    try:
        first = start_node("-e", memory, "-u", "nobody")
        try:
            call(first, WRITES)
        finally:
            graceful_stop(first)
        assert os.stat(memory).st_uid == nobody.pw_uid
        assert os.stat(memory + ".meta").st_uid == nobody.pw_uid
        next_second()
        second = start_node("-e", memory, "-u", "nobody")
        try:
            assert restart_lines(second) == []
            got = call(second, b"get counter\r\n", b"END\r\n")
            assert got == b"VALUE counter 0 2\r\n15\r\nEND\r\n"
        finally:
            second.stop()
    finally:
        shutil.rmtree(folder)
