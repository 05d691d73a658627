"""The ``ringcache`` command: run a local cluster and look at any memcached-compatible one.

This module owns the command line (click) and what each command prints (rich tables, live
refresh); the figures come from ``figures.py``. Process management is ``LocalCluster``'s;
placement is the client's ``Ring``. Every command that reads
a cluster takes ``--location`` (default: the local cluster's members), so it works against
real memcached fleets too, and ``--tls``/``--ca``/``--cert``/``--user``/``--password`` (or their
``RINGCACHE_*`` environment variables) for secured ones.
"""

from __future__ import annotations

import json
import sys
import time

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from ringcache.client import Connection, RingcacheError, protocol
from ringcache.client.ring import Ring, Server, parse_location
from ringcache.client.security import Security, tls_context
from ringcache.node.auth import AuthFileError, load_authfile

from .figures import NodeFigures, sample, totals
from .local import ClusterError, LocalCluster

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
        table.add_row(
            row.node, state, f"{row.items:,}", used, f"{row.get_hits:,}", f"{row.get_misses:,}",
            ratio, f"{row.evictions:,}", f"{row.connections:,}", ops,
        )  # fmt: skip
    return table


# -- the command --------------------------------------------------------------------------------
class Context:
    def __init__(
        self, location: str | None, run_dir: str, security: Security | None = None
    ) -> None:
        self.local = LocalCluster(run_dir)
        self._location = location
        self.security = security

    def servers(self) -> list[Server]:
        if self._location:
            return parse_location(self._location)
        members = self.local.locations()
        if not members:
            raise click.UsageError(
                "no local cluster is running (start one with `ringcache up` or `make cluster`), "
                "and no --location was given"
            )
        return parse_location(members)


@click.group()
@click.option(
    "--location",
    envvar="RINGCACHE_LOCATION",
    help="Servers, as in Django's LOCATION (default: the local cluster).",
)
@click.option(
    "--run-dir",
    default=".run",
    show_default=True,
    help="Where the local cluster keeps pid files and logs.",
)
@click.option(
    "--tls",
    is_flag=True,
    envvar="RINGCACHE_TLS",
    help="Speak TLS to the servers (memcached -Z); implied by --ca and --cert.",
)
@click.option(
    "--ca",
    envvar="RINGCACHE_CA",
    type=click.Path(exists=True, dir_okay=False),
    help="CA bundle (PEM) that signed the servers' certificates.",
)
@click.option(
    "--cert",
    envvar="RINGCACHE_CERT",
    type=click.Path(exists=True, dir_okay=False),
    help="Client certificate with its key (PEM), for servers that require one.",
)
@click.option("--user", envvar="RINGCACHE_USER", help="Login for servers started with -Y.")
@click.option(
    "--authfile",
    envvar="RINGCACHE_AUTHFILE",
    type=click.Path(exists=True, dir_okay=False),
    help="Log in as the first entry of this -Y authfile (for probes on the node's host).",
)
@click.option(
    "--password",
    envvar="RINGCACHE_PASSWORD",
    help="Password of --user (prefer the RINGCACHE_PASSWORD environment variable).",
)
@click.pass_context
def main(
    ctx: click.Context,
    location: str | None,
    run_dir: str,
    tls: bool,
    ca: str | None,
    cert: str | None,
    user: str | None,
    authfile: str | None,
    password: str | None,
) -> None:
    """Run a local ringcache cluster and inspect any memcached-compatible cluster."""
    if authfile and user is None:
        try:
            entries = load_authfile(authfile)
        except AuthFileError as exc:
            raise click.UsageError(str(exc)) from None
        if not entries:
            raise click.UsageError(f"{authfile} has no entry")
        user, password = (part.decode() for part in entries[0])
    context = tls_context(True, ca=ca, cert=cert) if (tls or ca or cert) else None
    try:
        security = Security.from_options(context, user, password)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    ctx.obj = Context(location, run_dir, security)


def _fail(exc: Exception) -> None:
    console.print(f"[red]error:[/] {exc}")
    sys.exit(1)


def caches_snippet(locations: list[str]) -> str:
    inner = ", ".join(f'"{loc}"' for loc in locations)
    return (
        "CACHES = {\n"
        '    "default": {\n'
        '        "BACKEND": "ringcache.client.django.RingCache",\n'
        f'        "LOCATION": [{inner}],\n'
        "    }\n"
        "}"
    )


@main.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 64))
@click.option("--port", default=11211, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--memory", default=64, show_default=True, type=click.IntRange(2), help="-m of each node, MB."
)
@click.pass_obj
def up(obj: Context, nodes: int, port: int, memory: int) -> None:
    """Start a local cluster (nodes already running are left as they are)."""
    try:
        members = obj.local.up(nodes, port, memory)
    except ClusterError as exc:
        _fail(exc)
    locations = [m.location for m in members]
    console.print(f"[green]{len(members)} nodes up[/] (logs and pid files in {obj.local.run_dir}/)")
    console.print(f"LOCATION: {';'.join(locations)}")
    console.print("\nDjango settings:\n", highlight=False)
    console.print(caches_snippet(locations), highlight=False, markup=False)


@main.command()
@click.pass_obj
def down(obj: Context) -> None:
    """Stop the local cluster."""
    members = obj.local.members()
    obj.local.down()
    console.print(f"stopped {len(members)} nodes")


@main.command()
@click.pass_obj
def status(obj: Context) -> None:
    """Each local node: up or down, pid, address, uptime."""
    rows = obj.local.status()
    if not rows:
        console.print("no local cluster (start one with `ringcache up`)")
        return
    table = Table(title="ringcache status", title_justify="left")
    for name in ("node", "state", "pid", "answers", "uptime"):
        table.add_column(name)
    for r in rows:
        uptime = "-" if r.uptime is None else time.strftime("%H:%M:%S", time.gmtime(r.uptime))
        table.add_row(
            r.location,
            "[green]up[/]" if r.up else "[red]down[/]",
            str(r.pid or "-"),
            "yes" if r.answering else "no",
            uptime,
        )
    console.print(table)


@main.command()
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", default=1.0, show_default=True, type=click.FloatRange(0.1))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_obj
def stats(obj: Context, watch: bool, interval: float, as_json: bool) -> None:
    """Per-node figures and totals: items, memory, hits, misses, hit ratio, evictions, ops/s."""
    servers = obj.servers()
    security = obj.security
    rows, seen = sample(servers, None, security)
    if not watch:
        time.sleep(min(interval, 0.5))
        rows, _ = sample(servers, seen, security)
        if as_json:
            click.echo(
                json.dumps(
                    {"nodes": [r.as_dict() for r in rows], "total": totals(rows).as_dict()},
                    indent=2,
                )
            )
        else:
            console.print(stats_table(rows))
        return
    with Live(stats_table(rows), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval)
                rows, seen = sample(servers, seen, security)
                live.update(stats_table(rows), refresh=True)
        except KeyboardInterrupt:
            pass


@main.command()
@click.option("--timeout", default=2.0, show_default=True, type=click.FloatRange(0.1))
@click.pass_obj
def ping(obj: Context, timeout: float) -> None:
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


@main.command()
@click.argument("key")
@click.pass_obj
def locate(obj: Context, key: str) -> None:
    """The node that owns KEY, then the fallback order on the ring."""
    ring = Ring(obj.servers())
    order = list(ring.candidates(key.encode()))
    console.print(f"{key!r} → [bold]{order[0]}[/] (ketama name {order[0].name!r})")
    if len(order) > 1:
        console.print("fallback order: " + " → ".join(str(s) for s in order[1:]))


@main.command()
@click.pass_obj
def ring(obj: Context) -> None:
    """Each node's share of the key space."""
    r = Ring(obj.servers())
    table = Table(title=f"ketama ring: {r.points} points", title_justify="left")
    table.add_column("node")
    table.add_column("weight", justify="right")
    table.add_column("share", justify="right")
    for server, share in r.shares().items():
        table.add_row(str(server), str(server.weight), f"{share:.1%}")
    console.print(table)


GRACE = click.option(
    "--grace",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between publishing the moving membership and copying; at least the "
    "clients' discovery_interval.",
)


def _rebalance(
    old: list[Server], new: list[Server], grace: float, security: Security | None
) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from .rebalance import PublishError, rebalance

    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=not sys.stdout.isatty(),
    ) as bar:
        task = bar.add_task("moving keys", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        try:
            result = rebalance(old, new, progress, grace=grace, security=security)
        except PublishError as exc:
            console.print(f"[red]error:[/] {exc}; the move did not complete, run it again")
            sys.exit(1)
        except (RuntimeError, OSError, RingcacheError) as exc:
            hint = ""
            if "unauthenticated" in str(exc) or "authentication" in str(exc):
                hint = " (the servers want a login: --user/--password or RINGCACHE_USER/_PASSWORD)"
            console.print(f"[red]error:[/] {exc}{hint}; nothing was published", highlight=False)
            sys.exit(1)
    for server in result["skipped"]:
        console.print(
            f"note: {server} did not answer: nothing was moved from it (its keys are misses "
            "until written again)"
        )
    console.print(
        f"moved {result['copied']} of {result['planned']} keys that changed owner; "
        f"membership version {result['version']}: {';'.join(map(str, new))}"
    )
    return result


@main.command()
@click.argument("server", required=False)
@GRACE
@click.pass_obj
def add(obj: Context, server: str | None, grace: float) -> None:
    """Add SERVER (host:port) to the cluster and move the keys it now owns.

    Without --location a new local node is started (SERVER is then its optional port)."""
    old = obj.servers()
    if obj._location:
        if server is None:
            raise click.UsageError("give the address of the server to add")
        new_server = parse_location(server)[0]
    else:
        try:
            member = obj.local.add(int(server) if server else None)
        except (ClusterError, ValueError) as exc:
            _fail(exc)
        new_server = parse_location(member.location)[0]
    if new_server.name in {s.name for s in old}:
        raise click.UsageError(f"{new_server} is already a member")
    _rebalance(old, [*old, new_server], grace, obj.security)


@main.command()
@click.argument("server")
@GRACE
@click.pass_obj
def remove(obj: Context, server: str, grace: float) -> None:
    """Move SERVER's keys to their new owners, then drop it (a local node is stopped)."""
    old = obj.servers()
    gone = parse_location(server)[0]
    if gone.name not in {s.name for s in old}:
        raise click.UsageError(f"{gone} is not a member")
    remaining = [s for s in old if s.name != gone.name]
    if not remaining:
        raise click.UsageError("cannot remove the last server")
    _rebalance(old, remaining, grace, obj.security)
    if not obj._location:
        obj.local.remove(gone.port)


@main.command("rebalance")
@click.option("--to", "target", required=True, help="The new membership, as a LOCATION.")
@GRACE
@click.pass_obj
def rebalance_command(obj: Context, target: str, grace: float) -> None:
    """Move from the current membership (--location) to --to, copying keys that change owner."""
    _rebalance(obj.servers(), parse_location(target), grace, obj.security)


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:9150",
    show_default=True,
    help="ADDRESS:PORT to serve /metrics on.",
)
@click.pass_obj
def metrics(obj: Context, listen: str) -> None:
    """Serve the stats figures in Prometheus' text format over HTTP until Ctrl-C."""
    from .metrics import serve

    host, _, port = listen.rpartition(":")
    servers = obj.servers()
    server, _thread = serve(servers, host or "127.0.0.1", int(port), obj.security)
    console.print(f"serving /metrics on http://{host or '127.0.0.1'}:{server.server_port}/metrics")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


if __name__ == "__main__":
    main()
