"""How a client proves itself to the servers: TLS and memcached's text-protocol login (``-Y``).

This module owns the client's side of both, without I/O: turning the ``tls=``, ``username=``
and ``password=`` options (of ``Client``, ``AsyncClient``, Django's ``OPTIONS``, the
``ringcache`` CLI) into one ``Security`` value, the bytes of the login (memcached 1.6.18's
``set <any> <any> <any> <len>`` whose data is ``<user> <password>``), and the rule that decides
a login's reply. The drivers open the sockets, wrap them with ``tls`` and send ``login``
before a connection carries anything else — probes and discovery included.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any

from .errors import AuthenticationError, ReplyError
from .ring import Server

__all__ = ["Security", "tls_context"]


def tls_context(tls: Any = True, ca: str | None = None, cert: str | None = None) -> ssl.SSLContext:
    """An ``ssl.SSLContext`` from the ``tls`` option: ``True`` (the system's CAs), a path to a
    CA bundle, or a context (returned as it is). ``ca`` adds a CA bundle and ``cert`` a client
    certificate (PEM with its key) for servers that require one (``ssl_verify_mode=2``)."""
    if isinstance(tls, ssl.SSLContext):
        ctx = tls
    elif isinstance(tls, str | os.PathLike):
        ctx = ssl.create_default_context(cafile=os.fspath(tls))
    elif tls is True:
        ctx = ssl.create_default_context()
    else:
        raise TypeError(f"tls must be True, a CA file path or an ssl.SSLContext, not {tls!r}")
    if ca:
        ctx.load_verify_locations(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert)
    return ctx


@dataclass(frozen=True)
class Security:
    """TLS context and login of a client's connections (both optional)."""

    tls: ssl.SSLContext | None = None
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_options(
        cls, tls: Any = None, username: str | None = None, password: str | None = None
    ) -> Security | None:
        """None when neither TLS nor a login is asked for (the plain fast path)."""
        if username is None and password is None and tls in (None, False):
            return None
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        for what, text in (("username", username), ("password", password)):
            # memcached splits the credentials on spaces and reads them as C strings.
            if text is not None and (not text or any(c in text for c in " \r\n\0")):
                raise ValueError(f"the {what} must be non-empty, without spaces or line breaks")
        context = None if tls in (None, False) else tls_context(tls)
        return cls(context, username, password)

    @property
    def login(self) -> bytes | None:
        """What a new connection sends first, or None without credentials."""
        if self.username is None or self.password is None:
            return None
        data = f"{self.username} {self.password}".encode()
        return b"set _auth 0 0 %d\r\n%s\r\n" % (len(data), data)

    def check_login(self, reply: Any, server: Server) -> None:
        """A login's reply: ``STORED``, else the connection is refused (and the node is counted
        as failing, like any connection it cannot give: misses, never someone else's data)."""
        if reply == b"STORED":
            return
        said = str(reply) if isinstance(reply, ReplyError) else repr(reply)
        raise AuthenticationError(f"{server} refused the login of user {self.username!r}: {said}")

    def server_hostname(self, server: Server) -> str:
        """The name the server's certificate is checked against: its LOCATION host."""
        assert server.host is not None
        return server.host
