"""ringcache's cluster client: ketama placement, failures as fast misses, parallel multi-key.

``Client`` is the synchronous client; ``Ring``/``parse_location`` place keys exactly as
libmemcached (``ketama_weighted``) and twemproxy (``ketama``/``md5``) do.
"""

from .client import Client, NoServerAvailable, validate_key
from .ring import Ring, Server, parse_location

__all__ = ["Client", "NoServerAvailable", "Ring", "Server", "parse_location", "validate_key"]
