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

import dns.message
import dns.query

from tests.conftest import free_port

DNSMASQ = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if Path("/usr/sbin/dnsmasq").exists() else None)  # fmt: skip
SERVICE = "ringcache.test"
SRV_NAME = f"_memcache._tcp.{SERVICE}"


class Dnsmasq:
    def __init__(self, workdir: Path) -> None:
        assert DNSMASQ is not None
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def serve(self, pods: dict[str, tuple[str, int]]) -> None:
        """SRV records of ``SRV_NAME`` for every pod name (on its port) and its A record, and
        the Service's own A records (every pod's address)."""
        lines = [
            f"port={self.port}", "listen-address=127.0.0.1", "bind-interfaces", "no-resolv",
            "no-hosts", "no-poll", "pid-file=", "local-ttl=0",
        ]  # fmt: skip
        if os.geteuid() == 0:
            lines.append("user=root")
        for name, (ip, port) in sorted(pods.items()):
            lines.append(f"srv-host={SRV_NAME},{name}.{SERVICE},{port}")
            lines.append(f"host-record={name}.{SERVICE},{ip}")
        for ip in sorted({ip for ip, _ in pods.values()}):
            lines.append(f"host-record={SERVICE},{ip}")
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
                query = dns.message.make_query(SRV_NAME, "SRV")
                answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
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
