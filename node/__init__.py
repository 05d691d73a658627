"""ringcache's cache node: a memcached-compatible server in Python on trio.

Modules: ``config`` (flags), ``protocol`` (sans-IO framing), ``commands`` (request handling),
``store`` (item semantics), ``slabs`` (memory), ``stats`` (counters and ``stats`` text),
``server`` (trio I/O). ``Node`` and ``Config`` are the public entry points.
"""

from .config import Config, parse_args
from .server import Node
from .store import Clock, Store

__all__ = ["Clock", "Config", "Node", "Store", "parse_args"]
