"""``ringcache-node`` / ``python -m ringcache.node``: start one node from memcached's flags.

This module owns the process: argument errors and exit codes, ``-h``/``-V``, the ``-vv``
class table, ``-d``/``-P``/``-u``, clean exit on SIGTERM/SIGINT, the graceful stop on SIGUSR1
(with ``-e``: the metadata of a warm restart, written by ``restart``), and SIGHUP (reload
``-Y``'s authfile). Serving is ``server``'s.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

import trio

from . import restart
from .auth import AuthFileError
from .config import USAGE, VERSION, Config, ConfigError, parse_args
from .server import ListenError, Node, open_listeners
from .slabs import MemoryFile, MemoryFileError, PreallocError, class_table
from .store import Store
from .tls import TLSConfigError

EX_USAGE = 64
EX_OSERR = 71


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1):
        os.dup2(devnull, fd)
    os.close(devnull)


def _drop_privileges(user: str, memory_file: str | None) -> None:
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"can't find the user {user} to switch to") from None
    if memory_file:  # memcached creates it once it runs as the user
        os.chown(memory_file, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def _write_port_file(listeners) -> None:
    """memcached's ``MEMCACHED_PORT_FILENAME``: report the bound ports (useful with ``-p 0``)."""
    path = os.environ.get("MEMCACHED_PORT_FILENAME")
    if not path:
        return
    with open(path + ".lck", "a") as fh:
        for sock in listeners:
            kind = "INET6" if sock.family == socket.AF_INET6 else "INET"
            fh.write(f"TCP {kind}: {sock.getsockname()[1]}\n")
    os.rename(path + ".lck", path)


async def _run(node: Node) -> None:
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
    with trio.open_signal_receiver(*stops) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        node.reload_authfile()
                        continue
                    # SIGUSR1: memcached's graceful stop (with -e: for a warm restart).
                    node.state.graceful_stop = signum == signal.SIGUSR1
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(stop_on_signal)
            await node.serve()
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        cfg: Config = parse_args(args)
    except ConfigError as exc:
        print(f"ringcache-node: {exc}", file=sys.stderr)
        return EX_USAGE
    if cfg.show_help:
        print(USAGE.format(version=VERSION), end="")
        return 0
    if cfg.show_version:
        print(f"memcached {VERSION} (ringcache-node)")
        return 0
    for note in cfg.notes:
        if cfg.verbose:
            print(f"note: {note}", file=sys.stderr)
    memory = None
    try:
        if cfg.memory_file:
            memory = MemoryFile(cfg.memory_file, cfg.memory_limit, cfg.slab_page_size)
        store = Store(cfg, memory=memory)
        if memory and not restart.restore(store, cfg, memory):
            if store.slabs.pages:  # a restore that failed half way: start over, empty
                store = Store(cfg, memory=memory)
            memory.clear()
            store.slabs.preallocate()
        node = Node(cfg, store)
    except (MemoryFileError, PreallocError) as exc:
        print(exc, file=sys.stderr)
        return 1
    except TLSConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_USAGE
    except AuthFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        listeners = open_listeners(cfg)
    except ListenError as exc:
        print(exc.strerror, file=sys.stderr)
        return EX_OSERR
    _write_port_file(listeners)
    try:
        if cfg.user and os.geteuid() == 0:
            _drop_privileges(cfg.user, cfg.memory_file)
    except (ConfigError, OSError) as exc:
        print(f"ringcache-node: {exc}", file=sys.stderr)
        return EX_OSERR
    if cfg.daemonize:
        _daemonize()
    if cfg.pidfile:
        with open(cfg.pidfile, "w") as fh:
            fh.write(f"{os.getpid()}\n")
    if cfg.verbose > 1:
        sys.stderr.write(class_table(cfg))
        for sock in listeners:
            sys.stderr.write(f"<{sock.fileno()} server listening (auto-negotiate)\n")
        sys.stderr.flush()
    node.listeners = listeners
    try:
        trio.run(_run, node)
        if node.state.graceful_stop:
            print("Gracefully stopping", file=sys.stderr, flush=True)
            if memory:
                restart.save(node.store, cfg, memory)
                memory = None
        elif node.state.verbosity:  # as ``verbosity`` left it
            print("Exiting normally", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if memory:
            memory.close()  # no metadata: the next start is a clean one
        if cfg.pidfile:
            try:
                os.unlink(cfg.pidfile)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
