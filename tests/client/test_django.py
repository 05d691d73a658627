"""The Django backend, checked for the behaviours Django's own memcached backend tests check."""

from __future__ import annotations

import os
import pickle
import signal
import time

import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True)

from django.core.cache import CacheKeyWarning, InvalidCacheKey
from django.core.cache.backends.base import DEFAULT_TIMEOUT

from ringcache.client.django import RingCache
from tests.conftest import start_node


def make_cache(cluster, **params):
    location = params.pop("LOCATION", ";".join(n.location for n in cluster))
    options = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1}
    options.update(params.pop("OPTIONS", {}))
    return RingCache(location, {"OPTIONS": options, **params})


@pytest.fixture
def cache(cluster):
    c = make_cache(cluster)
    c.clear()
    yield c
    c.clear()
    c._cache.close()


def test_simple(cache):
    cache.set("key", "value")
    assert cache.get("key") == "value"
    assert cache.get("missing") is None
    assert cache.get("missing", "default") == "default"


def test_add(cache):
    assert cache.add("addkey1", "value")
    assert not cache.add("addkey1", "newvalue")
    assert cache.get("addkey1") == "value"


def test_prefix_and_version(cluster, cache):
    prefixed = make_cache(cluster, KEY_PREFIX="cacheprefix")
    cache.set("somekey", "value")
    assert not prefixed.has_key("somekey")
    prefixed.set("somekey", "value2")
    assert cache.get("somekey") == "value"
    assert prefixed.get("somekey") == "value2"
    raw = cache._cache.get(":1:somekey")
    assert raw == "value"  # Django's key format: KEY_PREFIX:VERSION:key
    cache.set("answer", 42, version=2)
    assert cache.get("answer") is None
    assert cache.get("answer", version=2) == 42
    assert cache.incr_version("answer", version=2) == 3
    assert cache.get("answer", version=3) == 42
    assert cache.decr_version("answer", version=3) == 2
    assert cache.get("answer", version=2) == 42


def test_custom_key_function(cluster):
    c = make_cache(cluster, KEY_FUNCTION=lambda key, prefix, version: f"custom-{key}")
    c.set("k", 1)
    assert c._cache.get("custom-k") == 1


def test_get_many_set_many_delete_many(cache):
    assert cache.set_many({"a": "a", "b": "b", "c": "c", "d": "d"}) == []
    assert cache.get_many(["a", "c", "d", "missing"]) == {"a": "a", "c": "c", "d": "d"}
    cache.delete_many(["a", "b"])
    assert cache.get_many(["a", "b", "c"]) == {"c": "c"}


def test_set_many_returns_failing_keys(cache):
    assert cache.set_many({"big": "x" * 2_000_000, "small": 1}) == ["big"]
    assert cache.get("small") == 1


def test_failed_set_deletes_the_old_value(cache):
    cache.set("key", "small")
    cache.set("key", "x" * 2_000_000)  # over memcached's 1 MB limit
    assert cache.get("key") is None


def test_delete_and_has_key(cache):
    cache.set("key1", "spam")
    assert cache.delete("key1") is True
    assert cache.delete("key1") is False
    cache.set("hello1", "goodbye1")
    assert cache.has_key("hello1")
    assert not cache.has_key("goodbye1")
    assert "hello1" in cache


def test_incr_decr(cache):
    cache.set("answer", 41)
    assert cache.incr("answer") == 42
    assert cache.incr("answer", 10) == 52
    assert cache.decr("answer", 10) == 42
    assert cache.incr("answer", -10) == 32
    with pytest.raises(ValueError):
        cache.incr("does_not_exist")
    with pytest.raises(ValueError):
        cache.decr("does_not_exist")


def test_data_types(cache):
    stuff = {"string": "this is a string", "int": 42, "list": [1, 2, 3, 4], "tuple": (1, 2),
             "dict": {"A": 1, "B": 2}, "bytes": b"\x00\xff", "none": None, "float": 1.5}  # fmt: skip
    cache.set("stuff", stuff)
    assert cache.get("stuff") == stuff
    for key, value in stuff.items():
        cache.set(key, value)
        assert cache.get(key) == value


def test_unicode_keys_and_values(cache):
    stuff = {
        "ascii": "ascii_value",
        "unicode_ascii": "Iñtërnâtiônàlizætiøn1",
        "Iñtërnâtiônàlizætiøn": "x",
    }
    for key, value in stuff.items():
        cache.set(key, value)
        assert cache.get(key) == value


def test_timeouts(cache):
    cache.set("expire1", "very quickly", 1)
    cache.set("forever", "value", None)
    cache.set("zero", "value", 0)
    cache.set("long", "value", 60 * 60 * 24 * 31)  # > 30 days: sent as absolute time
    cache.set("float", "value", 1.5)
    assert cache.get("zero") is None  # 0 = expire now
    assert cache.get("long") == "value"
    time.sleep(2.1)
    assert cache.get("expire1") is None
    assert cache.get("float") is None
    assert cache.get("forever") == "value"
    cache.add("zero-add", "v", 0)
    assert cache.get("zero-add") is None


def test_default_timeout_is_respected(cluster):
    c = make_cache(cluster, TIMEOUT=1)
    c.set("short", 1)
    assert c.get("short") == 1
    time.sleep(2.1)
    assert c.get("short") is None
    assert c.get_backend_timeout(DEFAULT_TIMEOUT) == 1


def test_touch(cache):
    cache.set("expire1", "very quickly", timeout=1)
    assert cache.touch("expire1", timeout=4) is True
    time.sleep(2.1)
    assert cache.has_key("expire1")
    assert cache.touch("expire1", timeout=0) is True
    assert not cache.has_key("expire1")
    assert cache.touch("nonexistent") is False


def test_get_or_set(cache):
    assert cache.get_or_set("projector", 42) == 42
    assert cache.get_or_set("projector", 43) == 42
    assert cache.get_or_set("callable", lambda: "computed") == "computed"


def test_clear(cache):
    cache.set_many({"a": 1, "b": 2})
    cache.clear()
    assert cache.get_many(["a", "b"]) == {}


def test_invalid_keys(cache):
    for key in ["key with spaces", "key\x07control", "a" * 251]:
        with pytest.raises(InvalidCacheKey):
            cache.set(key, "value")
        with pytest.raises(InvalidCacheKey):
            cache.get(key)
    assert issubclass(InvalidCacheKey, ValueError)
    assert CacheKeyWarning


def test_uses_highest_pickle_version(cache):
    cache.set("p", {"a": 1})
    from pymemcache.client.base import Client as Plain

    server = cache._cache.server_for(":1:p")
    data = Plain(server.address).get(":1:p")
    assert data[:2] == pickle.dumps({"a": 1}, pickle.HIGHEST_PROTOCOL)[:2]


def test_location_forms(cluster):
    for location in (
        [n.location for n in cluster],
        ",".join(n.location for n in cluster),
        ";".join(n.location for n in cluster),
    ):
        c = make_cache(cluster, LOCATION=location)
        c.set("loc", 1)
        assert c.get("loc") == 1
        assert len(c._cache.servers) == 3
        c._cache.close()


def test_close_keeps_working(cache):
    cache.set("k", 1)
    cache.close()
    assert cache.get("k") == 1


def test_a_dead_node_is_a_miss_not_an_exception(cluster):
    nodes = [start_node() for _ in range(2)]
    c = make_cache(cluster, LOCATION=[n.location for n in nodes])
    try:
        c.set_many({f"k{i}": i for i in range(50)})
        os.kill(nodes[0].pid, signal.SIGKILL)
        nodes[0].proc.wait(5)
        values = [c.get(f"k{i}") for i in range(50)]
        assert None in values and any(v is not None for v in values)
        c.set("after", 1)
        assert c.get("after") == 1
    finally:
        c._cache.close()
        for n in nodes:
            n.stop()


def test_every_threads_backend_shares_one_client_per_process(cluster):
    """Django makes a backend object per thread; they share one client: one pool, one view of
    which node is out, one journal (Django's ticket 33625)."""
    import threading

    from django.core.cache import CacheHandler

    location = ";".join(n.location for n in cluster)
    options = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1}
    handler = CacheHandler(
        {
            "default": {
                "BACKEND": "ringcache.client.django.RingCache",
                "LOCATION": location,
                "OPTIONS": options,
            }
        }
    )
    backends = []

    def request():
        backend = handler["default"]
        backend.set("shared", 1)
        assert backend.get("shared") == 1
        backends.append(backend)

    threads = [threading.Thread(target=request) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len({id(b) for b in backends}) == 20  # Django's own objects, one per thread
    assert len({id(b._cache) for b in backends}) == 1


def test_a_dead_node_is_learned_once_by_a_thread_per_request_server():
    """As under ``manage.py runserver``: every request on a new thread, one node killed. The
    process learns it once (failure_limit failures), and one prober runs, not one per thread."""
    import threading

    from django.core.cache import CacheHandler

    nodes = [start_node() for _ in range(3)]
    try:
        location = ";".join(n.location for n in nodes)
        options = {"connect_timeout": 0.3, "timeout": 0.3, "probe_interval": 0.1}
        settings_ = {
            "default": {
                "BACKEND": "ringcache.client.django.RingCache",
                "LOCATION": location,
                "OPTIONS": options,
            }
        }
        os.kill(nodes[0].pid, signal.SIGKILL)
        nodes[0].proc.wait(5)
        handler = CacheHandler(settings_)
        results = []
        others = {t for t in threading.enumerate() if t.name == "ringcache-prober"}

        def request(i):
            backend = handler["default"]
            backend.set(f"code:{i}", "1234", 30)
            results.append(backend.get(f"code:{i}") == "1234")

        for i in range(50):
            t = threading.Thread(target=request, args=(i,))
            t.start()
            t.join(10)
        client = handler["default"]._cache
        stats = client.node_stats()[nodes[0].location]
        probers = [
            t for t in threading.enumerate() if t.name == "ringcache-prober" and t not in others
        ]
        print(
            f"\n[django] 50 requests, one node dead: {sum(results)} codes verified, "
            f"{stats['failures']} failures counted, {len(probers)} prober thread(s)"
        )
        assert stats["state"] == "ejected" and stats["failures"] <= 4  # not 2 per request
        assert sum(results) >= 48 and len(probers) == 1
        client.close()
    finally:
        for n in nodes:
            n.stop()
