"""The ``-vv`` transcript, line for line as memcached 1.6.18 prints it.

Every script of the differential suite is replayed against Debian's memcached and a node, both
started with ``-vv``; then their stderr is compared: the startup lines (the slab class table and
``<FD server listening``), each connection's lines (``<FD command``, ``>FD reply``, ``FD: Client
using the ascii protocol``, ``CAS:  failure: …``, ``<FD connection closed.``) and the last
line. memcached runs with one worker thread (its threads print unlocked and can cut into each
other's lines). Normalised only where the two must differ: descriptor numbers (memcached's and
the node's are their own) and the CAS the server expected (each numbered its own history).
"""

from __future__ import annotations

import difflib
import re
import time
from pathlib import Path

import pytest

from tests.conftest import MEMCACHED, start_memcached, start_node
from tests.node.test_differential import SCRIPTS, run_script

CONNECTION_LINE = re.compile(rb"^([<>]?)(\d+)([: ])(.*)$")
CAS_FAILURE = re.compile(rb"^CAS:  failure: expected \d+, got (\d+)$")
# Scripts that turn -vv off come last, so that every other script is logged.
ORDER = sorted(
    SCRIPTS, key=lambda s: any(b"verbosity" in step for step in s[1] if isinstance(step, bytes))
)


def transcript(path: Path) -> tuple[list[bytes], list[list[bytes]], list[bytes]]:
    """(startup lines, each connection's lines in the order they were opened, the lines that
    came after the last connection's)."""
    startup: list[bytes] = []
    connections: list[list[bytes]] = []
    tail: list[bytes] = []
    open_now: dict[bytes, list[bytes]] = {}
    last: list[bytes] | None = None
    for line in path.read_bytes().split(b"\n")[:-1]:
        m = CONNECTION_LINE.match(line)
        if m is None:
            if CAS_FAILURE.match(line) and last is not None:
                last.append(CAS_FAILURE.sub(rb"CAS:  failure: expected #, got \1", line))
            elif last is None:
                startup.append(line)
            else:
                tail.append(line)
            continue
        fd, rest = m.group(2), m.group(1) + b"#" + m.group(3) + m.group(4)
        if rest.endswith(b"server listening (auto-negotiate)"):
            startup.append(rest)
            continue
        if rest.endswith(b"new auto-negotiating client connection"):
            open_now[fd] = []
            connections.append(open_now[fd])
        lines = open_now.get(fd)
        if lines is None:
            tail.append(rest)
            continue
        lines.append(rest)
        last = lines
        if rest.endswith(b"connection closed."):
            del open_now[fd]
    return startup, connections, tail


@pytest.fixture(scope="module")
def transcripts():
    if MEMCACHED is None:
        pytest.skip("Debian's memcached binary is not installed; CI always installs it")
    out = []
    # One worker thread: memcached's threads print unlocked, and two of them can cut into each
    # other's lines.
    for start, args in ((start_memcached, ["-t", "1"]), (start_node, [])):
        server = start("-vv", *args)
        try:
            for _, steps in ORDER:
                run_script(server.port, steps)
            time.sleep(0.3)  # the last close is logged
        finally:
            server.stop()
        out.append(transcript(server.stderr_path))
    return out


def test_startup_lines(transcripts):
    (reference, _, _), (node, _, _) = transcripts
    assert len(reference) == 40 and reference[-1] == b"<# server listening (auto-negotiate)"
    assert node == reference


def test_every_connection_line_for_line(transcripts):
    (_, reference, _), (_, node, _) = transcripts
    probe = [b"<# new auto-negotiating client connection", b"<# connection closed."]
    assert reference[0] == node[0] == probe  # the test's wait until the port answers
    reference, node = reference[1:], node[1:]
    assert len(reference) == len(ORDER) == len(node)
    for (name, _), expected, actual in zip(ORDER, reference, node, strict=True):
        if actual != expected:
            diff = difflib.unified_diff(
                [line.decode("latin-1") for line in expected],
                [line.decode("latin-1") for line in actual],
                "memcached -vv",
                "ringcache-node -vv",
                lineterm="",
            )
            pytest.fail(f"script {name!r}:\n" + "\n".join(diff))


def test_what_comes_last(transcripts):
    (_, _, reference), (_, _, node) = transcripts
    assert node == reference
