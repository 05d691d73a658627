"""A local cluster: node processes on 127.0.0.1, their pid files, logs and member list.

This module owns starting, stopping, killing (SIGKILL), pausing (SIGSTOP/SIGCONT), restarting
and adding node processes, and the state kept under a run directory (``.run/`` by default):
``node-PORT.pid``, ``node-PORT.log`` and ``cluster.json`` (the members). The Makefile, the
``ringcache`` CLI and the tests all drive nodes through ``LocalCluster``. Nodes are started in
their own session so they outlive the command that started them; every pid is checked to be
a ringcache node before it is signalled, so a stale pid file never hits an unrelated process.
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


class ClusterError(RuntimeError):
    """Something the user must act on (a busy port, a node that will not start)."""


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

    def __init__(self, run_dir: str | Path = ".run", python: str = sys.executable) -> None:
        self.run_dir = Path(run_dir)
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
        nodes: int = 3,
        port: int = DEFAULT_PORT,
        memory: int = 64,
        args: list[str] | None = None,
    ) -> list[Member]:
        """Start ``nodes`` nodes on consecutive ports; running members are left as they are."""
        wanted = [Member(port + i, memory, list(args or [])) for i in range(nodes)]
        known = {m.port: m for m in self.members()}
        for member in wanted:
            known.setdefault(member.port, member)
        members = sorted(known.values(), key=lambda m: m.port)
        self._save(members)
        for member in members:
            if self.pid(member.port) is None:
                self._spawn(member)
        self.wait_ready([m.port for m in members])
        return members

    def add(self, port: int | None = None, memory: int | None = None) -> Member:
        """Start one more node (on the next free port after the last member by default)."""
        members = self.members()
        if port is None:
            port = max((m.port for m in members), default=DEFAULT_PORT - 1) + 1
            while port_in_use(port):
                port += 1
        if any(m.port == port for m in members):
            raise ClusterError(f"{HOST}:{port} is already a member")
        mem = memory if memory is not None else (members[0].memory if members else 64)
        member = Member(port, mem)
        self._save([*members, member])
        self._spawn(member)
        self.wait_ready([port])
        return member

    def remove(self, port: int) -> None:
        """Stop a node and drop it from the members."""
        self.stop(port)
        self._save([m for m in self.members() if m.port != port])

    def _spawn(self, member: Member) -> int:
        if port_in_use(member.port):
            raise ClusterError(
                f"port {member.port} on {HOST} is already in use by another program; "
                f"stop it or choose another port (--port)"
            )
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
            out.append(
                NodeStatus(
                    port=m.port,
                    location=m.location,
                    pid=pid,
                    up=pid is not None,
                    answering=pid is not None and answers(m.port),
                    uptime=now - started if started else None,
                )
            )
        return out
