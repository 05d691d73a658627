"""The ``ringcache`` command: run a local cluster and look at any memcached-compatible one.

This module owns the command line (click) and what each command prints (rich tables, live
refresh, JSON lines) and its exit status; the figures come from ``figures.py``. Process
management is ``LocalCluster``'s; placement is the client's ``Ring``. Every command that reads
a cluster takes ``--location`` (default: the local cluster's members), so it works against
real memcached fleets too, and ``--tls``/``--ca``/``--cert``/``--user``/``--password`` (or their
``RINGCACHE_*`` environment variables) for secured ones. These global options are taken before
or after the command (``Settings`` gathers them). ``main`` turns every mistake into one line on
stderr: status 2 for a usage mistake (click's), 1 for what was found (``Failure``,
``ClusterError``, an unreachable node), never a traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import click
from click.core import ParameterSource
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ringcache.client import (
    Connection,
    IllegalInputError,
    RingcacheError,
    protocol,
    resolve_location,
)
from ringcache.client.keys import validate_key
from ringcache.client.resolve import placed, split_location
from ringcache.client.ring import Ring, Server, parse_location
from ringcache.client.security import Security, tls_context
from ringcache.node.auth import AuthFileError, load_authfile

from .figures import NodeFigures, fetch_stats, sample, totals
from .local import HOST, ClusterError, LocalCluster
from .rebalance import published

# Tables need about 110 columns; when output is not a terminal, do not wrap them at 80.
console = Console(width=None if sys.stdout.isatty() else 132)


def stats_table(rows: list[NodeFigures]) -> Table:
    table = Table(title="ringcache stats", title_justify="left")
    for name, justify in (
        ("node", "left"), ("state", "left"), ("items", "right"), ("memory (used/limit)", "right"),
        ("get hits", "right"), ("get misses", "right"), ("hit ratio", "right"),
        ("evictions", "right"), ("conns", "right"), ("ops/s", "right"),
    ):  # fmt: skip
        table.add_column(name, justify=justify)
    answering = sum(r.up for r in rows)
    for row in [*rows, totals(rows)]:
        ratio = "-" if row.hit_ratio is None else f"{row.hit_ratio:.1%}"
        used = (
            f"{row.bytes / 1048576:.1f}/{row.limit / 1048576:.0f} MB ({row.bytes / row.limit:.0%})"
            if row.limit
            else "-"
        )
        ops = "-" if row.ops_per_sec is None else f"{row.ops_per_sec:,.0f}"
        state = "[green]up[/]" if row.up else "[red]down[/]"
        if row.node == "total":
            table.add_section()
            colour = "green" if answering == len(rows) else "red" if not answering else "yellow"
            state = f"[{colour}]{answering}/{len(rows)} up[/]"
        table.add_row(
            row.node, state, f"{row.items:,}", used, f"{row.get_hits:,}", f"{row.get_misses:,}",
            ratio, f"{row.evictions:,}", f"{row.connections:,}", ops,
        )  # fmt: skip
    return table


# -- options, accepted before or after the subcommand ------------------------------------------
class Failure(click.ClickException):
    """Something to say in one line, exit status 1 (not a usage mistake)."""

    exit_code = 1


@dataclass
class Settings:
    """The global options, wherever on the command line they were given."""

    location: str | None = None  # as given (it may name DNS names, resolved when used)
    dns_nameservers: str | None = None
    run_dir: Path | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    user: str | None = None
    authfile: str | None = None
    password: str | None = None
    _local: LocalCluster | None = None
    _security: tuple[Security | None] | None = None

    @property
    def local(self) -> LocalCluster:
        if self._local is None:
            self._local = LocalCluster(self.run_dir)
        return self._local

    @property
    def security(self) -> Security | None:
        if self._security is None:
            user, password = self.user, self.password
            if self.authfile and user is None:
                try:
                    entries = load_authfile(self.authfile)
                except AuthFileError as exc:
                    raise click.BadParameter(str(exc), param_hint="'--authfile'") from None
                if not entries:
                    raise click.BadParameter(
                        f"{self.authfile} has no entry", param_hint="'--authfile'"
                    )
                user, password = (part.decode() for part in entries[0])
            tls = self.tls or self.ca or self.cert
            try:
                context = tls_context(True, ca=self.ca, cert=self.cert) if tls else None
            except (OSError, ValueError) as exc:
                raise click.BadParameter(
                    f"cannot load {self.cert or self.ca}: {exc}", param_hint="'--ca'/'--cert'"
                ) from None
            try:
                self._security = (Security.from_options(context, user, password),)
            except ValueError as exc:
                raise click.UsageError(str(exc)) from None
        return self._security[0]

    def resolve(self, location: str) -> list[Server]:
        """The servers ``location`` names now (its ``dnssrv+``/``dns+`` names resolved)."""
        nameservers = (self.dns_nameservers or "").split(",")
        return resolve_location(location, [n for n in nameservers if n.strip()])

    def membership(self) -> list[Server]:
        """The membership a move starts from: for a DNS location the one the nodes publish
        (DNS may already have dropped a pod that is being drained), else the LOCATION's."""
        servers = self.servers()
        if not self.location or not split_location(self.location)[1]:
            return servers
        config = published(servers, self.security)
        if config is None or not config.version:
            return servers
        return placed(config.servers, servers)

    def servers(self) -> list[Server]:
        if self.location:
            return self.resolve(self.location)
        members = self.local.locations()
        if not members:
            raise Failure(
                f"no local cluster is running in {self.local.run_dir} (start one with "
                "`ringcache up` or `make cluster`), and no --location was given"
            )
        return parse_location(members)


class LocationType(click.ParamType):
    """A LOCATION as Django takes it (``host:port;host:port``, ``dnssrv+NAME``,
    ``dns+NAME:PORT``), checked when parsed, resolved when used."""

    name = "LOCATION"

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        try:
            split_location(value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)
        return value


class AddressType(click.ParamType):
    """``HOST:PORT`` (or a bare ``PORT``, on ``default_host``)."""

    name = "HOST:PORT"

    def __init__(self, default_host: str | None = None) -> None:
        self.default_host = default_host

    def convert(self, value, param, ctx):  # type: ignore[no-untyped-def]
        if isinstance(value, tuple):
            return value
        host, sep, port = str(value).rpartition(":")
        if not sep:
            host = self.default_host or ""
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            form = "PORT or HOST:PORT" if self.default_host else "HOST:PORT"
            self.fail(f"{value!r} is not {form} (a port from 1 to 65535)", param, ctx)
        return host.strip("[]"), int(port)


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
    source = ctx.get_parameter_source(param.name or "")
    if source in (None, ParameterSource.DEFAULT) or param.name is None:
        return
    setattr(ctx.ensure_object(Settings), param.name, value)


def _global_options(envvars: bool) -> list[click.Option]:
    """The options of every command; the group reads the environment, a subcommand's own
    spelling (``ringcache status --location …``) overrides it."""

    def env(name: str) -> str | None:
        return f"RINGCACHE_{name}" if envvars else None

    file = click.Path(exists=True, dir_okay=False)
    specs: list[tuple[str, dict]] = [
        ("--location", dict(type=LocationType(), envvar=env("LOCATION"),
            help="Servers, as in Django's LOCATION (default: the local cluster).")),
        ("--dns-nameservers", dict(envvar=env("DNS_NAMESERVERS"), metavar="HOST:PORT,…",
            help="Resolve a dnssrv+/dns+ --location at these nameservers (default: the "
            "system's).")),
        ("--run-dir", dict(type=click.Path(file_okay=False, path_type=Path),
            envvar=env("RUN_DIR"),
            help="The local cluster's state directory (pid files, logs, members); default "
            "$RINGCACHE_RUN_DIR, else $XDG_STATE_HOME/ringcache (~/.local/state/ringcache).")),
        ("--tls", dict(is_flag=True, default=None, envvar=env("TLS"),
            help="Speak TLS to the servers (memcached -Z); implied by --ca and --cert.")),
        ("--ca", dict(type=file, envvar=env("CA"),
            help="CA bundle (PEM) that signed the servers' certificates.")),
        ("--cert", dict(type=file, envvar=env("CERT"),
            help="Client certificate with its key (PEM), for servers that require one.")),
        ("--user", dict(envvar=env("USER"), help="Login for servers started with -Y.")),
        ("--authfile", dict(type=file, envvar=env("AUTHFILE"),
            help="Log in as the first entry of this -Y authfile (for probes on the node's host).")),
        ("--password", dict(envvar=env("PASSWORD"),
            help="Password of --user (prefer the RINGCACHE_PASSWORD environment variable).")),
    ]  # fmt: skip
    return [
        click.Option([flag], expose_value=False, callback=_remember, **kwargs)
        for flag, kwargs in specs
    ]


class Command(click.Command):
    """A subcommand that also takes the global options."""

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.params.extend(_global_options(envvars=False))


class Group(click.Group):
    command_class = Command


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(
    version("ringcache"),
    "-V",
    "--version",
    message="%(prog)s %(version)s (nodes speak memcached 1.6.18)",
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run a local ringcache cluster and inspect any memcached-compatible cluster.

    Global options (--location, --run-dir, --tls, …) go before or after the command."""
    ctx.ensure_object(Settings)


cli.params[:0] = _global_options(envvars=True)


def main(argv: list[str] | None = None) -> int:
    """The ``ringcache`` command: every mistake is one line on stderr and a non-zero status
    (2: how it was called; 1: what it found), never a traceback."""
    try:
        code = cli.main(args=argv, prog_name="ringcache", standalone_mode=False)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "ringcache"
        click.echo(f"{where}: {exc.format_message()} (see `{where} -h`)", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"ringcache: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.exceptions.Abort:
        return 130
    except (ClusterError, OSError, RingcacheError) as exc:
        click.echo(f"ringcache: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return code if isinstance(code, int) else 0


def caches_snippet(locations: list[str]) -> str:
    inner = ", ".join(f'"{loc}"' for loc in locations)
    return (
        "CACHES = {\n"
        '    "default": {\n'
        '        "BACKEND": "ringcache.client.django.RingCache",\n'
        f'        "LOCATION": [{inner}],\n'
        "        # follow `ringcache add`/`remove`: the nodes publish the membership\n"
        '        "OPTIONS": {"discovery": True},\n'
        "    }\n"
        "}"
    )


def print_location(locations: list[str]) -> None:
    console.print(f"LOCATION: {';'.join(locations)}", highlight=False)
    console.print("\nDjango settings:\n", highlight=False)
    console.print(caches_snippet(locations), highlight=False, markup=False)


@cli.command()
@click.option("--nodes", type=click.IntRange(1, 64), help="How many nodes (a new cluster: 3).")
@click.option(
    "--port", type=click.IntRange(1, 65535), help="The first node's port (a new cluster: 11211)."
)
@click.option("--memory", type=click.IntRange(2), help="-m of each node, MB (a new cluster: 64).")
@click.pass_obj
def up(obj: Settings, nodes: int | None, port: int | None, memory: int | None) -> None:
    """Start the local cluster, or what is missing of it; never changes its shape (use add and
    remove, which move the keys)."""
    local = obj.local
    before = {m.port for m in local.members() if local.pid(m.port) is not None}
    existed = bool(local.members())
    members = local.up(nodes, port, memory)
    started = [m for m in members if m.port not in before]
    shape = local.describe(members)
    if existed and not started:
        console.print(f"already running: {shape}; state in {local.run_dir}/", highlight=False)
    elif existed:
        console.print(
            f"[green]started {len(started)} of {len(members)} nodes[/] of {shape} "
            f"({', '.join(m.location for m in started)}); state in {local.run_dir}/",
            highlight=False,
        )
    else:
        console.print(
            f"[green]{len(members)} nodes up[/]: {shape}; logs and pid files in {local.run_dir}/",
            highlight=False,
        )
    print_location([m.location for m in members])


@cli.command()
@click.pass_obj
def down(obj: Settings) -> None:
    """Stop the local cluster and forget it."""
    members = obj.local.members()
    if not members:
        console.print(f"no local cluster in {obj.local.run_dir}", highlight=False)
        return
    obj.local.down()
    console.print(f"stopped {len(members)} nodes")


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(int(seconds), 86400)
    clock = time.strftime("%H:%M:%S", time.gmtime(rest))
    return f"{days}d {clock}" if days else clock


@cli.command()
@click.pass_obj
def status(obj: Settings) -> None:
    """Each node: up or down, pid, uptime; exits 1 unless every one answers.

    For the local cluster it also says when its state is stale, when a port is held by a
    process that is not one of its nodes, and when the nodes publish another membership."""
    if obj.location:
        _remote_status(obj.servers(), obj.security)
        return
    local = obj.local
    rows = local.status()
    if not rows:
        console.print(
            f"no local cluster in {local.run_dir} (start one with `ringcache up` or "
            "`make cluster`, or give --location)",
            highlight=False,
        )
        sys.exit(1)
    table = Table(title="ringcache status", title_justify="left")
    for name in ("node", "state", "pid", "answers", "uptime"):
        table.add_column(name)
    notes = []
    for r in rows:
        if r.foreign is not None:
            state = "[red]foreign[/]"
            who = f"pid {r.foreign}" if r.foreign else "a process"
            notes.append(
                f"{r.location} answers, but {who} is not a node of {local.run_dir} (another "
                "state directory's cluster, or another program, holds the port)"
            )
        else:
            state = "[green]up[/]" if r.up else "[red]down[/]"
        table.add_row(
            r.location, state, str(r.pid or "-"), "yes" if r.answering else "no", _uptime(r.uptime)
        )
    console.print(table)
    console.print(f"state: {local.run_dir}", highlight=False, soft_wrap=True)
    if not any(r.up for r in rows):
        notes.append(
            f"stale state: no node of {local.run_dir}/cluster.json is running; `ringcache up` "
            "starts them again (empty), `ringcache down` forgets them"
        )
    members = [parse_location(r.location)[0] for r in rows]
    config = published(members, obj.security)
    names = {s.name for s in members}
    if config is not None and config.version and {s.name for s in config.servers} != names:
        notes.append(
            f"membership drift: the nodes publish version {config.version} with "
            f"{';'.join(map(str, config.servers))}, not the members listed here"
        )
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    sys.exit(0 if all(r.up and r.answering for r in rows) else 1)


def _remote_status(servers: list[Server], security: Security | None) -> None:
    table = Table(title="ringcache status", title_justify="left")
    for name in ("node", "state", "version", "pid", "uptime"):
        table.add_column(name)
    answering = 0
    for server in servers:
        s = fetch_stats(server, security=security)
        if s is None:
            table.add_row(str(server), "[red]down[/]", "-", "-", "-")
            continue
        answering += 1
        uptime = float(s["uptime"]) if s.get("uptime", "").isdigit() else None
        table.add_row(
            str(server), "[green]up[/]", s.get("version", "?"), s.get("pid", "?"), _uptime(uptime)
        )
    console.print(table)
    sys.exit(0 if answering == len(servers) else 1)


@cli.command()
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--count", type=click.IntRange(1), help="With --watch: stop after this many samples.")
@click.option("--json", "as_json", is_flag=True, help="JSON (with --watch: one object a line).")
@click.pass_obj
def stats(obj: Settings, watch: bool, interval: float, count: int | None, as_json: bool) -> None:
    """Per-node figures and totals: items, memory, hits, misses, hit ratio, evictions, ops/s.

    Exits 1 when no node answers. Watching, a terminal gets a live table; a pipe gets one table
    (or, with --json, one JSON object) per interval."""
    servers = obj.servers()
    security = obj.security
    rows, seen = sample(servers, None, security)
    if not watch:
        time.sleep(min(interval, 0.5))
        rows, _ = sample(servers, seen, security)
        if as_json:
            click.echo(json.dumps(stats_document(rows), indent=2))
        else:
            console.print(stats_table(rows))
        sys.exit(0 if any(r.up for r in rows) else 1)
    live = None
    if console.is_terminal and not as_json:
        live = Live(stats_table(rows), console=console, auto_refresh=False)
    samples = 0
    with live or nullcontext():
        while count is None or samples < count:
            time.sleep(interval)
            rows, seen = sample(servers, seen, security)
            samples += 1
            if as_json:
                click.echo(json.dumps({"time": round(time.time(), 3), **stats_document(rows)}))
            elif live is not None:
                live.update(stats_table(rows), refresh=True)
            else:
                console.print(stats_table(rows))
            sys.stdout.flush()
    sys.exit(0 if any(r.up for r in rows) else 1)


def stats_document(rows: list[NodeFigures]) -> dict:
    total = totals(rows)
    return {
        "nodes": [r.as_dict() for r in rows],
        "total": {**total.as_dict(), "answering": sum(r.up for r in rows), "members": len(rows)},
    }


@cli.command()
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.1))
@click.pass_obj
def ping(obj: Settings, timeout: float) -> None:
    """A real round trip (``version``, after TLS and the login) to every server; exits 1 unless
    all answer. For health checks: ``ringcache --location 127.0.0.1:11212 --authfile F ping``."""
    failed = 0
    for server in obj.servers():
        started = time.monotonic()
        try:
            with Connection(server, timeout, timeout, obj.security) as conn:
                (reply,) = conn.request(protocol.VERSION, (protocol.STATUS,))
        except (OSError, RingcacheError) as exc:
            reply = exc
        took = (time.monotonic() - started) * 1000
        if isinstance(reply, bytes) and reply.startswith(b"VERSION "):
            click.echo(f"{server}: {reply.decode()} ({took:.1f} ms)")
        else:
            failed += 1
            click.echo(f"{server}: no answer: {reply}")
    sys.exit(1 if failed else 0)


@cli.command()
@click.argument("key")
@click.pass_obj
def locate(obj: Settings, key: str) -> None:
    """The node that owns KEY, then the fallback order on the ring."""
    try:
        raw = validate_key(key)
    except IllegalInputError as exc:
        raise click.BadParameter(f"{key!r}: {exc}", param_hint="'KEY'") from None
    ring = Ring(obj.servers())
    order = list(ring.candidates(raw))
    console.print(f"{key!r} → [bold]{order[0]}[/] (ketama name {order[0].name!r})")
    if len(order) > 1:
        console.print("fallback order: " + " → ".join(str(s) for s in order[1:]))


@cli.command()
@click.pass_obj
def ring(obj: Settings) -> None:
    """Each node's share of the key space."""
    r = Ring(obj.servers())
    table = Table(title=f"ketama ring: {r.points} points", title_justify="left")
    table.add_column("node")
    table.add_column("weight", justify="right")
    table.add_column("share", justify="right")
    for server, share in r.shares().items():
        table.add_row(str(server), str(server.weight), f"{share:.1%}")
    console.print(table)


LOCK_WAIT = 300.0  # a mover waits this long for another's move (a pod's preStop included)

GRACE = click.option(
    "--grace",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds between publishing the moving membership and copying; at least the "
    "clients' discovery_interval.",
)


def _rebalance(
    old: list[Server], new: list[Server], grace: float, security: Security | None
) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .follow import MoveBusy, MoveLock
    from .rebalance import PublishError, rebalance

    everyone = list({s.name: s for s in [*old, *new]}.values())
    if not any(_answers(s, security) for s in everyone):
        raise Failure(f"no server answers ({', '.join(map(str, everyone))}); nothing was done")
    lock = MoveLock(everyone, security, grace)
    try:
        lock.acquire(LOCK_WAIT, lambda holder: console.print(
            f"waiting for the move in progress ({holder})", highlight=False))  # fmt: skip
    except MoveBusy as busy:
        raise Failure(f"{busy}; still held after {LOCK_WAIT:.0f} s, nothing was done") from None
    with (
        lock,
        Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=not sys.stdout.isatty(),
        ) as bar,
    ):
        task = bar.add_task("moving keys", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = rebalance(old, new, progress, grace=grace, security=security, renew=lock.renew)
        except PublishError as exc:
            raise Failure(f"{exc}; the move did not complete, run it again") from None
        except (RuntimeError, OSError, RingcacheError) as exc:
            hint = ""
            if "unauthenticated" in str(exc) or "authentication" in str(exc):
                hint = " (the servers want a login: --user/--password or RINGCACHE_USER/_PASSWORD)"
            raise Failure(f"{exc}{hint}; nothing was published") from None
    for server in result["skipped"]:
        console.print(
            f"note: {server} did not answer: nothing was moved from it (its keys are misses "
            "until written again)"
        )
    for server in result["owed"]:
        console.print(
            f"note: a client that could not reach {server} owes it a replay: nothing more was "
            "moved from it (its keys are misses until written again)"
        )
    if result["cleared"]:
        console.print(
            f"note: deleted {result['cleared']} items that a joining node kept from before it "
            "joined (values the application may have replaced or deleted since)"
        )
    console.print(
        f"moved {result['copied']} of {result['planned']} keys that changed owner; "
        f"membership version {result['version']}: {';'.join(map(str, new))}"
    )
    return result


def _answers(server: Server, security: Security | None) -> bool:
    """Anything comes back (a refused login included): the server is there."""
    try:
        with Connection(server, 2, 2, security) as conn:
            conn.request(protocol.VERSION, (protocol.STATUS,))
    except OSError:
        return False
    except RingcacheError:
        return True
    return True


def _local_port(address: tuple[str, int] | None) -> int | None:
    if address is None:
        return None
    host, port = address
    if host not in (HOST, "localhost"):
        raise click.BadParameter(
            f"{host}:{port}: the local cluster's nodes listen on {HOST}; give a port, "
            f"{HOST}:PORT, or --location for another cluster",
            param_hint="'SERVER'",
        )
    return port


@cli.command()
@click.argument("server", required=False, type=AddressType(default_host=HOST))
@GRACE
@click.pass_obj
def add(obj: Settings, server: tuple[str, int] | None, grace: float) -> None:
    """Add SERVER (HOST:PORT) to the cluster and move the keys it now owns.

    Without --location a new local node is started (SERVER is then its port or 127.0.0.1:PORT,
    by default the port after the last member's); it joins the members once its keys moved."""
    old = obj.membership()
    if obj.location:
        if server is None:
            raise click.UsageError("give the address of the server to add (HOST:PORT)")
        new_server = parse_location([f"{server[0]}:{server[1]}"])[0]
        if new_server.name in {s.name for s in old}:
            raise click.BadParameter(f"{new_server} is already a member", param_hint="'SERVER'")
        _rebalance(old, [*old, new_server], grace, obj.security)
        return
    port = _local_port(server)
    if port is not None and any(s.port == port and s.host == HOST for s in old):
        raise click.BadParameter(f"{HOST}:{port} is already a member", param_hint="'SERVER'")
    member = obj.local.add(port, save=False)
    try:
        _rebalance(old, [*old, parse_location(member.location)[0]], grace, obj.security)
    except BaseException:
        obj.local.stop(member.port)
        console.print(f"stopped the new node {member.location}: not a member", highlight=False)
        raise
    obj.local.join(member)


@cli.command()
@click.argument("server", type=AddressType(default_host=HOST))
@GRACE
@click.option(
    "--if-member",
    is_flag=True,
    help="A SERVER that is no longer a member is no mistake (a pod's preStop: the follower may "
    "have moved its keys already).",
)
@click.pass_obj
def remove(obj: Settings, server: tuple[str, int], grace: float, if_member: bool) -> None:
    """Move SERVER's keys to their new owners, then drop it (a local node is stopped)."""
    old = obj.membership()
    gone = parse_location([f"{server[0]}:{server[1]}"])[0]
    match = [s for s in old if s.name == gone.name or (s.host, s.port) == (gone.host, gone.port)]
    if not match and if_member:
        console.print(f"{gone} is not a member: nothing to move", highlight=False)
        return
    if not match:
        members = ";".join(map(str, old))
        raise click.BadParameter(f"{gone} is not a member ({members})", param_hint="'SERVER'")
    remaining = [s for s in old if s is not match[0]]
    if not remaining:
        raise click.BadParameter(f"{gone} is the last member", param_hint="'SERVER'")
    if obj.location:
        from .follow import mark_drained

        # Before the move, so that a follower never sees the membership without it and the
        # mark not yet written (it would move the keys back onto a pod about to stop).
        mark_drained(match[0], old, obj.security)
    _rebalance(old, remaining, grace, obj.security)
    if not obj.location:
        obj.local.remove(match[0].port)


@cli.command("rebalance")
@click.option("--to", "target", required=True, type=LocationType(), help="The new membership.")
@GRACE
@click.pass_obj
def rebalance_command(obj: Settings, target: str, grace: float) -> None:
    """Move from the current membership (--location) to --to, copying keys that change owner."""
    _rebalance(obj.membership(), obj.resolve(target), grace, obj.security)


@cli.command()
@click.option(
    "--interval",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between two looks at DNS.",
)
@GRACE
@click.pass_obj
def follow(obj: Settings, interval: float, grace: float) -> None:
    """Watch DNS and move the keys whenever the set of names it returns changes.

    In the foreground until stopped; --location names the nodes through DNS
    (dnssrv+_memcache._tcp.ringcache.NS.svc.cluster.local). Publishes the membership DNS names
    when none is, finishes a move it (or another mover) left half done, and takes the one move
    lock, so a second follower waits. Run one per cluster (deploy/kubernetes: a Deployment)."""
    from .follow import follow_once
    from .rebalance import PublishError

    location = obj.location
    if not location or not split_location(location)[1]:
        raise click.UsageError(
            "follow needs a --location with DNS names (dnssrv+NAME or dns+NAME:PORT)"
        )

    def say(message: str) -> None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the lock is released
    say(f"following {location} every {interval:g} s")
    while True:
        try:
            follow_once(obj.resolve(location), grace, obj.security, say=say)
        except (PublishError, RuntimeError, OSError, RingcacheError) as exc:
            say(f"{exc}; the membership stays as it is, trying again in {interval:g} s")
        time.sleep(interval)


@cli.command()
@click.option(
    "--listen",
    default="127.0.0.1:9150",
    show_default=True,
    type=AddressType(),
    help="ADDRESS:PORT to serve /metrics on.",
)
@click.pass_obj
def metrics(obj: Settings, listen: tuple[str, int]) -> None:
    """Serve the stats figures in Prometheus' text format over HTTP until Ctrl-C."""
    from .metrics import serve

    host, port = listen
    servers = obj.servers()
    try:
        server, _thread = serve(servers, host, port, obj.security)
    except OSError as exc:
        raise Failure(f"cannot serve /metrics on {host}:{port}: {exc.strerror or exc}") from None
    console.print(f"serving /metrics on http://{host}:{server.server_port}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    sys.exit(main())
