"""The client's error tree: every error the client raises is a ``RingcacheError``.

Each class is also pymemcache's matching exception, so ``except MemcacheClientError`` (or
``MemcacheError``) written for pymemcache keeps working. This module owns the names only; the
protocol module produces the reply errors and the engine decides, in one place, which error
reaches the application (with ``raise_on_error``) and which becomes a miss.

I/O failures stay the built-in exceptions that describe them (``ConnectionRefusedError``,
``TimeoutError``, ``ConnectionResetError``), from both drivers, as pymemcache's are.
"""

from __future__ import annotations

from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheIllegalInputError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)


class RingcacheError(MemcacheError):
    """Base of every error the ringcache client raises."""


class ReplyError(RingcacheError):
    """The server answered with an error line: it is healthy and the connection in step."""


class ClientError(ReplyError, MemcacheClientError):
    """``CLIENT_ERROR …``: the server refused the request."""


class UnknownCommandError(ClientError, MemcacheUnknownCommandError):
    """``ERROR``: the server does not know the command (a memcached without meta, say)."""


class ServerError(ReplyError, MemcacheServerError):
    """``SERVER_ERROR …``: the server failed to carry out the request (out of memory, …)."""


class IllegalInputError(RingcacheError, MemcacheIllegalInputError):
    """A key or argument memcached would refuse, caught before anything is sent."""


class NoServerAvailable(RingcacheError, MemcacheServerError):
    """Every server that could take the request is ejected (raised only with
    ``raise_on_error``)."""


class ConnectionBroken(RingcacheError):
    """The byte stream can no longer be trusted; the connection is closed and the node
    counts a failure."""


class UnexpectedCloseError(ConnectionBroken, MemcacheUnexpectedCloseError):
    """The server closed the connection before the reply was complete."""


class ProtocolError(ConnectionBroken, MemcacheUnknownError):
    """A reply that is not memcached's protocol."""


class AuthenticationError(ConnectionBroken, MemcacheClientError):
    """The server refused the login (``-Y``): the connection is closed and the node counts a
    failure, as one that cannot be reached does."""
