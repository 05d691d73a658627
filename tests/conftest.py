"""Shared test helpers: real node and memcached processes on 127.0.0.1, and a raw text client.

Every process a test starts listens on 127.0.0.1 only and is stopped by the fixture that
started it, by pid.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

MEMCACHED = shutil.which("memcached")
needs_memcached = pytest.mark.skipif(
    MEMCACHED is None,
    reason="Debian's memcached binary is not installed (apt-get install memcached); "
    "CI always installs it",
)


def _ephemeral_low() -> int:
    """The first port of the kernel's range for outgoing connections' source ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive free ports on 127.0.0.1, below the range the kernel
    takes source ports from: a port there can be taken by any outgoing connection (this
    test's own, to the first of the servers it starts) between this check and the server's
    bind, which CI saw happen."""
    high = _ephemeral_low() - n
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(10_000, high)
        if all(_bindable(port) for port in range(base, base + n)):
            return base
    raise RuntimeError("no free port range")


def free_port() -> int:
    """A free port on 127.0.0.1 for a server that cannot take ``-p 0`` (see ``free_ports``)."""
    return free_ports(1)


def wait_port(
    port: int, proc: subprocess.Popen, timeout: float = 10.0, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing answered on port {port}")


class ServerProcess:
    """A cache server process (ours or memcached) on 127.0.0.1 (or another 127.0.0.x)."""

    def __init__(
        self,
        argv: list[str],
        port: int,
        proc: subprocess.Popen,
        stderr_path: Path,
        host: str = "127.0.0.1",
    ):
        self.argv = argv
        self.port = port
        self.proc = proc
        self.pid = proc.pid
        self.stderr_path = stderr_path
        self.host = host
        self.address = (host, port)

    @property
    def location(self) -> str:
        return f"{self.host}:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def start_node(*args: str, env: dict | None = None, host: str = "127.0.0.1") -> ServerProcess:
    """A ringcache node process on a free port (``-p 0``, port read from the port file) of
    ``host`` (any 127.0.0.x is this machine's loopback)."""
    tmp = Path(tempfile.mkdtemp(prefix="ringcache-node-"))
    port_file = tmp / "ports"
    stderr_path = tmp / "stderr"
    argv = [sys.executable, "-m", "ringcache.node", "-l", host, "-p", "0", *args]
    full_env = {**os.environ, "MEMCACHED_PORT_FILENAME": str(port_file), **(env or {})}
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=full_env)
    deadline = time.monotonic() + 15
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"node exited {proc.returncode}: {stderr_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("node did not report its port")
        time.sleep(0.02)
    port = int(port_file.read_text().split()[-1])
    server = ServerProcess(argv, port, proc, stderr_path, host)
    wait_port(port, proc, host=host)
    return server


def start_memcached(*args: str) -> ServerProcess:
    """Debian's memcached on a free port of 127.0.0.1 (retried if the port was taken)."""
    assert MEMCACHED is not None
    tmp = Path(tempfile.mkdtemp(prefix="memcached-"))
    stderr_path = tmp / "stderr"
    extra = ["-u", "root"] if os.geteuid() == 0 else []
    for _ in range(5):
        port = free_port()
        argv = [MEMCACHED, "-l", "127.0.0.1", "-p", str(port), "-U", "0", *extra, *args]
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err)
        try:
            wait_port(port, proc)
            return ServerProcess(argv, port, proc, stderr_path)
        except RuntimeError:
            continue
    raise RuntimeError("memcached did not start")


def next_second() -> None:
    """memcached refuses a warm restart in the second it stopped (its clock must move on)."""
    now = time.time()
    time.sleep(int(now) + 1.05 - now)


def start_again(server: ServerProcess) -> ServerProcess:
    """``server``'s command line again, on its port (it stopped by itself: SIGUSR1, a
    ``shutdown``); its stderr goes on in the same file."""
    assert server.proc.poll() is not None
    with open(server.stderr_path, "ab") as err:
        proc = subprocess.Popen(server.argv, stdout=subprocess.DEVNULL, stderr=err)
    wait_port(server.port, proc, host=server.host)
    return ServerProcess(server.argv, server.port, proc, server.stderr_path, server.host)


class RawClient:
    """Bytes in, bytes out over one TCP connection."""

    def __init__(
        self,
        port: int,
        timeout: float = 5.0,
        tls: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ):
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock if tls is None else tls.wrap_socket(sock, server_hostname="127.0.0.1")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until(self, terminator: bytes, timeout: float = 5.0) -> bytes:
        self.sock.settimeout(timeout)
        buf = b""
        while not buf.endswith(terminator):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        return buf

    def read_for(self, quiet: float = 0.3, limit: float = 10.0) -> bytes:
        """Everything that arrives until the connection is quiet for ``quiet`` seconds."""
        buf = b""
        deadline = time.monotonic() + limit
        self.sock.settimeout(quiet)
        while time.monotonic() < deadline:
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            buf += chunk
        return buf

    def call(self, data: bytes, terminator: bytes = b"\r\n") -> bytes:
        self.send(data)
        return self.read_until(terminator)

    def closed(self, timeout: float = 2.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


# The address of the "remote host" that tests/cluster/test_remote.py makes with ip netns.
REMOTE_SUBNET = "10.213.77"


class TLSFiles:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost (and the address of
    the tests' network-namespace host) and a client one."""

    def __init__(self, folder: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1", "localhost", f"{REMOTE_SUBNET}.2")
        client = self.ca.issue_cert("ringcache-admin@example.test")
        self.ca_cert = str(folder / "ca.pem")
        self.server_cert = str(folder / "server.pem")
        self.server_key = str(folder / "server.key")
        self.client_cert = str(folder / "client.pem")
        self.ca.cert_pem.write_to_path(self.ca_cert)
        server.private_key_pem.write_to_path(self.server_key)
        server.cert_chain_pems[0].write_to_path(self.server_cert)
        for blob in server.cert_chain_pems[1:]:
            blob.write_to_path(self.server_cert, append=True)
        client.private_key_and_cert_chain_pem.write_to_path(self.client_cert)
        self.other_ca = trustme.CA()  # one that signed nothing the server knows

    def server_flags(self, *extra: str) -> list[str]:
        """memcached's flags for TLS with these files."""
        options = ",".join(
            [f"ssl_chain_cert={self.server_cert}", f"ssl_key={self.server_key}", *extra]
        )
        return ["-Z", "-o", options]

    def client_context(self, cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca_cert)
        if cert:
            ctx.load_cert_chain(self.client_cert)
        return ctx


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> TLSFiles:
    return TLSFiles(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def node():
    server = start_node()
    yield server
    server.stop()


@pytest.fixture
def memcached():
    if MEMCACHED is None:
        pytest.skip("Debian's memcached binary is not installed; CI always installs it")
    server = start_memcached()
    yield server
    server.stop()


@pytest.fixture
def local_cluster(tmp_path):
    """A 3-node LocalCluster on free consecutive ports (two more kept free for adds)."""
    from ringcache.cluster import LocalCluster

    lc = LocalCluster(tmp_path / "run")
    base = free_ports(5)
    lc.up(3, base, memory=16)
    yield lc, base
    lc.down()
