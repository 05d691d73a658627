"""deploy/: every manifest parses and says what matters (ports, probes, names, limits)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ringcache.client import parse_location

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def k8s() -> dict[str, dict]:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "ringcache.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def test_statefulset_and_headless_service_give_stable_location_names():
    objs = k8s()
    service, sts = objs["Service"], objs["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 11211
    names = [
        f"{sts['metadata']['name']}-{i}.{service['metadata']['name']}:11211"
        for i in range(sts["spec"]["replicas"])
    ]
    assert names[0] == "ringcache-0.ringcache:11211"
    servers = parse_location(";".join(names))
    # Port 11211: the ketama names are the bare host names, as libmemcached/twemproxy use.
    assert [s.name for s in servers] == [n.removesuffix(":11211") for n in names]


def test_the_follower_the_prestop_drain_and_the_srv_name():
    objs = k8s()
    service, sts, follower = objs["Service"], objs["StatefulSet"], objs["Deployment"]
    # The SRV name _memcache._tcp.<service> comes from the port's name and protocol.
    (port,) = service["spec"]["ports"]
    assert port["name"] == "memcache" and port.get("protocol", "TCP") == "TCP"
    srv = f"dnssrv+_memcache._tcp.{service['metadata']['name']}.$(POD_NAMESPACE).svc.cluster.local"
    assert follower["spec"]["replicas"] == 1
    assert follower["spec"]["strategy"]["type"] == "Recreate"  # never two during a rollout
    container = follower["spec"]["template"]["spec"]["containers"][0]
    command = container["command"]
    assert command[0] == "ringcache" and "follow" in command
    assert command[command.index("--location") + 1] == srv
    node = sts["spec"]["template"]["spec"]["containers"][0]
    prestop = " ".join(node["lifecycle"]["preStop"]["exec"]["command"])
    assert 'remove "$POD_NAME.ringcache.$POD_NAMESPACE.svc.cluster.local:11211"' in prestop
    assert "--if-member" in prestop and srv.replace("$(POD_NAMESPACE)", "$POD_NAMESPACE") in prestop
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in node["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # Sized from the measured move rate (6.2 s per 100,000 keys after a 5 s grace).
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    # Both log in as the nodes' first authfile entry and check their certificates.
    for argv in (command, prestop.split()):
        assert "/etc/ringcache/auth/authfile" in argv and "/etc/ringcache/tls/ca.crt" in argv


def test_container_limits_follow_minus_m_and_probes_are_real():
    sts = k8s()["StatefulSet"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    megabytes = int(args[args.index("-m") + 1])
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and megabytes < int(limit[:-2]) <= megabytes * 2 + 64
    assert int(container["resources"]["requests"]["memory"][:-2]) > megabytes
    ping = container["readinessProbe"]["exec"]["command"]
    assert ping[0] == "ringcache" and ping[-1] == "ping"
    assert container["livenessProbe"]["exec"]["command"] == ping
    # The probe logs in with the node's own authfile over the loopback-only plaintext listener.
    assert ping[ping.index("--authfile") + 1] == args[args.index("-Y") + 1]
    assert f"notls:{ping[ping.index('--location') + 1]}" in args[args.index("-l") + 1]
    assert container["ports"][0]["containerPort"] == 11211
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    pdb = k8s()["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    # The base is a build argument: python:3.11-slim for users, any Debian-like base with
    # Python 3.11 and venv where no registry is reachable (tests/cluster/test_images.py).
    assert "ARG BASE=python:3.11-slim" in text and "FROM ${BASE}" in text
    assert "USER 10001" in text and "useradd" in text
    assert '"-l", "0.0.0.0"' in text and "EXPOSE 11211" in text
    assert "HEALTHCHECK" in text and "version" in text


def test_compose_has_three_nodes_and_an_app():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    nodes = [name for name in services if name.startswith("node")]
    assert len(nodes) == 3
    location = services["app"]["environment"]["RINGCACHE_LOCATION"]
    assert [s.host for s in parse_location(location)] == nodes
    assert all(services[n]["build"]["dockerfile"] == "deploy/Dockerfile" for n in nodes)
    # Secrets come from files beside the compose file, mounted under /run/secrets/.
    for name in [*services["node1"]["secrets"], *services["app"]["secrets"]]:
        assert compose["secrets"][name]["file"].startswith("./secrets/")
    command = " ".join(services["node1"]["command"])
    for name in services["node1"]["secrets"]:
        assert f"/run/secrets/{name}" in command
    assert services["app"]["environment"]["RINGCACHE_CA"] == "/run/secrets/ringcache_ca"


def test_kubernetes_manifests_validate_against_the_schemas():
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "ringcache.yaml").read_text()))
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
    broken = dict(docs[1], spec={**docs[1]["spec"], "replicas": "three"})
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def test_secrets_are_mounted_never_baked_in():
    sts = k8s()["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    container = pod["containers"][0]
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"]}
    assert secrets == {"tls": "ringcache-tls", "auth": "ringcache-auth"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert all(m["readOnly"] for m in container["volumeMounts"])
    args = " ".join(container["args"])
    assert f"ssl_chain_cert={mounts['tls']}/tls.crt,ssl_key={mounts['tls']}/tls.key" in args
    assert f"-Y {mounts['auth']}/authfile" in args and "-Z" in container["args"]
    assert pod["securityContext"]["fsGroup"] == 10001  # group-readable 0440 secret files
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "secrets" not in dockerfile.split("Certificates and authfiles", 1)[0]
    assert not any(w in dockerfile for w in ("COPY deploy", "tls.key", "authfile "))


def test_systemd_unit():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(DEPLOY / "systemd" / "ringcache-node@.service")
    exec_start = unit["Service"]["ExecStart"]
    assert "ringcache-node -p %i" in exec_start
    assert unit["Service"]["Restart"] == "on-failure"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_node_flags_in_manifests_are_accepted():
    from ringcache.node import parse_args

    container = k8s()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    parse_args(["-l", "0.0.0.0", "-p", "11211", *container["args"]])


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker client on this machine")
def test_docker_compose_config():
    from tests.cluster.test_images import compose_command

    command = compose_command()
    if command is None:
        pytest.skip("neither the docker compose plugin nor docker-compose is installed")
    result = subprocess.run(
        [*command, "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def _run_deploy_flags(args: list[str], paths: dict[str, str], secrets: Path, pings: list[str]):
    """Start a node with a manifest's own flags (mounted paths mapped to ``secrets``, the
    listeners moved to free ports), then use it as the manifest's application and probe do."""
    from ringcache.client import Client
    from tests.conftest import free_port, start_node

    tls_port, probe_port = free_port(), free_port()
    mapped = []
    for arg in args:
        for mounted, local in paths.items():
            arg = arg.replace(mounted, local)
        mapped.append(arg)
    listen = mapped.index("-l") + 1
    assert mapped[listen] == "0.0.0.0:11211,notls:127.0.0.1:11212"
    mapped[listen] = f"127.0.0.1:{tls_port},notls:127.0.0.1:{probe_port}"
    node = start_node(*mapped)
    try:
        app = Client(
            f"localhost:{tls_port}",
            tls=str(secrets / "ca.crt"),
            username="app",
            password=(secrets / "app.password").read_text().strip(),
            raise_on_error=True,
        )
        assert app.set("k", "v") and app.get("k") == "v"
        app.close()
        probe = [p.replace("127.0.0.1:11212", f"127.0.0.1:{probe_port}") for p in pings]
        for mounted, local in paths.items():
            probe = [p.replace(mounted, local) for p in probe]
        run = [sys.executable, "-m", "ringcache.cluster.cli", *probe[1:]]
        ok = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert ok.returncode == 0 and "VERSION 1.6.18" in ok.stdout, ok.stdout + ok.stderr
        wrong = secrets / "wrong-authfile"
        wrong.write_text("admin:not-the-password\n")
        bad = list(run)
        bad[bad.index("--authfile") + 1] = str(wrong)
        refused = subprocess.run(bad, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "authentication failure" in refused.stdout
    finally:
        node.stop()


@pytest.fixture(scope="module")
def made_secrets(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed by deploy/make-secrets.sh")
    folder = tmp_path_factory.mktemp("deploy") / "secrets"
    subprocess.run(["bash", str(DEPLOY / "make-secrets.sh"), str(folder)], check=True, timeout=60)
    return folder


def test_kubernetes_flags_and_probes_work_with_made_secrets(made_secrets):
    container = k8s()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    paths = {
        "/etc/ringcache/tls/tls.crt": str(made_secrets / "tls.crt"),
        "/etc/ringcache/tls/tls.key": str(made_secrets / "tls.key"),
        "/etc/ringcache/auth/authfile": str(made_secrets / "authfile"),
    }
    ping = container["readinessProbe"]["exec"]["command"]
    _run_deploy_flags(container["args"], paths, made_secrets, ping)


def test_compose_flags_and_healthcheck_work_with_made_secrets(made_secrets):
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    node = compose["services"]["node1"]
    paths = {
        f"/run/secrets/{name}": str(made_secrets / compose["secrets"][name]["file"][10:])
        for name in node["secrets"]
    }
    health = node["healthcheck"]["test"][1:]  # after "CMD"
    _run_deploy_flags(node["command"], paths, made_secrets, health)
