"""The slab class table and page accounting, against memcached's own ``-vv`` output."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from ringcache.node.config import parse_args
from ringcache.node.slabs import F_FREE, NONE, Slabs, class_sizes, class_table
from tests.conftest import MEMCACHED, needs_memcached, start_node

DEFAULT_SIZES = [
    96, 120, 152, 192, 240, 304, 384, 480, 600, 752, 944, 1184, 1480, 1856, 2320, 2904, 3632,
    4544, 5680, 7104, 8880, 11104, 13880, 17352, 21696, 27120, 33904, 42384, 52984, 66232,
    82792, 103496, 129376, 161720, 202152, 252696, 315872, 394840, 524288,
]  # fmt: skip

FLAG_SETS = [
    [],
    ["-f", "1.1"],
    ["-n", "16"],
    ["-f", "2", "-n", "100"],
    ["-I", "2m"],
    ["-I", "4m", "-f", "1.5"],
    ["-o", "slab_chunk_max=262144"],
    ["-f", "1.05"],
]


def test_default_classes_are_memcached_s():
    assert class_sizes() == DEFAULT_SIZES


def memcached_table(args: list[str]) -> str:
    extra = ["-u", "root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [MEMCACHED, "-p", "0", "-U", "0", "-vv", *extra, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=10)
    return "".join(line + "\n" for line in err.splitlines() if line.startswith("slab class"))


@needs_memcached
@pytest.mark.parametrize("args", FLAG_SETS, ids=[" ".join(a) or "defaults" for a in FLAG_SETS])
def test_class_table_matches_memcached(args):
    assert class_table(parse_args(args)) == memcached_table(args)


def test_node_prints_the_table_with_vv():
    node = start_node("-vv", "-f", "1.5")
    try:
        deadline = time.monotonic() + 5
        while "slab class" not in node.stderr() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        node.stop()
    lines = [line for line in node.stderr().splitlines() if line.startswith("slab class")]
    assert "\n".join(lines) + "\n" == class_table(parse_args(["-f", "1.5"]))


def test_pages_are_lazy_and_bounded():
    cfg = parse_args(["-m", "2"])
    slabs = Slabs(cfg)
    assert slabs.mem_malloced == 0
    cls = slabs.classes[1]
    handles = [slabs.alloc(1) for _ in range(cls.perslab)]
    assert slabs.mem_malloced == 1 << 20 and len(set(handles)) == cls.perslab
    # The next chunk needs a second page; the limit (2 MB) allows it, a third page is refused.
    handles += [slabs.alloc(1) for _ in range(cls.perslab)]
    assert slabs.mem_malloced == 2 << 20
    assert slabs.alloc(1) == NONE
    assert slabs.limit_reached
    # ...but a class with no page at all still gets its first one, as in memcached.
    assert slabs.alloc(5) != NONE
    assert slabs.mem_malloced == 3 << 20


def test_free_then_alloc_reuses_chunks():
    slabs = Slabs(parse_args(["-m", "2"]))
    a = slabs.alloc(3)
    b = slabs.alloc(3)
    slabs.free(a)
    assert slabs.pages[a >> 20][(a & 0xFFFFF) + 41] == F_FREE
    assert slabs.alloc(3) == a
    assert slabs.alloc(3) not in (a, b)


def test_release_page_moves_it_to_the_pool():
    slabs = Slabs(parse_args(["-m", "4"]))
    handles = [slabs.alloc(2) for _ in range(slabs.classes[2].perslab + 1)]
    page0 = handles[0] >> 20
    for h in handles:
        if h >> 20 == page0:
            slabs.free(h)
    slabs.release_page(page0)
    assert slabs.free_pages == [page0]
    assert page0 not in slabs.classes[2].pages
    # Another class takes the pooled page before asking for new memory.
    before = slabs.mem_malloced
    h = slabs.alloc(7)
    assert h >> 20 == page0 and slabs.mem_malloced == before
