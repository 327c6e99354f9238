"""The TLS listener: handshake on the loop, auth_timeout, bad peers and bad certificates."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time

import pytest

from ami_server import hookimpl
from ami_server.audit import MemorySink
from ami_server.server import Server, ServerError
from ami_server.testing import make_config, running_server

from helpers import USERS, non_loopback_ipv4, wait_for
from tlsutil import client_context, make_certificate


@pytest.fixture
def certificate(tmp_path):
    return make_certificate(tmp_path)


def tls_config(certificate, **server):
    cert, key = certificate
    return make_config(
        {"users": USERS,
         "server": {"tls": {"host": "127.0.0.1", "port": 0, "certificate": str(cert), "key": str(key)}}},
        **server,
    )


class TLSClient:
    """A minimal blocking TLS AMI client with bounded reads."""

    def __init__(self, port, cert, timeout=5.0):
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = client_context(cert).wrap_socket(raw, server_hostname="127.0.0.1")
        self.buffer = b""

    def read_until(self, marker):
        while marker not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head + marker

    def read_response(self):
        while True:
            block = self.read_until(b"\r\n\r\n")
            if not block.startswith(b"Event: "):
                return block

    def close(self):
        self.sock.close()


class Hooks:
    def __init__(self):
        self.opened, self.closed = [], []

    @hookimpl
    def on_session_open(self, session):
        self.opened.append(session)

    @hookimpl
    def on_session_close(self, session, reason):
        self.closed.append((session.session_id, reason))


def test_tls_and_plain_listeners_serve_side_by_side(certificate):
    hooks = Hooks()
    with running_server(tls_config(certificate), extra_plugins=[("hooks", hooks)]) as srv:
        tls_port = srv.server.tls_address[1]
        assert tls_port != srv.port
        client = TLSClient(tls_port, certificate[0])
        try:
            assert client.read_until(b"\r\n") == b"Asterisk Call Manager/11.0.0\r\n"
            client.sock.sendall(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: security,user\r\n\r\n")
            assert client.read_until(b"\r\n\r\n") == b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
            event = client.read_until(b"\r\n\r\n")
            assert b"Event: SuccessfulAuth\r\n" in event
            assert f"LocalAddress: IPV4/TLS/127.0.0.1/{tls_port}\r\n".encode() in event
            assert b"RemoteAddress: IPV4/TLS/127.0.0.1/" in event
            with srv.client() as plain:
                assert plain.login("admin", "adminpass")["Message"] == "Authentication accepted"
            # A large reply crosses several TLS records and still arrives whole.
            lines = b"".join(b"Data%d: %s\r\n" % (n, b"x" * 900) for n in range(60))
            client.sock.sendall(b"Action: UserEvent\r\nUserEvent: Big\r\n" + lines + b"\r\n")
            assert client.read_response().startswith(b"Response: Success\r\n")
            big = client.read_until(b"\r\n\r\n")
            assert big.startswith(b"Event: UserEvent\r\n") and big.endswith(lines + b"\r\n")
            client.sock.sendall(b"Action: Logoff\r\n\r\n")
            assert client.read_response() == b"Response: Goodbye\r\nMessage: Thanks for all the fish.\r\n\r\n"
        finally:
            client.close()
    tls_sessions = [s for s in hooks.opened if s.transport == "TLS"]
    assert len(tls_sessions) == 1 and tls_sessions[0].remote_address.startswith("IPV4/TLS/")
    opened = [r for r in srv.log.records("SessionOpened") if r["tls"]]
    assert len(opened) == 1


def test_a_stalled_handshake_does_not_block_the_loop_and_counts_against_auth_timeout(certificate):
    hooks = Hooks()
    with running_server(tls_config(certificate, auth_timeout=0.5), extra_plugins=[("hooks", hooks)]) as srv:
        stalled = socket.create_connection(("127.0.0.1", srv.server.tls_address[1]), timeout=5)
        try:
            with srv.client() as plain:
                plain.login("admin", "adminpass", events="off")
                for n in range(3):
                    assert plain.action("Ping", {"ActionID": str(n)}, timeout=2)["Ping"] == "Pong"
                stalled.settimeout(5)
                assert stalled.recv(100) == b""  # closed by auth_timeout, no banner was ever sent
        finally:
            stalled.close()
    assert [r["remote_address"].startswith("IPV4/TLS/") for r in srv.log.records("AuthTimeout")] == [True]
    # The handshake never finished: it never became a session for the hooks.
    assert all(s.transport == "TCP" for s in hooks.opened)
    assert len(hooks.closed) == len(hooks.opened)


def test_plaintext_on_the_tls_port_fails_the_handshake_and_nothing_else(certificate):
    with running_server(tls_config(certificate)) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.server.tls_address[1]), timeout=5)
        try:
            raw.sendall(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\n\r\n")
            deadline = time.monotonic() + 5
            data = b""
            while time.monotonic() < deadline:
                try:
                    chunk = raw.recv(4096)
                except ConnectionResetError:
                    break  # closed with our unread bytes still queued: an RST
                if not chunk:
                    break
                data += chunk
            assert b"Asterisk Call Manager" not in data
        finally:
            raw.close()
        with srv.client() as plain:
            assert plain.login("admin", "adminpass")["Message"] == "Authentication accepted"
    (failure,) = srv.log.records("TLSHandshakeFailed")
    assert failure["remote_address"].startswith("IPV4/TLS/127.0.0.1/")
    assert "adminpass" not in srv.log.text()


def test_a_client_that_distrusts_the_certificate_is_refused_cleanly(certificate, tmp_path):
    other_cert, _ = make_certificate(tmp_path, "other")
    with running_server(tls_config(certificate)) as srv:
        raw = socket.create_connection(("127.0.0.1", srv.server.tls_address[1]), timeout=5)
        with pytest.raises(ssl.SSLCertVerificationError):
            client_context(other_cert).wrap_socket(raw, server_hostname="127.0.0.1")
        raw.close()
        with srv.client() as plain:
            assert plain.action("Ping")["Message"] == "Permission denied"
        # The server saw a failed handshake, and nothing went wrong inside it.
        wait_for(lambda: srv.log.records("TLSHandshakeFailed"), "the refused handshake to be recorded")
    assert [r for r in srv.log.records() if r["level"] not in ("info", "debug")] == []


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, c, k: {"certificate": str(d / "missing.crt")}, r"server\.tls\.certificate: cannot read '.*missing\.crt'"),
        (lambda d, c, k: {"key": str(d / "missing.key")}, r"server\.tls\.key: cannot read '.*missing\.key'"),
        (lambda d, c, k: {"certificate": write(d / "junk.crt", "not a certificate\n")},
         r"server\.tls: cannot use certificate '.*junk\.crt' with key"),
        (lambda d, c, k: {"key": str(make_certificate(d, "stranger")[1])},
         r"server\.tls: cannot use certificate .* KEY_VALUES_MISMATCH"),
    ],
)
def test_bad_certificates_stop_start_up_naming_the_key(certificate, tmp_path, change, message):
    cert, key = certificate
    tls = {"host": "127.0.0.1", "port": 0, "certificate": str(cert), "key": str(key)}
    tls.update(change(tmp_path, cert, key))
    config = make_config({"users": USERS, "server": {"tls": tls}})
    server = Server(config, log_sink=MemorySink())
    try:
        with pytest.raises(ServerError, match=message):
            server.start()
        assert server.listeners == {}
    finally:
        server.loop.close()


def test_check_config_reports_a_bad_certificate(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[server.tls]\ncertificate = "nope.crt"\nkey = "nope.key"\n'
        '[users.ops]\nsecret = "x"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "ami_server.cli", "--check-config", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    # Relative file names are resolved against the configuration file's directory.
    assert f"server.tls.certificate: cannot read '{tmp_path / 'nope.crt'}'" in result.stderr


def test_tls_table_needs_certificate_and_key():
    from ami_server.config import ConfigError

    with pytest.raises(ConfigError, match=r"server\.tls\.key: is required \(a PEM file\)"):
        make_config({"server": {"tls": {"certificate": "a.crt"}}})
    with pytest.raises(ConfigError, match=r"server\.tls\.verify: unknown key"):
        make_config({"server": {"tls": {"certificate": "a.crt", "key": "a.key", "verify": True}}})


def test_plaintext_secret_over_tls_is_allowed_when_tls_is_required(certificate):
    address = non_loopback_ipv4()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    cert, key = certificate
    config = make_config(
        {"users": USERS,
         "server": {"host": address, "require_tls_for_plaintext": True,
                    "tls": {"host": address, "port": 0, "certificate": str(cert), "key": str(key)}}},
    )
    with running_server(config) as srv:
        context = client_context(cert)
        context.check_hostname = False  # the test certificate names loopback only
        raw = socket.create_connection((address, srv.server.tls_address[1]), timeout=5)
        sock = context.wrap_socket(raw)
        try:
            client = TLSClient.__new__(TLSClient)
            client.sock, client.buffer = sock, b""
            client.read_until(b"\r\n")
            sock.sendall(b"Action: Login\r\nUsername: admin\r\nSecret: adminpass\r\nEvents: off\r\n\r\n")
            assert client.read_response() == b"Response: Success\r\nMessage: Authentication accepted\r\n\r\n"
        finally:
            sock.close()
        with srv.client() as plain:  # the same login over plain TCP from a non-loopback address fails
            plain.send("Login", {"Username": "admin", "Secret": "adminpass"})
            assert plain.read_until_closed() == b"Response: Error\r\nMessage: Authentication failed\r\n\r\n"
