"""deploy/Dockerfile and deploy/compose.yaml run for real, on a Docker engine with no image
registry: the base image is made from Debian's packages (``debootstrap --variant=minbase``
then ``docker import``, kept in the engine for the next run), the project and its
dependencies are installed from wheels built outside the image (no network inside it), and
the compose file's three secured nodes and its example application start. Then: every node
answers through TLS with a login and refuses without one, a node container killed is a miss
for the application (not an error) and comes back healthy, and the health checks say so.
Skipped, saying why, where no engine answers or debootstrap is missing (CI has both).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = shutil.which("docker")
BASE = "ringcache-test-base:bookworm"
IMAGE = "ringcache:test"
MIRROR = os.environ.get("RINGCACHE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
NODES = ("node1", "node2", "node3")


def docker(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    assert DOCKER is not None
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stderr[-2000:]}"
    return result


def compose_command() -> list[str] | None:
    if (
        DOCKER
        and subprocess.run([DOCKER, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [DOCKER, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def engine_answers() -> bool:
    return DOCKER is not None and docker("info", timeout=30, check=False).returncode == 0


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    if not engine_answers():
        pytest.skip("no Docker engine answers `docker info` (CI starts Debian's docker.io)")
    if docker("image", "inspect", BASE, check=False).returncode != 0:
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        if not Path(debootstrap).exists() or os.geteuid() != 0:
            pytest.skip("the base image needs debootstrap, run as root (CI has both)")
        rootfs = tmp_path_factory.mktemp("rootfs")
        subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv,passwd",
             "bookworm", str(rootfs), MIRROR],
            check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([DOCKER, "import", "-", BASE], stdin=tar.stdout, check=True, timeout=300)
        tar.wait(60)
        shutil.rmtree(rootfs, ignore_errors=True)
    context = tmp_path_factory.mktemp("context")
    for name in ("pyproject.toml", "README.md", ".dockerignore"):
        shutil.copy(REPO / name, context / name)
    for name in ("node", "client", "cluster"):
        shutil.copytree(REPO / name, context / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", str(REPO), "-w", str(context / "wheelhouse")],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert wheels.returncode == 0, wheels.stderr[-2000:]
    docker(
        "build", "-q", "-t", IMAGE, "-f", str(REPO / "deploy" / "Dockerfile"),
        "--build-arg", f"BASE={BASE}",
        "--build-arg", "PIP_INSTALL=--no-index --find-links /src/wheelhouse ringcache",
        str(context),
    )  # fmt: skip
    yield IMAGE
    docker("rmi", "-f", IMAGE, check=False)


def test_the_image_runs_the_node_and_the_cli(image):
    version = docker("run", "--rm", image, "-V").stdout
    assert version.strip() == "memcached 1.6.18 (ringcache-node)"
    user = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
    assert user == "10001"
    cli = docker("run", "--rm", "--entrypoint", "ringcache", image, "--version").stdout
    assert cli.startswith("ringcache ")


class App:
    """A Python process inside the compose file's app container, holding one client (the
    app's own settings) across the test: ``fill N`` and ``read N`` lines in, JSON out."""

    SCRIPT = """
import json, os, sys
from ringcache.client import Client
password = open(os.environ["RINGCACHE_PASSWORD_FILE"]).read().strip()
cache = Client(os.environ["RINGCACHE_LOCATION"], tls=os.environ["RINGCACHE_CA"],
               username=os.environ["RINGCACHE_USER"], password=password, probe_interval=0.2)
for line in sys.stdin:
    verb, n = line.split()
    keys = [f"k{i}" for i in range(int(n))]
    if verb == "fill":
        out = {"failed": len(cache.set_many({k: k.encode() for k in keys}))}
    else:
        got = cache.get_many(keys)
        owners = {}
        for k in keys:
            if k not in got:
                node = cache.server_for(k).host
                owners[node] = owners.get(node, 0) + 1
        out = {"hits": len(got), "wrong": sum(v != k.encode() for k, v in got.items()),
               "missing_on": owners}
    print(json.dumps(out), flush=True)
"""

    def __init__(self, container: str) -> None:
        assert DOCKER is not None
        self.proc = subprocess.Popen(
            [DOCKER, "exec", "-i", container, "python", "-u", "-c", self.SCRIPT],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def ask(self, line: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


@pytest.fixture(scope="module")
def compose(image, tmp_path_factory):
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (CI has one)")
    folder = tmp_path_factory.mktemp("compose")
    made = subprocess.run(
        ["bash", str(REPO / "deploy" / "make-secrets.sh"), str(folder / "secrets")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    spec = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    for service in spec["services"].values():
        service.pop("build", None)
        service["image"] = image  # the image built above, not one from a registry
        if "healthcheck" in service and "interval" in service["healthcheck"]:
            service["healthcheck"]["interval"] = "1s"  # the file's 10s, shortened for the test
    (folder / "compose.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    project = f"ringcache-test-{os.getpid()}"
    run = [*command, "-p", project, "-f", str(folder / "compose.yaml")]
    subprocess.run([*run, "up", "-d"], check=True, capture_output=True, timeout=300)
    names = {
        service: subprocess.run(
            [*run, "ps", "-q", service], capture_output=True, text=True, check=True
        ).stdout.strip()
        for service in (*NODES, "app")
    }
    try:
        wait_health(names, NODES, "healthy")
        yield names
    finally:
        subprocess.run([*run, "down", "-v", "--remove-orphans"], capture_output=True, timeout=300)


def health(container: str) -> str:
    """``healthy``/``unhealthy``/``starting`` while it runs, else its state (``exited``)."""
    fmt = "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}"
    state, _, status = docker("inspect", "-f", fmt, container).stdout.strip().partition(" ")
    return status if state == "running" and status else state


def wait_health(names: dict[str, str], services, status: str, timeout: float = 90) -> float:
    started = time.monotonic()
    while not all(health(names[s]) == status for s in services):
        assert time.monotonic() - started < timeout, {s: health(names[s]) for s in services}
        time.sleep(0.5)
    return time.monotonic() - started


def test_secured_nodes_answer_with_a_login_and_refuse_without(compose):
    app = compose["app"]
    # The app's environment names its user; without it (and its password) there is no login.
    ping = ["exec", app, "env", "-u", "RINGCACHE_USER", "ringcache", "--location",
            "node1:11211;node2:11211;node3:11211"]  # fmt: skip
    anonymous = docker(*ping, "--ca", "/run/secrets/ringcache_ca", "ping", check=False)
    assert anonymous.returncode == 1 and anonymous.stdout.count("no answer") == 3
    plaintext = docker(*ping, "ping", check=False)
    assert plaintext.returncode == 1
    secured = docker(
        "exec", app, "sh", "-c",
        'RINGCACHE_PASSWORD="$(cat /run/secrets/ringcache_app_password)" ringcache '
        '--location "$RINGCACHE_LOCATION" --ca /run/secrets/ringcache_ca ping',
        check=False,
    )  # fmt: skip
    assert secured.returncode == 0, secured.stdout + secured.stderr
    assert secured.stdout.count("VERSION 1.6.18") == 3
    assert "heartbeat on node" in docker("logs", app).stdout


def test_a_killed_node_container_is_a_miss_and_comes_back_healthy(compose):
    app = App(compose["app"])
    try:
        assert app.ask("fill 600") == {"failed": 0}
        assert app.ask("read 600")["hits"] == 600
        docker("kill", compose["node2"])
        assert health(compose["node2"]) == "exited"
        down = app.ask("read 600")  # misses for node2's keys, no error
        assert down["wrong"] == 0 and set(down["missing_on"]) == {"node2"}
        assert down["hits"] + down["missing_on"]["node2"] == 600
        docker("start", compose["node2"])
        took = wait_health(compose, ["node2"], "healthy")
        deadline = time.monotonic() + 30
        while True:  # the client re-admits node2 after its probe; node2 came back empty
            app.ask("fill 600")
            back = app.ask("read 600")
            if back["hits"] == 600 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert back == {"hits": 600, "wrong": 0, "missing_on": {}}
        assert all(health(compose[n]) == "healthy" for n in NODES)
        print(f"\nnode2 killed: {down['missing_on']['node2']} of 600 keys were misses; healthy "
              f"again {took:.1f} s after docker start")  # fmt: skip
    finally:
        app.close()
