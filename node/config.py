"""Command-line configuration of a node: memcached's own flags, parsed into one frozen dataclass.

This module owns flag syntax, defaults and validation (with memcached's messages where it has
them). It does not start anything; ``__main__`` and ``server`` consume the ``Config``.
"""

from __future__ import annotations

import getopt
import re
from dataclasses import dataclass, field

PAGE_SIZE = 1024 * 1024
ITEM_SIZE_MAX_LOWER = 1024
ITEM_SIZE_MAX_UPPER = 1024 * 1024 * 1024
VERSION = "1.6.18"

USAGE = """ringcache-node {version} (memcached-compatible)
-p, --port=<num>          TCP port to listen on (default: 11211)
-U, --udp-port=<num>      UDP port: only 0 is accepted, UDP is never served
-l, --listen=<addr>       interface to listen on (default: 127.0.0.1)
-d, --daemon              run as a daemon
-u, --user=<user>         assume identity of <username> (only when run as root)
-m, --memory-limit=<num>  item memory in megabytes (default: 64)
-e, --memory-file=<file>  mmap a file for item memory (a RAM disk such as /dev/shm);
                          enables a warm restart: stop with SIGUSR1 (or "shutdown
                          graceful"), start again with the same flags
-c, --conn-limit=<num>    max simultaneous connections (default: 1024)
-M, --disable-evictions   return error on memory exhausted instead of evicting
-v, --verbose             verbose (print errors/warnings while in event loop)
-vv                       very verbose (also print client commands/responses)
-vvv                      extremely verbose (internal state transitions)
-h, --help                print this help and exit
-V, --version             print version and exit
-P, --pidfile=<file>      save PID in <file>, only used with -d option
-f, --slab-growth-factor=<num> chunk size growth factor (default: 1.25)
-n, --slab-min-size=<bytes> min space used for key+value+flags (default: 48)
-t, --threads=<num>       accepted for compatibility; a node is single-threaded and
                          scales by running more nodes (default: 4)
-I, --max-item-size=<num> adjusts max item size (default: 1m, min: 1k, max: 1024m)
-A, --enable-shutdown     enable ascii "shutdown" command
-Y, --auth-file=<file>    require text-protocol authentication; <file> holds
                          user:password lines (reloaded on SIGHUP)
-Z, --enable-ssl          enable TLS on every listener not prefixed notls:
                          (-l notls:<ip>:<port> keeps one listener plaintext)
-o, --extended            comma separated list of extended options:
   - idle_timeout:        timeout for idle connections in seconds (default: 0, off)
   - slab_chunk_max:      maximum slab chunk size in bytes (default: 512k)
   - slab_automove:       0 = off, 1 = move pages between classes (default: 1)
   - no_lru_crawler:      disable the background expired-item crawler
   - lru_policy:          how a full slab class picks what goes: segmented (memcached's
                          HOT/WARM/COLD LRU), lru (memcached's flat LRU, as with
                          no_lru_maintainer) or sieve (SIEVE, NSDI'24) (default: segmented)
   - hot_lru_pct:         pct of slab memory to reserve for hot lru (default: 20)
   - warm_lru_pct:        pct of slab memory to reserve for warm lru (default: 40)
   - hot_max_factor:      items idle > cold lru age * drop from hot lru (default: 0.20)
   - warm_max_factor:     items idle > cold lru age * this drop from warm (default: 2.00)
   - temporary_ttl:       TTL's below get separate LRU, can't be evicted (default: off)
   - no_lru_maintainer:   memcached's flat LRU (lru_policy=lru)
   - ssl_chain_cert:      certificate chain file in PEM format
   - ssl_key:             private key, if not part of the -ssl_chain_cert
   - ssl_keyformat:       private key format: only 1 (PEM) (default: 1)
   - ssl_verify_mode:     peer certificate verification mode, default is 0(None).
                          valid values are 0(None), 1(Request), 2(Require)
                          or 3(Once)
   - ssl_ciphers:         specify cipher list to be used
   - ssl_ca_cert:         PEM format file of acceptable client CA's
   - ssl_wbuf_size:       size in kilobytes of per-connection SSL output buffer
                          (default: 16)
   - ssl_session_cache:   enable server-side SSL session cache
   - ssl_kernel_tls:      enable kernel TLS offload
   - ssl_min_version:     minimum protocol version to accept (default: tlsv1.2)
                          valid values are 0(tlsv1.0), 1(tlsv1.1), 2(tlsv1.2), or 3(tlsv1.3).
"""


LRU_POLICIES = ("segmented", "lru", "sieve")


class ConfigError(ValueError):
    """A flag or flag value that memcached would refuse; the message is for the user."""


@dataclass(frozen=True)
class Config:
    port: int = 11211
    listen: str = "127.0.0.1"
    memory_limit: int = 64 * 1024 * 1024
    memory_file: str | None = None
    max_connections: int = 1024
    growth_factor: float = 1.25
    slab_config: str = "1.25"  # -f as written: what a warm restart compares, as memcached
    chunk_size: int = 48
    item_size_max: int = 1024 * 1024
    slab_chunk_max: int = PAGE_SIZE // 2
    slab_page_size: int = PAGE_SIZE
    evictions: bool = True
    verbose: int = 0
    daemonize: bool = False
    pidfile: str | None = None
    user: str | None = None
    threads: int = 4
    idle_timeout: int = 0
    slab_automove: int = 1
    lru_policy: str = "segmented"  # -o lru_policy=segmented|lru|sieve: what a full class evicts
    hot_lru_pct: int = 20
    warm_lru_pct: int = 40
    hot_max_factor: float = 0.2
    warm_max_factor: float = 2.0
    temporary_ttl: int | None = None  # -o temporary_ttl: memcached's TEMP LRU (temp_lru)
    lru_crawler: bool = True
    shutdown_command: bool = False
    reqs_per_event: int = 20
    auth_file: str | None = None
    ssl_enabled: bool = False
    ssl_chain_cert: str | None = None
    ssl_key: str | None = None
    ssl_keyformat: int = 1  # OpenSSL's SSL_FILETYPE_PEM
    ssl_verify_mode: int = 0  # memcached's 0..3
    ssl_ciphers: str | None = None
    ssl_ca_cert: str | None = None
    ssl_wbuf_size: int = 16 * 1024
    ssl_session_cache: bool = False
    ssl_kernel_tls: bool = False
    ssl_min_version: int = 2  # memcached's 0..3: tlsv1.0 .. tlsv1.3
    show_help: bool = False
    show_version: bool = False
    notes: tuple[str, ...] = field(default=())


_SHORT = "p:U:l:dhVu:m:e:c:Mvt:P:f:n:I:AY:Zo:"
_LONG = [
    "port=",
    "udp-port=",
    "listen=",
    "daemon",
    "help",
    "version",
    "user=",
    "memory-limit=",
    "memory-file=",
    "conn-limit=",
    "disable-evictions",
    "verbose",
    "threads=",
    "pidfile=",
    "slab-growth-factor=",
    "slab-min-size=",
    "max-item-size=",
    "enable-shutdown",
    "auth-file=",
    "enable-ssl",
    "extended=",
]
_LONG_TO_SHORT = {
    "--port": "-p",
    "--udp-port": "-U",
    "--listen": "-l",
    "--daemon": "-d",
    "--help": "-h",
    "--version": "-V",
    "--user": "-u",
    "--memory-limit": "-m",
    "--memory-file": "-e",
    "--conn-limit": "-c",
    "--disable-evictions": "-M",
    "--verbose": "-v",
    "--threads": "-t",
    "--pidfile": "-P",
    "--slab-growth-factor": "-f",
    "--slab-min-size": "-n",
    "--max-item-size": "-I",
    "--enable-shutdown": "-A",
    "--auth-file": "-Y",
    "--enable-ssl": "-Z",
    "--extended": "-o",
}


def _int(flag: str, text: str, low: int | None = None, high: int | None = None) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise ConfigError(f"{flag}: '{text}' is not a whole number") from None
    if low is not None and value < low:
        raise ConfigError(f"{flag}: {value} is below the minimum {low}")
    if high is not None and value > high:
        raise ConfigError(f"{flag}: {value} is above the maximum {high}")
    return value


def parse_size(flag: str, text: str) -> int:
    """A byte count with memcached's optional k/m suffix (either case): ``1m``, ``512k``."""
    unit = text[-1:].lower()
    scale = {"k": 1024, "m": 1024 * 1024}.get(unit, 1)
    digits = text[:-1] if unit in ("k", "m") else text
    return _int(flag, digits, low=0) * scale


def parse_args(argv: list[str]) -> Config:
    """Parse memcached-style arguments (without the program name) into a ``Config``."""
    try:
        opts, rest = getopt.getopt(argv, _SHORT, _LONG)
    except getopt.GetoptError as exc:
        raise ConfigError(f"{exc}; try -h") from None
    if rest:
        raise ConfigError(f"unexpected argument '{rest[0]}'; try -h")
    values: dict = {}
    notes: list[str] = []
    for flag, arg in opts:
        flag = _LONG_TO_SHORT.get(flag, flag)
        if flag == "-p":
            values["port"] = _int("-p", arg, 0, 65535)
        elif flag == "-U":
            if _int("-U", arg) != 0:
                raise ConfigError(
                    "-U: UDP is never served by ringcache-node; only -U 0 is accepted"
                )
        elif flag == "-l":
            if not arg:
                raise ConfigError("-l: empty address")
            values["listen"] = arg
        elif flag == "-d":
            values["daemonize"] = True
        elif flag == "-h":
            values["show_help"] = True
        elif flag == "-V":
            values["show_version"] = True
        elif flag == "-u":
            values["user"] = arg
        elif flag == "-m":
            megabytes = _int("-m", arg)
            if megabytes <= 0:
                raise ConfigError("-m: the memory limit must be a positive number of megabytes")
            values["memory_limit"] = megabytes * 1024 * 1024
        elif flag == "-e":
            values["memory_file"] = arg
        elif flag == "-c":
            values["max_connections"] = _int("-c", arg)
            if values["max_connections"] <= 0:
                raise ConfigError("Maximum connections must be greater than 0")
        elif flag == "-M":
            values["evictions"] = False
        elif flag == "-v":
            values["verbose"] = values.get("verbose", 0) + 1
        elif flag == "-t":
            threads = _int("-t", arg, 1)
            values["threads"] = threads
            notes.append(
                f"-t {threads}: a ringcache node is single-threaded; scale by running more nodes"
            )
        elif flag == "-P":
            values["pidfile"] = arg
        elif flag == "-f":
            try:
                factor = float(arg)
            except ValueError:
                raise ConfigError(f"-f: '{arg}' is not a number") from None
            if factor <= 1.0:
                raise ConfigError("Factor must be greater than 1")
            values["growth_factor"] = factor
            values["slab_config"] = arg
        elif flag == "-n":
            chunk = _int("-n", arg)
            if chunk <= 0:
                raise ConfigError("Chunk size must be greater than 0")
            values["chunk_size"] = chunk
        elif flag == "-I":
            values["item_size_max"] = parse_size("-I", arg)
        elif flag == "-A":
            values["shutdown_command"] = True
        elif flag == "-Y":
            values["auth_file"] = arg
        elif flag == "-Z":
            values["ssl_enabled"] = True
        elif flag == "-o":
            _extended(arg, values)
    cfg = Config(**values, notes=tuple(notes))
    return _validate(cfg)


def _extended(arg: str, values: dict) -> None:
    for item in filter(None, arg.split(",")):
        name, _, value = item.partition("=")
        if name == "idle_timeout":
            values["idle_timeout"] = _int("idle_timeout", value, 0)
        elif name == "slab_chunk_max":
            values["slab_chunk_max"] = parse_size("slab_chunk_max", value)
        elif name == "slab_automove":
            values["slab_automove"] = _int("slab_automove", value, 0, 2)
        elif name == "lru_policy":
            if value not in LRU_POLICIES:
                raise ConfigError(f"lru_policy: '{value}' is not one of {', '.join(LRU_POLICIES)}")
            values["lru_policy"] = value
        elif name in ("hot_lru_pct", "warm_lru_pct"):
            if "=" not in item:
                raise ConfigError(f"Missing {name} argument")
            pct = _atoi(value)
            if pct < 1 or pct >= 80:
                raise ConfigError(f"{name} must be > 1 and < 80")
            values[name] = pct
        elif name in ("hot_max_factor", "warm_max_factor"):
            if "=" not in item:
                raise ConfigError(f"Missing {name} argument")
            factor = _atof(value)
            if factor <= 0:
                raise ConfigError(f"{name} must be > 0")
            values[name] = factor
        elif name == "temporary_ttl":
            if "=" not in item:
                raise ConfigError(f"Missing {name} argument")
            values["temporary_ttl"] = _atoi(value)
        elif name == "lru_maintainer":
            values["lru_policy"] = "segmented"
        elif name == "no_lru_maintainer":
            values["lru_policy"] = "lru"
        elif name == "no_lru_crawler":
            values["lru_crawler"] = False
        elif name == "lru_crawler":
            values["lru_crawler"] = True
        elif name.startswith("ssl_"):
            _ssl_option(name, value if "=" in item else None, values)
        elif name in ("modern", "slab_reassign", "no_hashexpand"):
            pass  # memcached 1.6 defaults; accepted for compatibility.
        else:
            raise ConfigError(f'Illegal suboption "{item}"')


def _atoi(text: str) -> int:
    """C's ``atoi``: the leading digits (with a sign), 0 when there are none."""
    digits = re.match(r"\s*[-+]?\d*", text)
    try:
        return int(digits.group(0)) if digits else 0
    except ValueError:
        return 0


def _atof(text: str) -> float:
    """C's ``atof``: the leading number, 0.0 when there is none."""
    number = re.match(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text)
    return float(number.group(0)) if number else 0.0


def _ssl_option(name: str, value: str | None, values: dict) -> None:
    """One ``-o ssl_*`` suboption, with memcached's messages."""
    if name in ("ssl_session_cache", "ssl_kernel_tls"):
        values[name] = True
        return
    if name not in _SSL_VALUED:
        raise ConfigError(f'Illegal suboption "{name}"')
    if value is None:
        raise ConfigError(f"Missing {name} argument")
    if name in ("ssl_chain_cert", "ssl_key", "ssl_ciphers", "ssl_ca_cert"):
        values[name] = value
        return
    try:
        number = int(value, 10)
    except ValueError:
        raise ConfigError(f"could not parse argument to {name}") from None
    if name == "ssl_verify_mode" and not 0 <= number <= 3:
        raise ConfigError("Invalid ssl_verify_mode. Use help to see valid options.")
    if name == "ssl_min_version" and not 0 <= number <= 3:
        raise ConfigError("Invalid ssl_min_version. Use help to see valid options.")
    if name == "ssl_keyformat" and number != 1:
        raise ConfigError("ssl_keyformat: only 1 (PEM) is supported by ringcache-node")
    if name == "ssl_wbuf_size":
        if number < 0:
            raise ConfigError(f"could not parse argument to {name}")
        number *= 1024
    values[name] = number


_SSL_VALUED = frozenset(
    {
        "ssl_chain_cert",
        "ssl_key",
        "ssl_keyformat",
        "ssl_verify_mode",
        "ssl_ciphers",
        "ssl_ca_cert",
        "ssl_wbuf_size",
        "ssl_min_version",
    }
)


@dataclass(frozen=True)
class ListenAddress:
    """One ``-l`` entry: ``[notls:]host[:port]``, ``[ipv6][:port]``, ``*`` for every
    interface."""

    host: str | None
    port: int
    tls: bool


def listen_addresses(cfg: Config) -> list[ListenAddress]:
    """``-l`` split as memcached splits it (``,`` or ``;``), each with its port and whether
    it speaks TLS (``-Z``, unless the entry starts with ``notls:``)."""
    out = []
    for entry in filter(None, re.split(r"[;,]", cfg.listen)):
        entry = entry.strip()
        tls = cfg.ssl_enabled
        if entry.startswith("notls"):
            if not cfg.ssl_enabled:
                raise ConfigError("'notls' option is valid only when SSL is enabled")
            tls = False
            entry = entry[len("notls") + 1 :]
        host, port = entry, cfg.port
        bracketed = host.startswith("[")
        if bracketed:
            end = host.find("]")
            if end < 0:
                raise ConfigError(f'Invalid IPV6 address: "{entry}"')
            host, rest = host[1:end], host[end + 1 :]
            if rest.startswith(":"):
                port = _port(rest[1:])
        elif host.count(":") == 1:
            host, _, text = host.partition(":")
            port = _port(text)
        out.append(ListenAddress(None if host == "*" else host, port, tls))
    if not out:
        raise ConfigError("-l: no address to listen on")
    return out


def _port(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(f'Invalid port number: "{text}"') from None


def _validate(cfg: Config) -> Config:
    if cfg.item_size_max < ITEM_SIZE_MAX_LOWER:
        raise ConfigError("Item max size cannot be less than 1024 bytes.")
    if cfg.item_size_max > cfg.memory_limit // 2:
        raise ConfigError("Cannot set item size limit higher than 1/2 of memory max.")
    if cfg.item_size_max > ITEM_SIZE_MAX_UPPER:
        raise ConfigError("Cannot set item size limit higher than a gigabyte.")
    chunk_max = cfg.slab_chunk_max
    if chunk_max > cfg.item_size_max:
        raise ConfigError(
            f"slab_chunk_max (bytes: {chunk_max}) cannot be larger than -I "
            f"(item_size_max {cfg.item_size_max})"
        )
    if cfg.item_size_max % chunk_max != 0:
        raise ConfigError(
            f"-I (item_size_max: {cfg.item_size_max}) must be evenly divisible by "
            f"slab_chunk_max (bytes: {chunk_max})"
        )
    if cfg.slab_page_size % chunk_max != 0:
        raise ConfigError(
            f"slab_chunk_max (bytes: {chunk_max}) must divide evenly into "
            f"{cfg.slab_page_size} (slab_page_size)"
        )
    if cfg.hot_lru_pct + cfg.warm_lru_pct > 80:
        raise ConfigError("hot_lru_pct + warm_lru_pct cannot be more than 80% combined")
    if cfg.temporary_ttl is not None and cfg.lru_policy != "segmented":
        raise ConfigError("temporary_ttl requires lru_maintainer to be enabled")
    listen_addresses(cfg)  # reject a bad -l now, with memcached's message
    if cfg.chunk_size + 48 >= chunk_max:
        raise ConfigError(f"-n {cfg.chunk_size} leaves no room below slab_chunk_max {chunk_max}")
    return cfg
