"""deploy/: every manifest parses and says what matters (ports, probes, names, limits)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
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


def test_container_limits_follow_minus_m_and_probes_are_real():
    sts = k8s()["StatefulSet"]
    container = sts["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    megabytes = int(args[args.index("-m") + 1])
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and megabytes < int(limit[:-2]) <= megabytes * 2 + 64
    assert int(container["resources"]["requests"]["memory"][:-2]) > megabytes
    readiness = " ".join(container["readinessProbe"]["exec"]["command"])
    assert "version" in readiness and "VERSION" in readiness
    assert container["livenessProbe"]["tcpSocket"]["port"] == "memcache"
    assert container["ports"][0]["containerPort"] == 11211
    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    pdb = k8s()["PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def test_dockerfile():
    text = (DEPLOY / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
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
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = subprocess.run(
        ["docker", "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
