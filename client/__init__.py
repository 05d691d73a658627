"""ringcache's cluster client: ketama placement, failures as fast misses, parallel multi-key.

``Client`` is the synchronous client, ``AsyncClient`` the trio one; both run the operations
of one engine (``engine.py``) over the sans-IO protocol (``protocol.py``). ``Ring`` and
``parse_location`` place keys exactly as libmemcached (``ketama_weighted``) and twemproxy
(``ketama``/``md5``) do; ``ringcache.client.django.RingCache`` is the Django backend.
"""

from .aio import AsyncClient
from .client import Client, Connection
from .engine import Entry, validate_key
from .errors import (
    AuthenticationError,
    ClientError,
    IllegalInputError,
    NoServerAvailable,
    ProtocolError,
    ReplyError,
    RingcacheError,
    ServerError,
    UnexpectedCloseError,
    UnknownCommandError,
)
from .ring import Ring, Server, parse_location
from .security import Security, tls_context

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ClientError",
    "Connection",
    "Entry",
    "IllegalInputError",
    "NoServerAvailable",
    "ProtocolError",
    "ReplyError",
    "Ring",
    "RingcacheError",
    "Security",
    "Server",
    "ServerError",
    "UnexpectedCloseError",
    "UnknownCommandError",
    "parse_location",
    "tls_context",
    "validate_key",
]
