"""A local cluster: node processes on 127.0.0.1, their pid files, logs and member list.

This module owns starting, stopping, killing (SIGKILL), pausing (SIGSTOP/SIGCONT), restarting
and adding node processes, and the state kept under one state directory per user
(``default_run_dir()``: ``$RINGCACHE_RUN_DIR``, else ``$XDG_STATE_HOME/ringcache``, else
``~/.local/state/ringcache``, so every directory finds the same cluster): ``node-PORT.pid``,
``node-PORT.log`` and ``cluster.json`` (the members). The Makefile, the ``ringcache`` CLI and
the tests all drive nodes through ``LocalCluster``. Nodes are started in their own session so
they outlive the command that started them; every pid is checked to be a ringcache node before
it is signalled, so a stale pid file never hits an unrelated process, and a port that answers
without a node of this directory behind it is reported as foreign (``NodeStatus.foreign``), never
taken for a member. Starting is all or nothing: ``up`` checks every port first and stops what it
started when a node fails, and it never changes the shape of a cluster that exists
(``ShapeError``): growing and shrinking go through ``add``/``remove``, which move keys.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ringcache.client import Connection, RingcacheError, Server, protocol

DEFAULT_PORT = 11211
HOST = "127.0.0.1"


def default_run_dir() -> Path:
    """The one local cluster of this user: ``$RINGCACHE_RUN_DIR``, else the XDG state
    directory (``$XDG_STATE_HOME/ringcache``, ``~/.local/state/ringcache`` by default)."""
    explicit = os.environ.get("RINGCACHE_RUN_DIR")
    if explicit:
        return Path(explicit).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state).expanduser() / "ringcache"


class ClusterError(RuntimeError):
    """Something the user must act on (a busy port, a node that will not start)."""


class ShapeError(ClusterError):
    """``up`` was asked for another shape than the cluster that runs."""


@dataclass
class Member:
    port: int
    memory: int = 64
    args: list[str] = field(default_factory=list)

    @property
    def location(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass
class NodeStatus:
    port: int
    location: str
    pid: int | None
    up: bool
    answering: bool
    uptime: float | None
    # No member runs, yet the port answers: the pid of the process behind it (0: unknown).
    foreign: int | None = None


def _is_node(pid: int) -> bool:
    """Whether ``pid`` is a running ringcache node (not just any process that reused it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and (b"ringcache.node" in cmdline or b"ringcache-node" in cmdline)


def _started_at(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def listener_pid(port: int, host: str = HOST) -> int | None:
    """The pid of a process of this user that listens on ``host:port`` (from /proc), if any."""
    wanted = {f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}", f"00000000:{port:04X}"}
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    inodes = set()
    for line in lines:
        fields = line.split()
        if len(fields) > 9 and fields[3] == "0A" and fields[1] in wanted:  # 0A: LISTEN
            inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    return int(proc.name)
        except OSError:
            continue
    return None


def answers(port: int, timeout: float = 0.5) -> bool:
    """A real round trip: ``version`` answered."""
    try:
        with Connection(Server(HOST, port), timeout, timeout) as conn:
            (reply,) = conn.request(protocol.VERSION, (protocol.STATUS,))
    except (OSError, RingcacheError):
        return False
    return isinstance(reply, bytes) and reply.startswith(b"VERSION ")


class LocalCluster:
    """Node processes on 127.0.0.1 managed through a run directory."""

    def __init__(self, run_dir: str | Path | None = None, python: str = sys.executable) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
        self.python = python
        # Processes started by this object (their /proc cmdline is not the node's until exec).
        self._children: dict[int, subprocess.Popen] = {}

    # -- state files -----------------------------------------------------------------------
    @property
    def members_file(self) -> Path:
        return self.run_dir / "cluster.json"

    def pidfile(self, port: int) -> Path:
        return self.run_dir / f"node-{port}.pid"

    def logfile(self, port: int) -> Path:
        return self.run_dir / f"node-{port}.log"

    def members(self) -> list[Member]:
        try:
            data = json.loads(self.members_file.read_text())
        except (OSError, ValueError):
            return []
        return [Member(**m) for m in data.get("members", [])]

    def _save(self, members: list[Member]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.members_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"members": [asdict(m) for m in members]}, indent=2) + "\n")
        tmp.replace(self.members_file)

    def locations(self) -> list[str]:
        return [m.location for m in self.members()]

    def pid(self, port: int) -> int | None:
        """The pid of the node on ``port``; a stale pid file is removed."""
        child = self._children.get(port)
        if child is not None and child.poll() is None:
            return child.pid
        path = self.pidfile(port)
        try:
            pid = int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if _is_node(pid):
            return pid
        path.unlink(missing_ok=True)
        return None

    # -- lifecycle -------------------------------------------------------------------------
    def up(
        self,
        nodes: int | None = None,
        port: int | None = None,
        memory: int | None = None,
        args: list[str] | None = None,
    ) -> list[Member]:
        """Start what is missing of the local cluster and wait until every member answers.

        Without a cluster: ``nodes`` (3) nodes on consecutive ports from ``port`` (11211),
        ``memory`` MB each. With one, its members as they are; an argument that describes
        another shape raises ``ShapeError`` (the membership changes through ``add``/``remove``,
        which move keys). Every port is checked before anything starts, and a failure stops
        what this call started (and forgets a cluster it created)."""
        members = self.members()
        fresh = not members
        if fresh:
            first = DEFAULT_PORT if port is None else port
            members = [
                Member(first + i, 64 if memory is None else memory, list(args or []))
                for i in range(3 if nodes is None else nodes)
            ]
        else:
            self._check_shape(members, nodes, port, memory, args)
        missing = [m for m in members if self.pid(m.port) is None]
        for member in missing:
            self._check_free(member.port)
        if fresh:
            self._save(members)
        started: list[int] = []
        try:
            for member in missing:
                self._spawn(member)
                started.append(member.port)
            self.wait_ready([m.port for m in members])
        except BaseException:
            for started_port in started:
                self.stop(started_port)
            if fresh:
                self.members_file.unlink(missing_ok=True)
            raise
        return members

    def describe(self, members: list[Member] | None = None) -> str:
        """``3 nodes (127.0.0.1:11211-11213, 64 MB each)``: the shape, in the CLI's words."""
        members = self.members() if members is None else members
        ports = [m.port for m in members]
        span = (
            f"{HOST}:{ports[0]}-{ports[-1]}"
            if ports == list(range(ports[0], ports[0] + len(ports)))
            else ", ".join(m.location for m in members)
        )
        sizes = sorted({m.memory for m in members})
        memory = f"{sizes[0]} MB each" if len(sizes) == 1 else "MB: " + "/".join(map(str, sizes))
        return f"{len(members)} node{'s' if len(members) != 1 else ''} ({span}, {memory})"

    def _check_shape(
        self,
        members: list[Member],
        nodes: int | None,
        port: int | None,
        memory: int | None,
        args: list[str] | None,
    ) -> None:
        asked = []
        if nodes is not None and nodes != len(members):
            asked.append(f"{nodes} nodes")
        if port is not None and port != members[0].port:
            asked.append(f"the first port {port}")
        if memory is not None and any(m.memory != memory for m in members):
            asked.append(f"{memory} MB each")
        if args is not None and any(m.args != args for m in members):
            asked.append(f"node arguments {' '.join(args) or '(none)'}")
        if asked:
            raise ShapeError(
                f"a local cluster of {self.describe(members)} exists in {self.run_dir}; up does "
                f"not change its shape (asked for {', '.join(asked)}). Grow it with `ringcache "
                "add`, shrink it with `ringcache remove HOST:PORT` (they move the keys and "
                "publish the membership), or start over with `ringcache down`"
            )

    def _check_free(self, port: int) -> None:
        if not port_in_use(port):
            return
        owner = listener_pid(port)
        who = "another program"
        if owner is not None:
            try:
                cmdline = Path(f"/proc/{owner}/cmdline").read_bytes().replace(b"\0", b" ")
                who = f"pid {owner} ({cmdline.decode(errors='replace').strip()[:100]})"
            except OSError:
                who = f"pid {owner}"
        raise ClusterError(
            f"port {port} on {HOST} is already in use by {who}, which is not a node of "
            f"{self.run_dir}; stop it or choose another port (--port)"
        )

    def add(self, port: int | None = None, memory: int | None = None, save: bool = True) -> Member:
        """Start one more node (on the next free port after the last member by default); it
        joins the members file now, or with ``save=False`` when ``join`` is called (after its
        keys were moved)."""
        members = self.members()
        if port is None:
            port = max((m.port for m in members), default=DEFAULT_PORT - 1) + 1
            while port_in_use(port):
                port += 1
        if any(m.port == port for m in members):
            raise ClusterError(f"{HOST}:{port} is already a member")
        mem = memory if memory is not None else (members[0].memory if members else 64)
        member = Member(port, mem)
        self._spawn(member)
        try:
            self.wait_ready([port])
        except BaseException:
            self.stop(port)
            raise
        if save:
            self.join(member)
        return member

    def join(self, member: Member) -> None:
        self._save([*self.members(), member])

    def remove(self, port: int) -> None:
        """Stop a node and drop it from the members."""
        self.stop(port)
        self._save([m for m in self.members() if m.port != port])

    def _spawn(self, member: Member) -> int:
        self._check_free(member.port)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            self.python, "-m", "ringcache.node", "-l", HOST, "-p", str(member.port),
            "-m", str(member.memory), *member.args,
        ]  # fmt: skip
        with open(self.logfile(member.port), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.pidfile(member.port).write_text(f"{proc.pid}\n")
        self._children[member.port] = proc
        return proc.pid

    def wait_ready(self, ports: list[int], timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(ports)
        while pending:
            for port in list(pending):
                if answers(port, timeout=0.2):
                    pending.discard(port)
                elif self.pid(port) is None:
                    log = self.logfile(port)
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    raise ClusterError(f"the node on port {port} exited: {tail.strip()}")
            if pending and time.monotonic() > deadline:
                raise ClusterError(f"nodes on ports {sorted(pending)} did not answer in {timeout}s")
            if pending:
                time.sleep(0.05)

    def signal(self, port: int, sig: int) -> int:
        pid = self.pid(port)
        if pid is None:
            raise ClusterError(f"no node is running on port {port}")
        os.kill(pid, sig)
        return pid

    def kill(self, port: int) -> None:
        """SIGKILL, as a crash would; the pid file stays behind (stale), like after a crash."""
        pid = self.signal(port, signal.SIGKILL)
        self._reap(port, pid)

    def pause(self, port: int) -> None:
        self.signal(port, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        self.signal(port, signal.SIGCONT)

    def stop(self, port: int, timeout: float = 10.0) -> None:
        pid = self.pid(port)
        if pid is None:
            self.pidfile(port).unlink(missing_ok=True)
            return
        os.kill(pid, signal.SIGCONT)  # a paused node must run to exit
        os.kill(pid, signal.SIGTERM)
        if not self._reap(port, pid, timeout):
            os.kill(pid, signal.SIGKILL)
            self._reap(port, pid, timeout)
        self.pidfile(port).unlink(missing_ok=True)

    def _reap(self, port: int, pid: int, timeout: float = 10.0) -> bool:
        child = self._children.get(port)
        if child is not None and child.pid == pid:
            try:
                child.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _is_node(pid):
                return True
            time.sleep(0.02)
        return False

    def restart(self, port: int) -> None:
        member = next((m for m in self.members() if m.port == port), None)
        if member is None:
            raise ClusterError(f"port {port} is not a member")
        self.stop(port)
        self._spawn(member)
        self.wait_ready([port])

    def down(self) -> None:
        """Stop every member and forget the cluster."""
        for member in self.members():
            self.stop(member.port)
        self.members_file.unlink(missing_ok=True)

    def status(self) -> list[NodeStatus]:
        out = []
        now = time.time()
        for m in self.members():
            pid = self.pid(m.port)
            started = _started_at(pid) if pid else None
            answering = answers(m.port)
            foreign = None
            if pid is None and answering:
                foreign = listener_pid(m.port) or 0
            out.append(
                NodeStatus(
                    port=m.port,
                    location=m.location,
                    pid=pid,
                    up=pid is not None,
                    answering=pid is not None and answering,
                    uptime=now - started if started else None,
                    foreign=foreign,
                )
            )
        return out
