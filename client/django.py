"""A Django cache backend on the ringcache client: ``ringcache.client.django.RingCache``.

This module owns the mapping from Django's cache API to ``Client``: Django's timeout rules
(None = never, 0 = expire now, over 30 days = absolute time), key making and validation,
``OPTIONS`` passed to the client, and the client's lifetime: Django makes a backend object per
thread, and all of them share one ``Client`` per process for each configuration (one pool,
one view of which node is out, one recovery journal; Django's ticket 33625), which stays
correct across ``fork()`` (``sync.Client`` starts afresh in the child). It reuses Django's own
memcached base class so that every behaviour Django's memcached backends have, it has too.

    CACHES = {"default": {
        "BACKEND": "ringcache.client.django.RingCache",
        "LOCATION": ["10.0.0.1:11211", "10.0.0.2:11211"],
        "OPTIONS": {"failover_ttl": 30},
    }}
"""

from __future__ import annotations

import threading
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.memcached import BaseMemcachedCache
from django.utils.functional import cached_property

from . import sync
from .sync import Client

# One client per process for each (LOCATION, OPTIONS): {key: client}.
_SHARED: dict[tuple[str, str], Client] = {}
_SHARED_LOCK = threading.Lock()


def shared_client(servers: Any, options: dict[str, Any]) -> Client:
    """The process's client for this configuration, made on first use (again after it was
    closed)."""
    key = (repr(servers), repr(sorted(options.items(), key=lambda item: item[0])))
    with _SHARED_LOCK:
        client = _SHARED.get(key)
        if client is None or client.closed:
            client = _SHARED[key] = Client(servers, **options)
        return client


class RingCache(BaseMemcachedCache):
    """Django cache backend for a ringcache (or any memcached) cluster."""

    def __init__(self, server: str | list[str], params: dict[str, Any]) -> None:
        super().__init__(server, params, library=sync, value_not_found_exception=KeyError)
        self._class = Client

    @cached_property
    def _cache(self) -> Client:
        return shared_client(self._servers, self._options)

    def get_or_set(
        self, key: str, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        """Django's ``get_or_set``, stampede-safe: on a miss exactly one caller (across threads
        and processes) computes ``default``; the others wait for its value
        (``Client.get_or_set``)."""
        key = self.make_and_validate_key(key, version=version)
        return self._cache.get_or_set(key, default, self.get_backend_timeout(timeout))

    def delete(self, key: str, version: int | None = None, stale: bool = False) -> bool:
        """Django's ``delete``; ``stale=True`` marks the value stale instead: ``get_or_set``
        callers keep getting it while one of them recomputes it."""
        key = self.make_and_validate_key(key, version=version)
        return bool(self._cache.delete(key, stale=stale))

    def close(self, **kwargs: Any) -> None:
        # Django calls close() after every request. The client's pools are thread-safe and
        # its health knowledge (which node is ejected) must survive requests, so connections
        # are kept, as Django's PyLibMCCache keeps libmemcached's.
        pass
