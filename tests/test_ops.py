"""Operations in-process: the [http] listener's bounds and credentials, plugin health checks and
metrics, restart_required against the running configuration, log faults, LogRotate."""

from __future__ import annotations

import base64
import json
import socket
import time
from pathlib import Path

import pytest

from ami_server import Health, Metric, hookimpl
from ami_server.config import ConfigError, load_config, parse_config
from ami_server.reload import restart_required
from ami_server.security import host_port
from ami_server.testing import make_config, running_server

from helpers import USERS, wait_for


def http_get(port: int, path: str, headers: str = "", timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk


def status_of(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def http_config(**http):
    return make_config({"users": USERS, "http": {"port": 0, **http}})


def test_a_stalled_http_client_does_not_delay_ami_sessions_and_is_cut_off():
    with running_server(http_config(timeout=0.5)) as srv:
        port = srv.server.http.address[1]
        stalled = socket.create_connection(("127.0.0.1", port), timeout=5)
        stalled.sendall(b"GET /metrics HTTP/1.1\r\n")  # and never the rest
        with srv.client() as client:
            client.login("admin", "adminpass", events="off")
            started = time.monotonic()
            for n in range(20):
                assert client.action("Ping", {"ActionID": str(n)}, timeout=1.0)["Ping"] == "Pong"
            assert time.monotonic() - started < 2.0
        assert stalled.recv(10) == b""  # closed after the timeout, unanswered
        stalled.close()
        assert status_of(http_get(port, "/healthz")) == 200


def test_oversized_and_malformed_requests_and_the_connection_bound():
    with running_server(http_config(max_request_bytes=1024, max_connections=2)) as srv:
        port = srv.server.http.address[1]
        assert status_of(http_get(port, "/metrics", "X-Big: " + "a" * 4000 + "\r\n")) == 431
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"NONSENSE\r\n\r\n")
            assert status_of(sock.recv(1000)) == 400
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /metrics HTTP/1.1\r\n\r\n")
            assert status_of(sock.recv(1000)) == 405
        assert status_of(http_get(port, "/nothing")) == 404
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(2)]
        wait_for(lambda: len(srv.server.http.listener.connections) == 2, "two HTTP connections held")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(10) == b""  # over max_connections: closed at once
        for sock in held:
            sock.close()


def test_bearer_and_basic_credentials(monkeypatch):
    monkeypatch.setenv("AMI_TEST_TOKEN", "tok-123456")
    with running_server(http_config(auth="bearer", token_env="AMI_TEST_TOKEN")) as srv:
        port = srv.server.http.address[1]
        assert status_of(http_get(port, "/metrics")) == 401
        assert status_of(http_get(port, "/metrics", "Authorization: Bearer nope\r\n")) == 401
        assert status_of(http_get(port, "/metrics", "Authorization: Bearer tok-123456\r\n")) == 200
        assert status_of(http_get(port, "/healthz")) == 200  # open unless protect_healthz
        srv.server.log.info("probe", value="tok-123456")
        assert "tok-123456" not in srv.log.text()
    basic = base64.b64encode(b"prom:pw-abcdef").decode()
    with running_server(http_config(auth="basic", username="prom", password="pw-abcdef",
                                    protect_healthz=True)) as srv:
        port = srv.server.http.address[1]
        assert status_of(http_get(port, "/healthz")) == 401
        assert status_of(http_get(port, "/healthz", f"Authorization: Basic {basic}\r\n")) == 200


def test_http_settings_are_validated():
    with pytest.raises(ConfigError, match="http.auth: bearer needs token"):
        make_config({"http": {"auth": "bearer"}})
    with pytest.raises(ConfigError, match="http.token_env: environment variable 'AMI_NOT_SET_X'"):
        make_config({"http": {"auth": "bearer", "token_env": "AMI_NOT_SET_X"}})
    with pytest.raises(ConfigError, match="http.bogus: unknown key"):
        make_config({"http": {"bogus": 1}})
    assert make_config({"http": {"enabled": False}}).http is None


class OpsPlugin:
    """A plugin reporting an upstream's state, as the gateway will."""

    def __init__(self):
        self.up = True

    @hookimpl
    def register_actions(self, server):
        server.add_health_check("upstream", lambda: Health(self.up, "" if self.up else "connection refused"))
        server.add_health_check("cache", lambda: False, required=False)
        server.add_metrics(lambda: [Metric("ami_ops_upstream_up", "gauge", "1 when connected.",
                                           (({"upstream": "pbx1"}, 1.0 if self.up else 0.0),)),
                                    Metric("ami_ops_reconnects_total", "counter", "Reconnects.", (({}, 3.0),))])
        return []


def test_plugins_contribute_health_checks_and_metrics():
    plugin = OpsPlugin()
    with running_server(http_config(), extra_plugins=[("ops", plugin)]) as srv:
        port = srv.server.http.address[1]
        reply = http_get(port, "/healthz")
        body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
        assert status_of(reply) == 200 and body["checks"]["cache"] == {"ok": False, "detail": "", "required": False}
        plugin.up = False
        reply = http_get(port, "/healthz")
        assert status_of(reply) == 503
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["reasons"] == ["upstream: connection refused"]
        text = http_get(port, "/metrics").decode()
        assert 'ami_ops_upstream_up{upstream="pbx1"} 0.0' in text
        assert "ami_ops_reconnects_total 3.0" in text


def test_denied_actions_and_reloads_are_counted():
    with running_server(http_config()) as srv:
        port = srv.server.http.address[1]
        with srv.client() as client:
            client.login("reader", "readerpass", events="off")
            assert client.action("UserEvent", {"UserEvent": "x"})["Message"] == "Permission denied"
        assert srv.call(lambda: srv.server.reload(srv.server.config))[0]
        text = http_get(port, "/metrics").decode()
        assert 'ami_actions_total{action="UserEvent",result="denied"} 1.0' in text
        assert 'ami_reloads_total{outcome="ok"} 1.0' in text


def write(path: Path, level: str) -> None:
    path.write_text(f'[server]\nport = 0\n[logging]\nlevel = "{level}"\n[users.a]\nsecret = "long-secret-a"\n')


def test_restart_required_compares_with_the_running_configuration(tmp_path):
    path = tmp_path / "config.toml"
    write(path, "info")
    with running_server(load_config(path)) as srv:
        def reload():
            ok, message = srv.call(srv.server.reload)
            assert ok, message
            return srv.log.records("ConfigReloaded")[-1]["restart_required"]

        write(path, "debug")
        assert reload() == ["logging"]
        assert reload() == ["logging"]  # still not applied: the second reload says so too
        write(path, "info")
        assert reload() == []  # back to what runs: nothing needs a restart


def test_audit_read_only_actions_needs_no_restart():
    running = parse_config({"logging": {"audit_read_only_actions": False}})
    new = parse_config({"logging": {"audit_read_only_actions": True}, "http": {}})
    assert restart_required(running, new) == ["http"]


def test_relative_log_file_is_resolved_against_the_config_file(tmp_path):
    (tmp_path / "etc").mkdir()
    path = tmp_path / "etc" / "config.toml"
    path.write_text('[logging]\nfile = "logs/audit.log"\n')
    assert load_config(path).logging.file == str(tmp_path / "etc" / "logs" / "audit.log")


class BrokenBackend:
    @hookimpl
    def authenticate(self, request, config):
        raise RuntimeError(f"directory down while checking {request.secret}")


def test_a_failing_backend_is_a_warning_with_a_scrubbed_traceback():
    cfg = make_config({"users": USERS, "auth": {"backends": ["broken"]}})
    with running_server(cfg, extra_plugins=[("broken", BrokenBackend())]) as srv:
        with srv.client() as client:
            client.send("Login", {"Username": "admin", "Secret": "typed-secret-99"})
            client.read_until_closed(timeout=5)
        (record,) = srv.log.records("AuthBackendError")
        assert record["level"] == "warning"
        assert "Traceback" in record["traceback"] and "RuntimeError" in record["traceback"]
        assert "typed-secret-99" not in srv.log.text()


def test_log_rotate_action(tmp_path):
    cfg = make_config({"users": USERS})
    with running_server(cfg) as srv:
        with srv.client() as client:
            client.login("admin", "adminpass", events="off")
            assert client.action("LogRotate")["Message"] == "Not logging to a file"
    path = tmp_path / "config.toml"
    log = tmp_path / "audit.log"
    path.write_text('[server]\nport = 0\nlogin_failure_delay = 0\n[logging]\nfile = "audit.log"\nformat = "json"\n'
                    '[users.admin]\nsecret = "adminpass-long"\nread = "all"\nwrite = "all"\n')
    from ami_server.server import Server
    from ami_server.testing import ServerThread

    class FileServerThread(ServerThread):
        def __init__(self, config):
            self.server = Server(config)
            self.log = None
            self.address = self.server.start()
            import threading
            self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    srv = FileServerThread(load_config(path)).start()
    try:
        wait_for(lambda: log.exists() and "ServerStarted" in log.read_text(), "the log file")
        log.rename(tmp_path / "audit.log.1")
        with srv.client() as client:
            client.login("admin", "adminpass-long", events="off")
            assert client.action("LogRotate")["Message"] == "Log file reopened"
        wait_for(lambda: log.exists() and "LogReopened" in log.read_text(), "the reopened log")
    finally:
        srv.stop()


def test_ipv6_addresses_are_bracketed():
    assert host_port("::1", 5038) == "[::1]:5038"
    assert host_port("127.0.0.1", 5038) == "127.0.0.1:5038"
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with running_server(make_config(host="::1")) as srv:
        (started,) = srv.log.records("ServerStarted")
        assert started["address"].startswith("[::1]:")


def test_each_login_outcome_is_counted_once():
    """ami_logins_total: one count per Login, with or without a security event for its outcome."""
    with running_server(http_config()) as srv:
        port = srv.server.http.address[1]
        with srv.client() as client:
            client.send("Login", {"Secret": "x"})  # no username: LoginFailed, no security event
            client.read_until_closed()
        with srv.client() as client:
            client.send("Login", {"Username": "admin", "Secret": "wrong"})  # InvalidPassword
            client.read_until_closed()
        with srv.client() as client:
            client.login("admin", "adminpass", events="off")
        text = http_get(port, "/metrics").decode()
        assert 'ami_logins_total{outcome="failure",reason="no username"} 1.0' in text
        assert 'ami_logins_total{outcome="failure",reason="invalid_password"} 1.0' in text
        assert 'ami_logins_total{outcome="success",reason="accepted"} 1.0' in text
