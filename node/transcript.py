"""The ``-vv`` transcript: the lines memcached 1.6.18 prints on stderr about each reply.

This module owns which reply lines memcached's ``-vv`` shows, as its sources decide it:
``out_string`` prints every one-line reply (``>FD NOREPLY …`` when ``noreply`` swallowed it),
a classic get prints ``>FD sending key K`` per hit and ``>FD END`` (also before the error that
ends a get early), and what is written without ``out_string`` — meta replies other than
errors, ``mn``'s ``MN`` and ``me``'s ``EN``, ``stats`` tables, multi-line replies — prints
nothing. The session prints the
``<FD command line`` itself, before it runs the command (``commands.py``); the connection's
own lines (new, closed, the protocol used) are the reactor's and the session's.
"""

from __future__ import annotations

GETS = frozenset((b"get", b"bget", b"gets", b"gat", b"gats"))
META = frozenset((b"mg", b"ms", b"md", b"ma", b"me", b"mn"))
_ENDS_A_GET = (b"CLIENT_ERROR bad command line format", b"SERVER_ERROR")


def _is_error(line: bytes) -> bool:
    return line == b"ERROR" or line.startswith((b"CLIENT_ERROR", b"SERVER_ERROR", b"ERROR "))


def _get_lines(reply: bytes) -> list[bytes]:
    """A classic get's reply, or a chunk of one: ``sending key K`` per ``VALUE`` block, then
    ``END`` where it ends, or ``END`` and the error that ended it early."""
    lines = []
    pos = 0
    while reply.startswith(b"VALUE ", pos):
        eol = reply.find(b"\r\n", pos)
        fields = reply[pos:eol].split(b" ")
        if eol < 0 or len(fields) < 4 or not fields[3].isdigit():
            break
        lines.append(b"sending key " + fields[1])
        pos = eol + 2 + int(fields[3]) + 2
    rest = reply[pos:]
    if rest == b"END\r\n":
        lines.append(b"END")
    elif rest.startswith(_ENDS_A_GET):
        lines += [b"END", rest[: rest.find(b"\r\n")]]
    elif rest:
        lines.append(rest[: rest.find(b"\r\n")])
    return lines


def reply_lines(command: bytes, reply: bytes) -> list[bytes]:
    """What memcached prints after ``>FD `` for ``reply`` to ``command`` (the command's first
    word); a get's reply may come in chunks, each given in turn."""
    if not reply:
        return []
    eol = reply.find(b"\r\n")
    first = reply[:eol] if eol >= 0 else reply
    if command in GETS:
        return _get_lines(reply)
    if _is_error(first):
        return [first]
    if command in META:
        return [first] if first == b"MN" or (command == b"me" and first == b"EN") else []
    if eol + 2 != len(reply) or (command == b"stats" and first == b"END"):
        return []  # written whole (stats, config, cachedump), not through out_string
    return [first]
