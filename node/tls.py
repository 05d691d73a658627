"""TLS for the node (``-Z`` with memcached's ``-o ssl_*`` options).

This module owns the server's ``ssl.SSLContext``: building it from the flags with memcached's
error messages, ``refresh_certs`` (load the certificate files again without a restart), the
``stats settings`` values memcached prints for TLS, and wrapping an accepted socket. The
handshake and encrypted reads and writes run in ``reactor``, on the same loop as plaintext
connections.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

from .config import Config

# memcached prints OpenSSL's verify flags: NONE 0, PEER 1, |FAIL_IF_NO_PEER_CERT 2,
# |CLIENT_ONCE 4.
VERIFY_FLAGS = (0, 1, 3, 7)
_VERIFY_MODES = (ssl.CERT_NONE, ssl.CERT_OPTIONAL, ssl.CERT_REQUIRED, ssl.CERT_REQUIRED)
_MIN_VERSIONS = (
    ssl.TLSVersion.TLSv1,
    ssl.TLSVersion.TLSv1_1,
    ssl.TLSVersion.TLSv1_2,
    ssl.TLSVersion.TLSv1_3,
)
VERSION_NAMES = ("tlsv1.0", "tlsv1.1", "tlsv1.2", "tlsv1.3")


class TLSConfigError(ValueError):
    """The certificates or TLS options cannot be used; the message is memcached's."""


class ServerTLS:
    """The node's TLS context and what ``stats`` says of it."""

    def __init__(self, cfg: Config, now: Callable[[], int] = lambda: 0) -> None:
        self.cfg = cfg
        self.now = now  # the node's clock (memcached's current_time)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = _MIN_VERSIONS[cfg.ssl_min_version]
        if cfg.ssl_min_version < 2:
            # OpenSSL's default security level refuses TLS 1.0/1.1 whatever the minimum says.
            ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        ctx.options |= ssl.OP_NO_RENEGOTIATION
        if not cfg.ssl_session_cache:
            ctx.options |= ssl.OP_NO_TICKET
            ctx.num_tickets = 0
        if cfg.ssl_kernel_tls:
            ktls = getattr(ssl, "OP_ENABLE_KTLS", None)
            if ktls is None:
                raise TLSConfigError("Kernel TLS offload is not available")
            ctx.options |= ktls
        if cfg.ssl_ciphers:
            try:
                ctx.set_ciphers(cfg.ssl_ciphers)
            except ssl.SSLError:
                raise TLSConfigError(
                    f"Error setting the provided cipher(s): {cfg.ssl_ciphers}"
                ) from None
        self.ctx = ctx
        self.handshake_errors = 0
        self.load_certificates()
        # memcached stamps the first load before its clock starts: at 0.
        self.cert_refreshed = 0
        ctx.verify_mode = _VERIFY_MODES[cfg.ssl_verify_mode]

    def load_certificates(self) -> None:
        """Load the chain, key and CA files (at start and on ``refresh_certs``)."""
        cfg = self.cfg
        try:
            self.ctx.load_cert_chain(cfg.ssl_chain_cert or "", cfg.ssl_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"Error loading the certificate chain: {cfg.ssl_chain_cert or '(null)'} : "
                f"{_why(exc)}"
            ) from None
        if cfg.ssl_ca_cert:
            try:
                self.ctx.load_verify_locations(cafile=cfg.ssl_ca_cert)
            except (OSError, ssl.SSLError) as exc:
                raise TLSConfigError(
                    f"Error loading the CA certificate: {cfg.ssl_ca_cert} : {_why(exc)}"
                ) from None
        self.cert_refreshed = self.now()

    def refresh(self) -> bytes:
        """The ``refresh_certs`` command: ``OK``, or memcached's error line."""
        try:
            self.load_certificates()
        except TLSConfigError as exc:
            return str(exc).encode() + b"\r\n"
        return b"OK\r\n"

    def wrap(self, sock) -> ssl.SSLSocket:
        """An accepted socket as a server-side TLS socket whose handshake has not begun."""
        return self.ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def stats(self) -> list[tuple[str, object]]:
        """The lines ``stats`` adds when TLS is on."""
        pairs: list[tuple[str, object]] = []
        if self.cfg.ssl_session_cache:
            pairs.append(("ssl_new_sessions", self.ctx.session_stats().get("accept_good", 0)))
        pairs.append(("ssl_handshake_errors", self.handshake_errors))
        pairs.append(("time_since_server_cert_refresh", self.now() - self.cert_refreshed))
        return pairs


def settings_lines(cfg: Config) -> list[tuple[str, object]]:
    """The TLS lines of ``stats settings``, exactly as memcached prints them."""
    return [
        ("ssl_enabled", "yes" if cfg.ssl_enabled else "no"),
        ("ssl_chain_cert", cfg.ssl_chain_cert or "(null)"),
        ("ssl_key", cfg.ssl_key or "(null)"),
        ("ssl_verify_mode", VERIFY_FLAGS[cfg.ssl_verify_mode]),
        ("ssl_keyformat", cfg.ssl_keyformat),
        ("ssl_ciphers", cfg.ssl_ciphers or "NULL"),
        ("ssl_ca_cert", cfg.ssl_ca_cert or "NULL"),
        ("ssl_wbuf_size", cfg.ssl_wbuf_size),
        ("ssl_session_cache", "yes" if cfg.ssl_session_cache else "no"),
        ("ssl_kernel_tls", "yes" if cfg.ssl_kernel_tls else "no"),
        ("ssl_min_version", VERSION_NAMES[cfg.ssl_min_version]),
    ]


def _why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return getattr(exc, "strerror", None) or str(exc)
