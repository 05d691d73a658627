"""The client against secured servers (``-Z`` TLS and ``-Y`` logins), on both drivers: data,
failures as misses, the prober and discovery through TLS and the login, Django's OPTIONS."""

from __future__ import annotations

import logging
import time

import pytest
from django.conf import settings

if not settings.configured:
    settings.configure(USE_TZ=True)

from ringcache.client import AuthenticationError, Client, Security, Server, tls_context
from ringcache.client.django import RingCache
from tests.conftest import RawClient, free_port, needs_memcached, start_memcached, start_node

USERS = b"app:s3cret\nadmin:hunter22\n"
FAST = {"connect_timeout": 0.5, "timeout": 0.5, "probe_interval": 0.05, "failure_limit": 1}


@pytest.fixture(scope="module")
def authfile(tmp_path_factory):
    path = tmp_path_factory.mktemp("users") / "authfile"
    path.write_bytes(USERS)
    return str(path)


@pytest.fixture(scope="module")
def secured(tls_files, authfile):
    """Three nodes with TLS and logins."""
    nodes = [start_node(*tls_files.server_flags(), "-Y", authfile) for _ in range(3)]
    yield nodes
    for node in nodes:
        node.stop()


def _options(tls_files, **extra):
    return {
        **FAST,
        "tls": tls_files.client_context(),
        "username": "app",
        "password": "s3cret",
        **extra,
    }


def _location(nodes) -> str:
    return ";".join(n.location for n in nodes)


def test_data_goes_over_tls_with_a_login(make_client, secured, tls_files):
    client = make_client(_location(secured), **_options(tls_files, raise_on_error=True))
    values = {f"key-{i}": f"value-{i}" * 50 for i in range(200)}
    assert client.set_many(values) == []
    assert client.get_many(list(values)) == values
    assert client.set("big", b"x" * 900_000)
    assert client.get("big") == b"x" * 900_000
    assert client.delete("key-1")
    assert client.get("key-1") is None
    stats = client.stats()
    assert len(stats) == 3 and all(s[b"auth_cmds"] >= 1 for s in stats.values())


@needs_memcached
def test_against_memcached_with_the_same_flags(make_client, tls_files, authfile):
    memcached = start_memcached(*tls_files.server_flags(), "-Y", authfile)
    try:
        client = make_client(memcached.location, **_options(tls_files, raise_on_error=True))
        assert client.set("k", "v") and client.get("k") == "v"
        assert client.incr("n", 1) is None and client.add("n", "5") and client.incr("n", 2) == 7
    finally:
        memcached.stop()


def test_a_wrong_password_is_a_miss_and_is_logged(make_client, secured, tls_files, caplog):
    client = make_client(_location(secured), **_options(tls_files, password="wrong"))
    with caplog.at_level(logging.INFO, logger="ringcache.client"):
        assert client.set("k", "v") is False
        assert client.get("k") is None
    assert "refused the login of user 'app'" in caplog.text
    strict = make_client(_location(secured), **_options(tls_files, raise_on_error=True))
    strict.set("k", "v")
    wrong = make_client(
        _location(secured), **_options(tls_files, password="wrong", raise_on_error=True)
    )
    with pytest.raises(AuthenticationError, match="authentication failure"):
        wrong.get("k")


def test_plaintext_client_on_a_tls_node_gets_misses_quickly(make_client, secured):
    client = make_client(_location(secured), **FAST)
    started = time.monotonic()
    assert client.get("k") is None
    assert client.set("k", "v") is False
    assert time.monotonic() - started < 3


def test_prober_readmits_through_tls_and_login(make_client, tls_files, authfile):
    port = free_port()
    flags = [*tls_files.server_flags(), "-Y", authfile, "-p", str(port)]
    node = start_node(*flags)
    client = make_client(node.location, **_options(tls_files))
    assert client.set("k", "v")
    node.stop()
    assert client.get("k") is None
    assert not client.nodes[Server("127.0.0.1", port).name].health.usable
    node = start_node(*flags)
    try:
        deadline = time.monotonic() + 10
        while not client.nodes[Server("127.0.0.1", port).name].health.usable:
            assert time.monotonic() < deadline, "the prober never re-admitted the node"
            time.sleep(0.05)
        assert client.set("k", "v2") and client.get("k") == "v2"
    finally:
        node.stop()


def test_discovery_reads_the_membership_through_tls_and_login(make_client, secured, tls_files):
    first, *_ = secured
    admin = RawClient(first.port, tls=tls_files.client_context())
    members = " ".join(f"localhost|127.0.0.1|{n.port}" for n in secured)
    reply = admin.call(
        b"set a 0 0 14\r\nadmin hunter22\r\nconfig set cluster %s\r\n" % members.encode(),
        b"OK\r\n",
    )
    assert reply.endswith(b"OK\r\n"), reply
    admin.close()
    client = make_client(first.location, **_options(tls_files, discovery=True))
    assert client.cluster_version >= 1
    assert sorted(s.port for s in client.servers) == sorted(n.port for n in secured)


def test_mutual_tls(make_client, tls_files):
    node = start_node(
        *tls_files.server_flags(f"ssl_ca_cert={tls_files.ca_cert}", "ssl_verify_mode=2")
    )
    try:
        ctx = tls_context(tls_files.ca_cert, cert=tls_files.client_cert)
        client = make_client(node.location, **FAST, tls=ctx, raise_on_error=True)
        assert client.set("k", "v") and client.get("k") == "v"
        anonymous = make_client(node.location, **FAST, tls=tls_files.ca_cert)
        assert anonymous.get("k") is None
    finally:
        node.stop()


def test_django_options(secured, tls_files):
    cache = RingCache(
        _location(secured),
        {
            "OPTIONS": {
                **FAST,
                "tls": tls_files.ca_cert,  # a CA bundle path works where a context cannot go
                "username": "app",
                "password": "s3cret",
            }
        },
    )
    cache.set("django-key", {"a": 1}, 30)
    assert cache.get("django-key") == {"a": 1}
    assert cache.get_many(["django-key", "nope"]) == {"django-key": {"a": 1}}
    cache._cache.close()


@pytest.mark.parametrize(
    "options,message",
    [
        ({"username": "app"}, "go together"),
        ({"username": "a b", "password": "x"}, "without spaces"),
        ({"username": "a", "password": "x\r\n"}, "without spaces"),
        ({"tls": 5}, "tls must be"),
    ],
)
def test_bad_security_options(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Client("127.0.0.1:1", **options)


def test_login_bytes_are_memcacheds():
    security = Security.from_options(username="app", password="s3cret")
    assert security is not None and security.tls is None
    assert security.login == b"set _auth 0 0 10\r\napp s3cret\r\n"
    assert Security.from_options() is None
    assert Security.from_options(tls=False) is None
