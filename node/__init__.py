"""ringcache's cache node: a memcached-compatible server in Python on trio.

Modules: ``config`` (flags), ``protocol`` (sans-IO framing), ``commands`` and ``meta``
(request handling), ``state`` (what sessions share), ``store`` (item semantics) with
``assoc``, ``items`` and ``crawler`` beside it, ``slabs`` (memory), ``restart`` (``-e``: item
memory in a mapped file and warm restarts), ``counters`` (the
counters), ``stats`` (the ``stats`` texts), ``auth`` (``-Y``), ``tls`` (``-Z``), ``reactor``
(the hot loop) and ``server`` (the trio code around it). ``Node`` and ``Config`` are the
public entry points.
"""

from .config import Config, parse_args
from .server import Node
from .store import Clock, Store

__all__ = ["Clock", "Config", "Node", "Store", "parse_args"]
