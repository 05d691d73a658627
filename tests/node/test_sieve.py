"""``-o lru_policy=sieve``: the node's eviction against SIEVE as its paper states it (Zhang et
al., NSDI'24), written here as a list model, request for request on one slab class; and the
option's parsing."""

from __future__ import annotations

import random

import pytest

from ringcache.node.config import ConfigError, parse_args
from ringcache.node.defs import SET
from ringcache.node.store import Store

VALUE = b"v" * 200 + b"\r\n"


class SieveModel:
    """A FIFO (index 0 the oldest) with a visited bit per object and a hand that moves from
    the oldest towards the newest, clearing bits, and evicts the first unvisited object."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue: list[bytes] = []
        self.visited: dict[bytes, bool] = {}
        self.hand: int | None = None

    def get(self, key: bytes) -> bool:
        if key in self.visited:
            self.visited[key] = True
            return True
        if len(self.queue) == self.capacity:
            self._evict()
        self.queue.append(key)
        self.visited[key] = False
        return False

    def _evict(self) -> None:
        hand = 0 if self.hand is None else self.hand
        while self.visited[self.queue[hand]]:
            self.visited[self.queue[hand]] = False
            hand = (hand + 1) % len(self.queue)
        del self.visited[self.queue.pop(hand)]
        self.hand = hand if hand < len(self.queue) else None


def look_aside(store: Store, key: bytes) -> bool:
    if store.get(key) is not None:
        return True
    store.store(SET, key, 0, 0, VALUE)
    return False


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_node_evicts_as_sieve_does(seed):
    store = Store(
        parse_args(["-m", "1", "-I", "512k", "-o", "lru_policy=sieve", "-o", "slab_automove=0"])
    )
    clsid = store.slabs.clsid(len(VALUE) + 60)
    capacity = store.slabs.classes[clsid].perslab  # -m 1: one page, no second
    model = SieveModel(capacity)
    rng = random.Random(seed)
    weights = [1 / (rank**0.9) for rank in range(1, 3 * capacity)]
    keys = [b"key%05d" % k for k in rng.choices(range(len(weights)), weights, k=30_000)]
    outcomes = [(look_aside(store, key), model.get(key)) for key in keys]
    assert store.curr_items == capacity
    assert all(ours == theirs for ours, theirs in outcomes)
    assert sum(ours for ours, _ in outcomes) > 10_000  # a trace with hits and evictions
    assert store.stats.cls[clsid].evicted == 30_000 - sum(o for o, _ in outcomes) - capacity


def test_the_segmented_default_is_not_sieve():
    """The same trace under the default policy differs from the model (so the test above
    tells the two apart)."""
    store = Store(parse_args(["-m", "1", "-I", "512k", "-o", "slab_automove=0"]))
    capacity = store.slabs.classes[store.slabs.clsid(len(VALUE) + 60)].perslab
    model = SieveModel(capacity)
    rng = random.Random(1)
    weights = [1 / (rank**0.9) for rank in range(1, 3 * capacity)]
    keys = [b"key%05d" % k for k in rng.choices(range(len(weights)), weights, k=30_000)]
    assert [look_aside(store, k) for k in keys] != [model.get(k) for k in keys]


def test_the_option():
    assert parse_args([]).lru_policy == "segmented"
    assert parse_args(["-o", "lru_policy=sieve"]).lru_policy == "sieve"
    assert parse_args(["-o", "no_lru_maintainer"]).lru_policy == "lru"
    with pytest.raises(
        ConfigError, match="lru_policy: 'clock' is not one of segmented, lru, sieve"
    ):
        parse_args(["-o", "lru_policy=clock"])
