"""ringcache's cluster client: ketama placement, failures as fast misses, parallel multi-key.

``Client`` is the synchronous client (``sync.py``), ``AsyncClient`` the asyncio and trio one
(``aio.py``); each holds an engine (``engine.py`` and the parts it is composed of) and runs
its operations over the sans-IO protocol (``protocol.py``). ``Ring`` and ``parse_location``
place keys exactly as libmemcached (``ketama_weighted``) and twemproxy (``ketama``/``md5``)
do; ``ringcache.client.django.RingCache`` is the Django backend.
"""

from .aio import AsyncClient
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
from .keys import validate_key
from .options import Options
from .ring import Ring, Server, parse_location
from .security import Security, tls_context
from .steps import Entry
from .sync import Client, Connection, resolve_location

__all__ = [
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ClientError",
    "Connection",
    "Entry",
    "IllegalInputError",
    "NoServerAvailable",
    "Options",
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
    "resolve_location",
    "tls_context",
    "validate_key",
]
