"""A real DNS server for the discovery tests: Debian's dnsmasq on 127.0.0.1 and a free port,
serving the SRV and A records a Kubernetes headless Service would, rewritten as the test
changes the "StatefulSet" (dnsmasq reads its records at start: a rewrite restarts it on the
same port). Stopped by pid by whoever started it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query

from tests.conftest import free_port

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)  # fmt: skip
SERVICE = "ringcache.test"
SRV_NAME = f"_memcache._tcp.{SERVICE}"


class Dnsmasq:
    def __init__(self, workdir: Path, service: str = SERVICE) -> None:
        assert DNSMASQ is not None
        self.workdir = workdir
        self.service = service
        self.srv_name = f"_memcache._tcp.{service}"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, pods: dict[str, tuple[str, int]]) -> None:
        """SRV records of the Service for every pod name (on its port) and its A record, and
        the Service's own A records (every pod's address)."""
        lines = [
            f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
            "no-hosts", "no-poll", "pid-file=", "local-ttl=0",
        ]  # fmt: skip
        if os.geteuid() == 0:
            lines.append("user=root")
        for name, (ip, port) in sorted(pods.items()):
            lines.append(f"srv-host={self.srv_name},{name}.{self.service},{port}")
            lines.append(f"host-record={name}.{self.service},{ip}")
        for ip in sorted({ip for ip, _ in pods.values()}):
            lines.append(f"host-record={self.service},{ip}")
        conf = self.workdir / "dnsmasq.conf"
        conf.write_text("\n".join(lines) + "\n")
        self.stop()
        self.proc = subprocess.Popen(
            [DNSMASQ, "-k", f"--conf-file={conf}"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "dnsmasq.log", "ab"),  # noqa: SIM115
        )
        self._wait(len(pods))

    def _wait(self, records: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                query = dns.message.make_query(self.srv_name, "SRV")
                answer, _ = dns.query.udp_with_fallback(
                    query, "127.0.0.1", port=self.port, timeout=0.5
                )
                if sum(len(r) for r in answer.answer) == records:
                    return
            except (OSError, dns.exception.DNSException):
                pass
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {(self.workdir / 'dnsmasq.log').read_text()}")
            if time.monotonic() > deadline:
                raise TimeoutError("dnsmasq did not answer")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.proc = None


class StatefulSet:
    """Pods ``ringcache-i`` (ringcache nodes) on 127.0.0.(11+i), each on a port of its own, and
    the headless Service's records in dnsmasq, changed as Kubernetes would change them."""

    def __init__(
        self,
        workdir: Path,
        replicas: int = 3,
        service: str = SERVICE,
        node_args: tuple[str, ...] = (),
    ) -> None:
        from tests.conftest import free_ports

        self.base = free_ports(10)
        self.service = service
        self.node_args = node_args
        self.dns = Dnsmasq(workdir, service)
        self.pods: dict[int, Any] = {}
        for i in range(replicas):
            self.start(i)
        self.serve()

    @property
    def location(self) -> str:
        return f"dnssrv+{self.dns.srv_name}"

    def name(self, i: int) -> str:
        return f"ringcache-{i}.{self.service}:{self.base + i}"

    def start(self, i: int, ip: str | None = None) -> None:
        from tests.conftest import start_node

        port = str(self.base + i)
        self.pods[i] = start_node(*self.node_args, "-p", port, host=ip or f"127.0.0.{11 + i}")

    def stop(self, i: int) -> None:
        self.pods.pop(i).stop()

    def serve(self, listed: list[int] | None = None) -> None:
        """DNS lists ``listed`` (default: every running pod)."""
        listed = sorted(self.pods) if listed is None else listed
        self.dns.serve({f"ringcache-{i}": (self.pods[i].host, self.pods[i].port) for i in listed})

    def close(self) -> None:
        self.dns.stop()
        for i in list(self.pods):
            self.stop(i)
