"""ringcache's cluster client: ketama placement, failures as fast misses, parallel multi-key.

``Client`` is the synchronous client, ``AsyncClient`` the trio one; ``Ring`` and
``parse_location`` place keys exactly as libmemcached (``ketama_weighted``) and twemproxy
(``ketama``/``md5``) do; ``ringcache.client.django.RingCache`` is the Django backend.
"""

from .aio import AsyncClient
from .client import Client, NoServerAvailable, validate_key
from .ring import Ring, Server, parse_location

__all__ = [
    "AsyncClient",
    "Client",
    "NoServerAvailable",
    "Ring",
    "Server",
    "parse_location",
    "validate_key",
]
