"""The client's options as one frozen value, and the TTL rules that follow from them.

This module owns what every option means and its default (the keyword arguments of
``Client``, ``AsyncClient`` and Django's ``OPTIONS``), the checks made on them, and the two
rules of time they decide: the failover TTL that caps a write landing on a stand-in, and the
TTL a copy of a value gets. The engine's parts receive an ``Options``, never the engine.
The clocks are injected here: ``clock`` (monotonic: health, probes, pools) and ``wall_clock``
(absolute expiry times); nothing else in the engine reads the time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pymemcache.serde import pickle_serde

from .security import Security

# memcached's rule: an exptime above 30 days is an absolute Unix time.
REALTIME_MAXDELTA = 60 * 60 * 24 * 30


@dataclass(frozen=True)
class Options:
    """Timeouts, limits, TTLs and replicas: what the engine's parts and the drivers read.

    ``connect_timeout`` bounds each step of opening a connection (connect, TLS handshake, the
    login's send and receive), ``timeout`` each send and each receive of a request;
    ``failure_limit`` consecutive failures eject a node, which is probed after
    ``probe_interval`` seconds, backing off to ``probe_max_interval``; ``failover_ttl`` caps
    the TTL of what is written on a stand-in (0: no cap); ``pool_size`` idle connections are
    kept per node; ``journal_size`` keys may be journaled for an ejected node before it is
    flushed instead; ``replicas`` copies of every key are kept on the first nodes of its ring
    order; ``agreement`` keeps the debts (``debts``) that make the never-lie rules hold across
    every client of the cluster, not only within this one. ``discovery`` asks the nodes for
    the published membership every ``discovery_interval`` seconds (on by default when the
    LOCATION has DNS names, which are resolved again every ``dns_interval`` seconds, at
    ``dns_nameservers`` — "host:port" — or the system's resolvers).
    """

    connect_timeout: float = 0.5
    timeout: float = 0.5
    failure_limit: int = 2
    probe_interval: float = 0.25
    probe_max_interval: float = 4.0
    failover_ttl: int = 30
    raise_on_error: bool = False
    pool_size: int = 8
    serde: Any = pickle_serde
    key_prefix: bytes = b""
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    discovery: bool | None = None  # None: on for a LOCATION with DNS names (Engine decides)
    discovery_interval: float = 5.0
    dns_interval: float = 10.0
    dns_nameservers: tuple[str, ...] = ()
    replicas: int = 1
    journal_size: int = 10000
    agreement: bool = True
    security: Security | None = field(default=None)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError("replicas must be at least 1")
        for name in (
            "connect_timeout",
            "timeout",
            "probe_interval",
            "discovery_interval",
            "dns_interval",
        ):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")

    @classmethod
    def from_kwargs(
        cls,
        *,
        tls: Any = None,
        username: str | None = None,
        password: str | None = None,
        serde: Any = None,
        key_prefix: str | bytes = b"",
        **options: Any,
    ) -> Options:
        """The options from the client's keyword arguments (``tls``/``username``/``password``
        make one ``Security``; an unknown keyword is a ``TypeError`` naming it)."""
        names = cls.__dataclass_fields__
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(f"unknown client option: {unknown[0]!r}")
        nameservers = options.get("dns_nameservers", ())
        if isinstance(nameservers, str):  # "host:port,host:port", as an environment gives it
            nameservers = nameservers.split(",")
        options["dns_nameservers"] = tuple(n.strip() for n in nameservers if n.strip())
        return cls(
            serde=serde or pickle_serde,
            key_prefix=key_prefix.encode() if isinstance(key_prefix, str) else key_prefix,
            security=Security.from_options(tls, username, password),
            **options,
        )

    def failover_expire(self, expire: int) -> int:
        """``expire`` capped by the failover TTL: what a write that lands on a stand-in for an
        ejected owner is stored with (an absolute time becomes the seconds it has left)."""
        cap = self.failover_ttl
        if expire < 0 or not cap:
            return expire
        if expire == 0:
            return cap
        if expire > REALTIME_MAXDELTA:
            remaining = int(expire - self.wall_clock())
            return min(max(remaining, -1), cap) if remaining < cap else cap
        return min(expire, cap)

    def copy_expire(self, ttl: int | None, standin: bool) -> int | None:
        """The TTL a copy of a value gets: its own remaining TTL (capped on a stand-in), the
        failover TTL when it is unknown, None (no copy) when there is no bound to give it."""
        if ttl is None:
            return self.failover_ttl or None
        return self.failover_expire(ttl) if standin else ttl
